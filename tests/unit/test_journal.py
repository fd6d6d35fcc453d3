"""The journal's native protocol, checked on a datagram socket the test binds: the bytes
journald would get, the memfd path for large entries, and what happens when nobody reads."""
from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import os
import socket
import struct
import time

import pytest

from relayq_supervisor.core.journal import (
    LINE_MAX,
    ChildJournal,
    JournalSink,
    SupervisorJournal,
    split_priority,
)
from relayq_supervisor.linux.journal import JournalSocket, decode, encode, stderr_is_journal


@pytest.fixture
def journald(tmp_path):
    """A bound datagram socket standing in for /run/systemd/journal/socket."""
    path = str(tmp_path / "journal.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield path, sock
    sock.close()


def queue_length() -> int:
    """How many datagrams a socket's queue holds before senders get EAGAIN (net.unix.max_dgram_qlen)."""
    with open("/proc/sys/net/unix/max_dgram_qlen") as f:
        return int(f.read())


def received(sock: socket.socket) -> list[dict[str, bytes]]:
    """Every entry waiting on `sock`, decoded (an entry sent by memfd read from its fd)."""
    entries = []
    while True:
        try:
            data, ancdata, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
        except BlockingIOError:
            return entries
        for level, kind, fds in ancdata:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            (fd,) = array.array("i", fds[:4])
            try:
                assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE, "the memfd must be sealed"
                assert data == b""
                data = os.pread(fd, os.fstat(fd).st_size, 0)
            finally:
                os.close(fd)
        entries.append(dict(decode(data)))


def test_fields_are_written_as_the_protocol_says():
    entry = encode([("MESSAGE", b"hello"), ("PRIORITY", "3"), ("MULTI", b"a\nb"), ("BINARY", b"\x00\xff=\r")])
    assert entry == (b"MESSAGE=hello\nPRIORITY=3\n"
                     b"MULTI\n" + struct.pack("<Q", 3) + b"a\nb\n"
                     b"BINARY=\x00\xff=\r\n")
    assert decode(entry) == [("MESSAGE", b"hello"), ("PRIORITY", b"3"), ("MULTI", b"a\nb"),
                             ("BINARY", b"\x00\xff=\r")]


def test_a_childs_lines_carry_the_fields_an_operator_filters_on(journald):
    path, sock = journald
    sink = JournalSink(path)
    out = ChildJournal(sink, "worker", "worker:0", lambda: 4242)
    out.write(b"first\n<3>an error\nhalf of")
    out.write(b" a line\x00\xff with bytes\n\n<9>not a priority\n")
    out.write(b"no newline at the end")
    out.flush()
    entries = received(sock)
    assert [e["MESSAGE"] for e in entries] == [b"first", b"an error", b"half of a line\x00\xff with bytes", b"",
                                               b"<9>not a priority", b"no newline at the end"]
    assert [e["PRIORITY"] for e in entries] == [b"6", b"3", b"6", b"6", b"6", b"6"]
    for e in entries:
        assert (e["SYSLOG_IDENTIFIER"], e["RELAYQ_PROGRAM"], e["RELAYQ_PID"], e["SYSLOG_PID"]) == (
            b"worker", b"worker:0", b"4242", b"4242")
    assert sink.sent == 6 and sink.dropped == 0


def test_an_endless_line_is_cut_where_journald_would(journald):
    path, sock = journald
    out = ChildJournal(JournalSink(path), "w", "w", lambda: None)
    out.write(b"x" * (2 * LINE_MAX + 10))
    entries = received(sock)
    assert [len(e["MESSAGE"]) for e in entries] == [LINE_MAX, LINE_MAX]
    assert "RELAYQ_PID" not in entries[0]         # no process (yet): no pid field
    out.close()
    assert [len(e["MESSAGE"]) for e in received(sock)] == [10]


def test_an_entry_too_large_for_a_datagram_goes_by_sealed_memfd(journald):
    path, sock = journald
    sender = JournalSocket(path)
    size = sender.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + 4096
    message = b"y" * size + b"\nsecond line"
    sender.send(encode([("MESSAGE", message), ("PRIORITY", "6")]))
    (entry,) = received(sock)
    assert entry == {"MESSAGE": message, "PRIORITY": b"6"}


def test_split_priority():
    assert split_priority(b"<0>emerg") == (0, b"emerg")
    assert split_priority(b"<7>") == (7, b"")
    assert split_priority(b"<8>x") == (6, b"<8>x")
    assert split_priority(b"<3") == (6, b"<3")
    assert split_priority(b" <3>x") == (6, b" <3>x")


def test_no_journald_drops_counts_and_warns_once(tmp_path, caplog):
    sink = JournalSink(str(tmp_path / "nobody.sock"))
    out = ChildJournal(sink, "w", "w", lambda: 1)
    with caplog.at_level(logging.INFO, logger="relayq_supervisor"):
        out.write(b"a\nb\nc\n")
    assert (sink.sent, sink.dropped) == (0, 3)
    warnings = [r.getMessage() for r in caplog.records if "does not take entries" in r.getMessage()]
    assert len(warnings) == 1 and "No such file or directory" in warnings[0], warnings


def test_a_journald_that_does_not_read_never_blocks_the_sender(journald, caplog):
    """Nobody reads: the kernel's queue fills (net.unix.max_dgram_qlen), sends fail at once
    with EAGAIN; with a loop the entries wait in a bounded backlog and go out, in order,
    once the reader catches up; beyond the backlog they are dropped and counted."""
    path, sock = journald
    loop = asyncio.new_event_loop()
    caplog.set_level(logging.INFO, logger="relayq_supervisor")
    try:
        n = 3 * queue_length() + 600
        sink = JournalSink(path, loop=loop, backlog_max=n // 3 * 40)     # room for about n/3 entries
        out = ChildJournal(sink, "w", "w", lambda: 7)
        lines = [b"line %06d" % i for i in range(n)]
        started = time.monotonic()
        out.write(b"\n".join(lines) + b"\n")
        assert time.monotonic() - started < 5, "a full queue must fail sends, not wait"
        assert sink.backlog and sink.dropped > 0, (len(sink.backlog), sink.dropped)
        warnings = [r for r in caplog.records if "does not take entries" in r.getMessage()]
        assert len(warnings) == 1
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while sink.backlog and time.monotonic() < deadline:
            got += [e["MESSAGE"] for e in received(sock)]
            loop.run_until_complete(asyncio.sleep(0.001))
        got += [e["MESSAGE"] for e in received(sock)]
        assert not sink.backlog
        assert len(got) == sink.sent == n - sink.dropped
        assert got == sorted(got) and got[0] == b"line 000000", "entries keep their order"
        # the backlog went out; the next line goes straight out
        out.write(b"after\n")
        assert [e["MESSAGE"] for e in received(sock)] == [b"after"]
    finally:
        loop.close()


def test_stderr_is_journal_only_when_the_stream_is_the_named_one(tmp_path):
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "junk"}, f.fileno())
        assert not stderr_is_journal({}, f.fileno())


def test_the_supervisors_lines_carry_priority_and_fall_back_to_stderr(journald, tmp_path):
    path, sock = journald
    fallback_records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            fallback_records.append(record)

    logger = logging.getLogger("relayq_supervisor.test_journal")
    handler = SupervisorJournal(JournalSink(path), "relayq_supervisor", Keep())
    logger.addHandler(handler)
    try:
        logger.warning("worker: blocked SIGTERM from %s", "x\n<2>FORGED")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it failed")
        (warning, error) = received(sock)
        assert warning["MESSAGE"] == b"test_journal: worker: blocked SIGTERM from x\\n<2>FORGED"
        assert warning["PRIORITY"] == b"4" and warning["SYSLOG_IDENTIFIER"] == b"relayq-supervisor"
        assert warning["CODE_FUNC"] == b"test_the_supervisors_lines_carry_priority_and_fall_back_to_stderr"
        assert error["PRIORITY"] == b"3" and b"\nTraceback" in error["MESSAGE"] and b"ValueError: boom" in error["MESSAGE"]
        assert not fallback_records
        # no journald: the line is not lost, it goes to the fallback (stderr)
        handler.sink = JournalSink(str(tmp_path / "gone.sock"))
        handler.sink.warn = False
        logger.error("still here")
        assert [r.getMessage() for r in fallback_records] == ["still here"]
    finally:
        logger.removeHandler(handler)


def test_journal_lines_are_a_metric_once_a_program_logs_there():
    from prometheus_client.parser import text_string_to_metric_families

    from relayq_supervisor.metrics import SupervisorMetrics
    counts: list[tuple[int, int] | None] = [None]
    loop = asyncio.new_event_loop()
    try:
        m = SupervisorMetrics(lambda: [], loop, lambda: counts[0])

        def got() -> dict[str, float]:
            return {s.labels["result"]: s.value for f in text_string_to_metric_families(m.render().decode())
                    for s in f.samples if s.name == "relayq_journal_lines_total"}
        assert got() == {}
        counts[0] = (120, 3)
        assert got() == {"sent": 120, "dropped": 3}
    finally:
        loop.close()


def test_redis_lines_are_ranked_by_their_own_level(journald):
    """Lines as Redis 7.0.15 and 6.2.14 write them: `#` warning, `*` notice, `-` verbose, `.` debug."""
    from relayq_supervisor.kinds.redis.log_lines import line_priority
    path, sock = journald
    out = ChildJournal(JournalSink(path), "redis", "redis", lambda: 7401, line_priority)
    out.write(b"7401:C 26 Nov 2026 13:09:12.395 # oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo\n"
              b"7401:M 26 Nov 2026 13:09:12.396 * Ready to accept connections\n"
              b"7401:M 6 Nov 2026 13:09:12.396 - Accepted 127.0.0.1:5000\n"
              b"7401:S 26 Nov 2026 13:09:12.396 . debug line\n"
              b"                _._\n"
              b"<3>not Redis' own form\n")
    entries = received(sock)
    assert [(e["PRIORITY"], e["MESSAGE"][:7]) for e in entries] == [
        (b"4", b"7401:C "), (b"5", b"7401:M "), (b"6", b"7401:M "), (b"7", b"7401:S "),
        (b"6", b"       "), (b"6", b"<3>not ")]


def test_closing_sends_what_fits_and_counts_the_rest(journald):
    path, sock = journald
    loop = asyncio.new_event_loop()
    try:
        sink = JournalSink(path, loop=loop)
        out = ChildJournal(sink, "w", "w", lambda: 1)
        n = 3 * queue_length() + 10
        out.write(b"".join(b"line %d\n" % i for i in range(n)))
        waiting = len(sink.backlog)
        assert waiting > 0 and sink.dropped == 0
        received(sock)              # journald reads what it has: room for some more
        sink.close()
        assert sink.sent + sink.dropped == n and sink.dropped > 0 and sink.sent > n - waiting
    finally:
        loop.close()


def test_a_restarted_journald_is_reached_on_its_new_socket(tmp_path):
    path = str(tmp_path / "journal.sock")
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(path)
    sender = JournalSocket(path)
    sender.send(b"MESSAGE=one\n")
    assert first.recv(100) == b"MESSAGE=one\n"
    first.close()                   # journald restarts: its socket is made anew under the same name
    os.unlink(path)
    second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    second.bind(path)
    try:
        sender.send(b"MESSAGE=two\n")
        assert second.recv(100) == b"MESSAGE=two\n"
    finally:
        second.close()
        sender.close()
