"""A real supervisor sending to a journal socket the test binds (RELAYQ_JOURNAL_SOCKET):
its own lines and its children's output lines, with the fields an operator filters on."""
from __future__ import annotations

import os
import socket
import textwrap
import threading

import pytest
from support import PYTHON, wait_for

from relayq_supervisor.linux.journal import SOCKET_ENV, decode

TALKER = "import os, sys, time\nprint('hello from', os.getpid(), flush=True)\n" \
         "print('<3>bad news', file=sys.stderr, flush=True)\ntime.sleep(600)"


class FakeJournald:
    """Reads every datagram on a bound socket in a thread (journald's queue is short:
    net.unix.max_dgram_qlen), decoded; memfd entries are not expected here."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.entries: list[dict[str, bytes]] = []
        self.running = True
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                continue
            self.entries.append(dict(decode(data)))

    def find(self, **fields: str) -> list[dict[str, bytes]]:
        return [e for e in list(self.entries) if all(e.get(k) == v.encode() for k, v in fields.items())]

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


@pytest.fixture
def journald(tmp_path):
    j = FakeJournald(str(tmp_path / "journal.sock"))
    yield j
    j.close()


def config(log: str) -> str:
    return textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"
        log_target = "journal"

        [[program]]
        name = "talker"
        command = ["{PYTHON}", "-c", {TALKER!r}]
        numprocs = 2
        ready_after = 0.2
        log = "{log}"
        """)


def test_lines_reach_the_journal_with_their_fields(make_supervisor, journald, tmp_path):
    sup = make_supervisor(config("both"))
    sup.start(env={**os.environ, SOCKET_ENV: str(tmp_path / "journal.sock")})
    pid = sup.wait_state("talker:1", "RUNNING")["pid"]
    hello = wait_for(lambda: journald.find(RELAYQ_PROGRAM="talker:1", PRIORITY="6"), 20, what="talker:1's line")
    assert hello[0]["MESSAGE"] == f"hello from {pid}".encode()
    assert (hello[0]["RELAYQ_PID"], hello[0]["SYSLOG_PID"], hello[0]["SYSLOG_IDENTIFIER"]) == (
        str(pid).encode(), str(pid).encode(), b"talker")
    # stderr shares the pipe: a `<3>` prefix makes the line an error, without the prefix
    bad = wait_for(lambda: journald.find(RELAYQ_PROGRAM="talker:1", PRIORITY="3"), 20, what="the <3> line")
    assert bad[0]["MESSAGE"] == b"bad news"
    # the supervisor's own lines: journal entries with syslog priorities, not on stderr
    own = wait_for(lambda: journald.find(SYSLOG_IDENTIFIER="relayq-supervisor"), 20, what="the supervisor's lines")
    assert all(e["PRIORITY"] in b"234567" and e["CODE_FILE"].endswith(b".py") for e in own)
    assert any(b"talker:1" in e["MESSAGE"] for e in own)
    # log = "both": the file is kept too
    wait_for(lambda: "hello from" in (sup.dir / "log" / "talker:1.log").read_text(), 10, what="the file line")
    assert "talker:1" not in sup.log(), "lines that went to the journal are not repeated on stderr"


def test_log_journal_writes_no_file(make_supervisor, journald, tmp_path):
    sup = make_supervisor(config("journal"))
    sup.start(env={**os.environ, SOCKET_ENV: str(tmp_path / "journal.sock")})
    sup.wait_state("talker:0", "RUNNING")
    wait_for(lambda: journald.find(RELAYQ_PROGRAM="talker:0", PRIORITY="6"), 20, what="talker:0's line")
    assert not (sup.dir / "log" / "talker:0.log").exists()
    # relayqctl logs says where to look instead
    r = sup.ctl("logs", "talker:0")
    assert (r.returncode, r.stderr.strip()) == (0, 'relayqctl logs: talker:0: its output goes to the journal only '
                                                   '(log = "journal"): journalctl -u relayq-supervisor '
                                                   'RELAYQ_PROGRAM=talker:0')
    assert "journalctl -u relayq-supervisor -t talker" in sup.ctl("logs", "talker").stderr


def test_a_journald_that_does_not_read_never_holds_up_supervision(make_supervisor, tmp_path):
    """The journal socket is bound but never read (its queue fills after a few datagrams): a
    chatty program's lines are dropped and counted, and a killed program is still restarted."""
    path = tmp_path / "journal.sock"
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck.bind(str(path))
    try:
        # about 20,000 lines a second: far more than the stuck queue takes, without eating a core
        chatty = ("import itertools, time\nfor i in itertools.count():\n    print('line', i, flush=True)\n"
                  "    if i % 200 == 0:\n        time.sleep(0.01)")
        sup = make_supervisor(config("both") + textwrap.dedent(f"""
            [[program]]
            name = "chatty"
            command = ["{PYTHON}", "-c", {chatty!r}]
            ready_after = 0.2
            log = "journal"
            """))
        sup.start(env={**os.environ, SOCKET_ENV: str(path)})
        before = sup.wait_state("talker:0", "RUNNING")
        old = before["pid"]
        wait_for(lambda: "output lines dropped so far" in (sup.dir / "log" / "supervisor.log").read_text(), 20,
                 what="the warning about dropped lines")
        os.kill(old, 9)
        # the restart, not the RUNNING status shows until the kill is reaped
        new = sup.wait_state("talker:0", "RUNNING", timeout=20, restarts=before["restarts"] + 1)["pid"]
        assert new != old
        # the supervisor's own lines did not get through either: they went to stderr instead
        assert "talker:0" in sup.log()
    finally:
        stuck.close()
