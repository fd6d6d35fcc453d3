"""The append-only audit log: one JSON object per line, evidence for people.

Durability: every event is written with a single write(2) on an O_APPEND fd
and fsync'ed before `AuditLog.write` returns True, so a crash (of the
supervisor or of the machine) loses nothing that was acknowledged.
`queue` + `flush` batch: the supervisor queues the events of one pass of its
event loop and flushes them with one fsync at the end of that pass (after the
replacement child is already spawned), so a crash loses at most the events of
the pass in progress. A line
that could not be written completely is cut back off the file, so a reader
only ever sees whole events or, after a power loss mid-write, one torn last
line (which `review.iter_events` skips).

A failing disk never raises into the supervisor: the failure is reported
once per outage through ``on_error``, events wait in memory within a budget
(`audit.held`: aggregated, then the oldest dropped into one ``audit_gap``) and
are written in order by the next successful flush; the end of the outage is
reported once too, with how many events were held, aggregated and dropped.
The caller paces the retries (the supervisor: one flush attempt per
`RETRY_S` while failing).

Rotation is by size: path -> path.1 -> path.2 ... keeping ``keep`` old files.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from relayq_supervisor.audit.held import HeldEvents, Outage
from relayq_supervisor.linux.files import FileIdentity, rotate_by_rename

FILE_MODE = 0o640
MAX_PENDING = 1000
MAX_HELD_BYTES = 1024 * 1024
RETRY_S = 0.5


def utc_timestamp(when: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds and Z: ``2026-11-25T23:21:26.721Z``."""
    dt = datetime.now(UTC) if when is None else datetime.fromtimestamp(when, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def make_event(kind: str, **fields: Any) -> dict[str, Any]:
    """An audit event: ``ts``, ``host`` and ``event`` first, then `fields`.

    `fields` may override ``ts``/``host`` (replayed or imported events).
    """
    event: dict[str, Any] = {"ts": utc_timestamp(), "host": socket.gethostname(), "event": kind}
    event.update(fields)
    event["event"] = kind
    return event


def encode_event(event: dict[str, Any]) -> bytes:
    """One log line. Undecodable argv bytes (surrogate escapes) become \\uDCxx escapes, still valid JSON."""
    text = json.dumps(event, ensure_ascii=False, separators=(",", ":"), default=str)
    return (text + "\n").encode("utf-8", "backslashreplace")


class AuditLog:
    """Appends events to `path`; see the module docstring for the guarantees."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        max_bytes: int = 10 * 1024 * 1024,
        keep: int = 5,
        on_error: Callable[[str], None] | None = None,
        max_pending: int = MAX_PENDING,
        max_held_bytes: int = MAX_HELD_BYTES,
    ) -> None:
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.on_error = on_error or _print_to_stderr
        self.held = HeldEvents(max_pending, max_held_bytes, encode_event)
        self._fd: int | None = None
        self._outage: Outage | None = None
        self._listeners: list[Callable[[dict[str, Any], bytes], None]] = []

    def add_listener(self, listener: Callable[[dict[str, Any], bytes], None]) -> None:
        """Call `listener(event, line)` for every event queued for this log (its encoded
        line included): a copy kept elsewhere, like the cluster stream. The file stays
        the record of truth; a listener must not block, and what it raises is reported."""
        self._listeners.append(listener)

    @property
    def pending(self) -> int:
        """Events waiting in memory for the disk to accept them."""
        return len(self.held)

    @property
    def failing(self) -> bool:
        return self._outage is not None

    def write(self, event: dict[str, Any]) -> bool:
        """Append `event` durably. False if it (or an earlier one) is still held in memory."""
        return self.queue(event) and self.flush()

    def queue(self, event: dict[str, Any]) -> bool:
        """Hold `event` for the next flush(); False if it cannot be encoded (dropped, reported)."""
        try:
            line = encode_event(event)
        except (TypeError, ValueError) as e:
            self.on_error(f"audit log {self.path}: event {event.get('event')!r} cannot be encoded ({e}); dropped")
            return False
        self.held.append(event, line)
        for listener in self._listeners:
            try:
                listener(event, line)
            except Exception as e:      # a copy's failure must not cost the record
                self.on_error(f"audit log {self.path}: listener {listener!r} failed: {e!r}")
        return True

    def flush(self) -> bool:
        """Write held events in order; True when none is left."""
        written = 0
        try:
            fd = None
            while self.held:
                fd = self._append(self.held.first_line())
                self.held.pop_first()
                written += 1
            if fd is not None:
                os.fsync(fd)        # one fsync for the batch
        except OSError as e:
            self._close_fd()
            if self._outage is None:    # one warning per outage, however many retries fail
                reason = os.strerror(e.errno) if e.errno else str(e)
                self._outage = Outage(time.monotonic(), self.held.aggregated, self.held.dropped)
                self.on_error(
                    f"audit log {self.path}: write failed ({reason}); events are held in memory "
                    f"(up to {self.held.max_events} events or {self.held.max_bytes // 1024} KiB, then aggregated, "
                    f"then the oldest dropped) and written in order when it can write again"
                )
            self._outage.written += written
            return False
        if self._outage is not None:
            outage, self._outage = self._outage, None
            outage.written += written
            self.on_error(outage.resumed(self.path, self.held))
        return True

    def close(self) -> None:
        """Try once more to write held events, then close the file."""
        if self.held:
            self.flush()
        self._close_fd()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _append(self, line: bytes) -> int:
        """One whole line with one write(2); the caller fsyncs."""
        fd = self._current_fd()
        size = os.fstat(fd).st_size
        if size > 0 and size + len(line) > self.max_bytes:
            os.fsync(fd)            # what this batch put in the old file is durable before it moves
            self._rotate()
            fd = self._current_fd()
            size = 0
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            # Cut a partial line back off so the retry does not leave a torn line mid-file.
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise
        return fd

    def _current_fd(self) -> int:
        # Someone may have moved or deleted the file under us: write to the path, not the orphan.
        if self._fd is not None and FileIdentity.of_fd(self._fd).still_at(self.path):
            return self._fd
        self._close_fd()
        self._fd = self._open()
        return self._fd

    def _open(self) -> int:
        flags = os.O_APPEND | os.O_WRONLY | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            fd = os.open(self.path, flags)
            try:
                self._end_torn_line(fd)
            except OSError:
                os.close(fd)
                raise
            return fd
        try:
            os.fchmod(fd, FILE_MODE)  # the umask must neither loosen nor tighten it
            _fsync_dir(self.path)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _end_torn_line(self, fd: int) -> None:
        # After a crash mid-write the file may end without a newline; without one
        # the next event would be glued to the torn bytes and lost with them.
        size = os.fstat(fd).st_size
        if not size:
            return
        reader = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # fd is write-only
        try:
            last = os.pread(reader, 1, size - 1)
        finally:
            os.close(reader)
        if last != b"\n":
            os.write(fd, b"\n")

    def _rotate(self) -> None:
        self._close_fd()
        rotate_by_rename(self.path, self.keep)
        _fsync_dir(self.path)

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def _fsync_dir(path: str) -> None:
    """Make a created or renamed entry durable: fsync of the file alone does not cover its name."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
