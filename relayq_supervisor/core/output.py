"""Where a child's stdout and stderr go.

Each child writes into a pipe the supervisor reads on its loop, so that the
supervisor can rotate the log by size (a child holding the file itself would keep
writing into the rotated file) or prefix lines with the program name.

Log files get each line prefixed with the time it reached the supervisor
(`2026-11-25T23:21:26.721Z `, UTC, the audit log's format): programs write times in
their own formats or none at all, and `relayqctl logs --since` and the merging of
instances and rotated files need one format they can trust. The time is taken once per
read from the pipe, which is when those lines arrived.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import BinaryIO, Protocol

from relayq_supervisor.linux.files import rotate_by_rename


class ChildOutput(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


def line_stamp(when: float) -> bytes:
    """`2026-11-25T23:21:26.721Z ` for a Unix time: the prefix of every stamped line."""
    t = time.gmtime(when)
    return b"%04d-%02d-%02dT%02d:%02d:%02d.%03dZ " % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min,
                                                       t.tm_sec, int(when % 1 * 1000))


class RotatingFile:
    """Append-only file rotated by size: NAME -> NAME.1 -> ... -> NAME.<backups>.

    With `stamp_lines`, every line starts with `line_stamp()`, and a rotation happens
    between lines (unless one line alone outgrows the file: its rest is stamped again)."""

    def __init__(self, path: str, max_bytes: int, backups: int, mode: int = 0o640, *,
                 stamp_lines: bool = False, clock: Callable[[], float] = time.time):
        self.path, self.max_bytes, self.backups, self.mode = path, max_bytes, backups, mode
        self.fd: int | None = None
        self.size = 0
        self.stamp_lines = stamp_lines
        self.clock = clock
        self.at_line_start = True

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
        self.size = os.fstat(self.fd).st_size

    def rotate(self) -> None:
        self.close()
        if self.backups <= 0:
            os.truncate(self.path, 0)
            return
        rotate_by_rename(self.path, self.backups)

    def write(self, data: bytes) -> None:
        if not self.stamp_lines:
            self._write_chunk(data)
            return
        if self.fd is None:
            self._open()        # its size decides the first rotation
        stamp = line_stamp(self.clock())
        chunk: list[bytes] = []
        pending = 0
        for line in data.splitlines(keepends=True):
            if self.at_line_start:
                if self.size + pending and self.size + pending + len(stamp) + len(line) > self.max_bytes:
                    self._write_chunk(b"".join(chunk), rotate_first=False)
                    chunk, pending = [], 0
                    self._rotate_open()
                chunk.append(stamp)
                pending += len(stamp)
            elif self.size + pending >= self.max_bytes:     # one endless line: cut it, stamp its rest
                self._write_chunk(b"".join(chunk) + b"\n", rotate_first=False)
                chunk, pending = [stamp], len(stamp)
                self._rotate_open()
            chunk.append(line)
            pending += len(line)
            self.at_line_start = line.endswith(b"\n")
        self._write_chunk(b"".join(chunk), rotate_first=False)

    def _rotate_open(self) -> None:
        self.rotate()
        self._open()

    def _write_chunk(self, data: bytes, rotate_first: bool = True) -> None:
        if self.fd is None:
            self._open()
        if rotate_first and self.size and self.size + len(data) > self.max_bytes:
            self._rotate_open()
        if not data:
            return
        assert self.fd is not None
        os.write(self.fd, data)
        self.size += len(data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class PrefixedStream:
    """log = "inherit": each line to the supervisor's stdout as `[name] line`."""

    def __init__(self, name: str, stream: BinaryIO | None = None):
        self.prefix = f"[{name}] ".encode()
        self.stream = stream or sys.stdout.buffer
        self.partial = b""

    def write(self, data: bytes) -> None:
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        if lines:
            self.stream.write(b"".join(self.prefix + line + b"\n" for line in lines))
            self.stream.flush()

    def close(self) -> None:
        if self.partial:
            self.write(b"\n")


def open_child_output(name: str, how: str, log_dir: str, max_bytes: int, backups: int) -> ChildOutput:
    if how == "inherit":
        return PrefixedStream(name)
    return RotatingFile(os.path.join(log_dir, f"{name}.log"), max_bytes, backups, stamp_lines=True)


SUPERVISOR_LOG = "supervisor"     # log_dir/supervisor.log: the supervisor's own lines


class SupervisorLogFile(logging.Handler):
    """The supervisor's own log lines, also in log_dir/supervisor.log, stamped like the
    programs' logs: `relayqctl logs supervisor` reads them when the journal (or the
    terminal it ran on) is not at hand, even after the supervisor has stopped."""

    def __init__(self, log_dir: str, max_bytes: int, backups: int, root: str):
        super().__init__()
        self.file = RotatingFile(os.path.join(log_dir, f"{SUPERVISOR_LOG}.log"), max_bytes, backups,
                                 stamp_lines=True)
        self.root = root
        self.failing = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
            text = f"{level}{record.name.removeprefix(self.root + '.')}: {record.getMessage()}"
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.file.write(text.encode("utf-8", "replace") + b"\n")
        except OSError as e:    # a full disk: said once per outage (on stderr, the journal), never raised
            if not self.failing:
                self.failing = True
                print(f"{self.file.path}: cannot write ({e.strerror}); the supervisor's lines are dropped "
                      "from it until it can", file=sys.stderr, flush=True)
            return
        except Exception:       # nothing must take logging (or the loop) down
            self.handleError(record)
            return
        self.failing = False

    def close(self) -> None:
        self.file.close()
        super().close()
