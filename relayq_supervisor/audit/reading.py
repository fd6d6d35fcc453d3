"""Reading the audit log back: every event of a log and its rotated files, oldest first,
and following it as it grows (`tail -F`). Nothing here runs in the supervisor; `follow`
polls and sleeps."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from relayq_supervisor.linux.files import FileIdentity


def log_files(path: str | os.PathLike[str]) -> list[str]:
    """The log and its rotated files, oldest first: path.N ... path.1, path (only those that exist)."""
    path = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(path))
    rotated: list[tuple[int, str]] = []
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for name in names:
        suffix = name[len(base) + 1 :]
        if name.startswith(base + ".") and suffix.isdigit():
            rotated.append((int(suffix), f"{path}.{suffix}"))
    files = [name for _, name in sorted(rotated, reverse=True)]
    if os.path.exists(path):
        files.append(path)
    return files


class EventStream:
    """Iterator over every event of a log and its rotated files, oldest first.

    A torn (unparseable) last line of a file is what a crash mid-write leaves:
    skipped and counted in `torn_lines`. An unparseable line elsewhere should
    not exist: skipped and counted in `corrupt_lines`, which a reader should
    show. A missing log yields nothing (check `files`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.files = log_files(self.path)
        self.corrupt_lines = 0
        self.torn_lines = 0
        self._events = self._read_all()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._events)

    def _read_all(self) -> Iterator[dict[str, Any]]:
        # Open everything first: a rotation while we read renames files, but
        # open descriptors keep pointing at the contents we listed.
        handles: list[BinaryIO] = []
        for name in self.files:
            try:
                handles.append(open(name, "rb"))
            except FileNotFoundError:
                continue
        try:
            for f in handles:
                yield from self._read_file(f)
        finally:
            for f in handles:
                f.close()

    def _read_file(self, f: BinaryIO) -> Iterator[dict[str, Any]]:
        previous: bytes | None = None
        for line in f:
            if previous is not None:
                yield from self._parse(previous, last=False)
            previous = line
        if previous is not None:
            yield from self._parse(previous, last=True)

    def _parse(self, line: bytes, last: bool) -> Iterator[dict[str, Any]]:
        if not line.strip():
            return
        event = parse_line(line)
        if event is not None:
            yield event
        elif last:
            self.torn_lines += 1
        else:
            self.corrupt_lines += 1


def iter_events(path: str | os.PathLike[str]) -> EventStream:
    """Every event of `path` and its rotated files, oldest first (see `EventStream` for counts)."""
    return EventStream(path)


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """One log line as an event dict, or None if it is not one."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def follow(
    path: str | os.PathLike[str],
    poll: float = 0.5,
    *,
    from_start: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield events as they are appended to `path`, like ``tail -F``.

    The file is opened (and positioned at its end unless `from_start`) when
    this is called, so nothing written after the call is missed. Rotation is
    followed: the old file is read to its end, then the new one from its
    start. `stop` is checked on every idle poll; return True to end.
    """
    path = os.fspath(path)
    f = _open_log(path)
    if f is not None and not from_start:
        f.seek(0, os.SEEK_END)
    return _follow(path, f, poll, stop)


def _follow(
    path: str, f: BinaryIO | None, poll: float, stop: Callable[[], bool] | None
) -> Iterator[dict[str, Any]]:
    partial = b""
    try:
        while True:
            if f is None:
                f = _open_log(path)  # not there yet, or between rename and re-create
                partial = b""
            if f is not None:
                chunk = f.read()
                if chunk:
                    *lines, partial = (partial + chunk).split(b"\n")
                    for line in lines:
                        event = parse_line(line) if line.strip() else None
                        if event is not None:
                            yield event
                    continue
                if not FileIdentity.of_fd(f.fileno()).still_at(path):
                    f.close()  # fully read above; what is left in `partial` was torn
                    f = None
                    continue
                if f.tell() > os.fstat(f.fileno()).st_size:
                    f.seek(0)  # truncated in place (copytruncate)
                    partial = b""
                    continue
            if stop is not None and stop():
                return
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()


def _open_log(path: str) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except OSError:
        return None
