"""The journal as a sink for the supervisor's own lines and for each child's output lines.

Where lines go: `[supervisor] log_target` ("auto": the journal when stderr is the journal
stream systemd gave us, see linux/journal.stderr_is_journal; "journal"; "stderr"). A
program's `log` ("file", "journal", "both", "inherit"; "auto", the default: its file, and
the journal too when the supervisor's lines go there) says where its output goes.

A child's line becomes one entry with MESSAGE (the bytes as written, not escaped: the
journal is binary-safe and journalctl escapes on display), PRIORITY, SYSLOG_IDENTIFIER
(the program: `worker`), SYSLOG_PID and RELAYQ_PID (the child's pid), RELAYQ_PROGRAM (the
instance: `worker:0`), so `journalctl RELAYQ_PROGRAM=worker:0` or `journalctl -t worker`
finds it. stdout and stderr share one pipe, which keeps their order; so a line's
priority is info (6) unless it starts with a `<N>` prefix (sd-daemon(3): `<3>` is err),
which is removed, as journald does for a service's stdout (SyslogLevelPrefix=yes).

Nothing here may hold up the loop: the socket is non-blocking; an entry journald has
no room for yet waits in a bounded backlog (4 MiB) sent when its socket turns writable;
beyond that, or when no journald runs, entries are dropped and counted, with a warning
at the first drop and then at most one a minute. The supervisor's own lines are never
lost that way: one the journal did not take goes to stderr.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

from relayq_supervisor.linux.journal import JournalSocket, encode, encode_field, socket_path, stderr_is_journal
from relayq_supervisor.printable import escape

log = logging.getLogger(__name__)

# journald's own LineMax= default: a longer line without newline is cut into entries this long
LINE_MAX = 48 * 1024
INFO = 6
BACKLOG_MAX = 4 * 1024 * 1024       # bytes of entries waiting for room in journald's queue
WARN_EVERY = 60.0                   # seconds between two warnings about dropped lines
SUPERVISOR_IDENTIFIER = "relayq-supervisor"
# logging level -> syslog priority (syslog(3): 2 crit, 3 err, 4 warning, 6 info, 7 debug)
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def logs_to_journal(target: str) -> bool:
    """Whether the supervisor's lines (and, by default, its programs' output) go to the journal."""
    return target == "journal" or (target == "auto" and stderr_is_journal())


def split_priority(line: bytes) -> tuple[int, bytes]:
    """`<3>text` -> (3, b"text"); a line without a `<0>`..`<7>` prefix is info."""
    if len(line) >= 3 and line[0] == 0x3C and line[2] == 0x3E and 0x30 <= line[1] <= 0x37:
        return line[1] - 0x30, line[3:]
    return INFO, line


class JournalSink:
    """One socket to journald. With a loop, entries journald has no room for yet wait in a
    bounded backlog, sent in order when its socket turns writable (a burst of output is
    not lost to a queue of 512 datagrams); beyond the backlog, and whenever no journald
    answers, they are dropped and counted."""

    def __init__(self, path: str | None = None, loop: asyncio.AbstractEventLoop | None = None,
                 backlog_max: int = BACKLOG_MAX):
        self.path = path or socket_path()
        self.socket = JournalSocket(self.path)
        self.loop = loop
        self.backlog: deque[bytes] = deque()
        self.backlog_bytes = 0
        self.backlog_max = backlog_max
        self.sent = 0
        self.dropped = 0
        self.warned_at: float | None = None
        self.warn = True

    def send(self, entry: bytes) -> bool:
        """Sent or queued: True; dropped: False. Never blocks."""
        if self.backlog:
            return self.queue(entry)        # behind what waits: the order is kept
        try:
            self.socket.send(entry)
        except BlockingIOError as e:
            return self.queue(entry) if self.loop is not None else self.lost(1, e.strerror or "EAGAIN")
        except OSError as e:
            return self.lost(1, e.strerror or str(e))
        self.got_through()
        return True

    def queue(self, entry: bytes) -> bool:
        if self.backlog_bytes + len(entry) > self.backlog_max:
            return self.lost(1, "journald is not keeping up")
        assert self.loop is not None
        if not self.backlog:
            self.loop.add_writer(self.socket.fileno(), self.drain)
        self.backlog.append(entry)
        self.backlog_bytes += len(entry)
        return True

    def drain(self) -> None:
        """journald's socket has room: send what waits, as far as it goes."""
        while self.backlog:
            try:
                self.socket.send(self.backlog[0])
            except BlockingIOError:
                return
            except OSError as e:        # journald went away: what waits is lost
                self.lost(len(self.backlog), e.strerror or str(e))
                self.backlog.clear()
                self.backlog_bytes = 0
                break
            self.backlog_bytes -= len(self.backlog.popleft())
            self.got_through()
        assert self.loop is not None
        self.loop.remove_writer(self.socket.fileno())

    def lost(self, count: int, why: str) -> bool:
        self.dropped += count
        now = time.monotonic()
        # once, then at most every WARN_EVERY seconds: a journald at the edge of keeping up
        # would otherwise make a warning of every other line
        if self.warn and (self.warned_at is None or now - self.warned_at >= WARN_EVERY):
            log.warning("journal: %s does not take entries (%s): %d output lines dropped so far",
                        self.path, why, self.dropped)
            self.warned_at = now
        return False

    def got_through(self) -> None:
        self.sent += 1

    def close(self) -> None:
        if self.backlog and self.loop is not None:
            self.drain()        # what journald has room for now; the rest is counted as dropped
            self.dropped += len(self.backlog)
            if self.backlog:
                self.loop.remove_writer(self.socket.fileno())
        self.socket.close()


class ChildJournal:
    """A ChildOutput: each line of one instance's output as a journal entry."""

    def __init__(self, sink: JournalSink, program: str, instance: str, pid: Callable[[], int | None],
                 priority: Callable[[bytes], tuple[int, bytes]] | None = None):
        self.sink = sink
        self.pid = pid
        self.priority = priority or split_priority     # line -> (syslog priority, the message to keep)
        self.fixed = encode([("SYSLOG_IDENTIFIER", program), ("RELAYQ_PROGRAM", instance)])
        self.partial = b""

    def write(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        while len(self.partial) > LINE_MAX:
            lines.append(self.partial[:LINE_MAX])
            self.partial = self.partial[LINE_MAX:]
        if lines:
            self.send(lines)

    def send(self, lines: Iterable[bytes]) -> None:
        pid = self.pid()
        # the fields every line of this read shares, encoded once
        tail = self.fixed + (b"RELAYQ_PID=%d\nSYSLOG_PID=%d\n" % (pid, pid) if pid else b"")
        for line in lines:
            priority, message = self.priority(line)
            self.sink.send(encode_field(b"MESSAGE", message) + b"PRIORITY=%d\n" % priority + tail)

    def flush(self) -> None:
        """The stream ended (the child exited): its last line, even without a newline."""
        if self.partial:
            line, self.partial = self.partial, b""
            self.send([line])

    def close(self) -> None:
        self.flush()


class SupervisorJournal(logging.Handler):
    """The supervisor's own log lines as journal entries, with their syslog priority and
    where in the code they were logged. Messages are escaped like every human-readable line
    (text from other processes must not forge anything); a traceback stays in the same
    entry. A line the journal does not take goes to `fallback` (stderr)."""

    def __init__(self, sink: JournalSink, root: str, fallback: logging.Handler):
        super().__init__()
        self.sink = sink
        self.sink.warn = False      # its warning would come back here: the line goes to stderr instead
        self.root = root
        self.fallback = fallback

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = escape(f"{record.name.removeprefix(self.root + '.')}: {record.getMessage()}")
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            entry = encode([("MESSAGE", message), ("PRIORITY", str(PRIORITY.get(record.levelno, INFO))),
                            ("SYSLOG_IDENTIFIER", SUPERVISOR_IDENTIFIER), ("CODE_FILE", record.pathname),
                            ("CODE_LINE", str(record.lineno)), ("CODE_FUNC", record.funcName),
                            ("RELAYQ_LOGGER", record.name)])
            if not self.sink.send(entry):
                self.fallback.handle(record)
        except Exception:       # logging must never take the loop down
            self.handleError(record)

    def close(self) -> None:
        self.sink.close()
        super().close()
