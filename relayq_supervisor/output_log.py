"""Reading the programs' output logs back (`relayqctl logs`): files only, so it works
with the supervisor down.

log_dir holds `NAME.log` per instance (`worker:0.log`), rotated to `NAME.log.1` ...
`NAME.log.<backups>`, plus `supervisor.log` (the supervisor's own lines). The
supervisor starts every line with the time it arrived (core/output.line_stamp);
lines without one (written before stamps existed) take the time of the line before.
"""
from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

STAMP_RE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) ")
_FILE_RE = re.compile(r"^(?P<instance>.+)\.log(?:\.(?P<n>\d+))?$")
NO_TIME = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Line:
    instance: str
    when: datetime          # NO_TIME when neither it nor a line before it had a stamp
    stamp: str              # "" when it had none
    text: str

    def render(self, with_instance: bool) -> str:
        prefix = f"{self.stamp} " if self.stamp else ""
        return prefix + (f"[{self.instance}] " if with_instance else "") + self.text


def instance_of(name: str, instance: str) -> bool:
    """`worker` names worker, worker:0, worker:1; `worker:1` only itself."""
    return instance == name or (instance.startswith(name + ":") and instance[len(name) + 1:].isdigit())


def files_of(log_dir: str, name: str) -> dict[str, list[str]]:
    """Instance -> its log files, oldest first (NAME.log.N ... NAME.log.1, NAME.log)."""
    try:
        entries = os.listdir(log_dir)
    except OSError:
        return {}
    found: dict[str, list[tuple[int, str]]] = {}
    for entry in entries:
        m = _FILE_RE.match(entry)
        if m and instance_of(name, m.group("instance")):
            # the current file sorts after every rotated one
            age = int(m.group("n")) if m.group("n") else 0
            found.setdefault(m.group("instance"), []).append((age, os.path.join(log_dir, entry)))
    return {inst: [path for _, path in sorted(files, reverse=True)] for inst, files in sorted(found.items())}


def parse_stamp(stamp: bytes) -> datetime:
    return datetime.strptime(stamp.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


class LineParser:
    """Turns one instance's bytes into Lines, carrying the last stamp's time forward."""

    def __init__(self, instance: str):
        self.instance = instance
        self.last = NO_TIME

    def parse(self, raw: bytes) -> Line:
        raw = raw.rstrip(b"\n")
        m = STAMP_RE.match(raw)
        stamp = ""
        if m:
            try:
                self.last = parse_stamp(m.group(1))
                stamp, raw = m.group(1).decode(), raw[m.end():]
            except ValueError:
                pass
        return Line(self.instance, self.last, stamp, raw.decode("utf-8", "replace"))


def read_instance(instance: str, paths: list[str], limit: int | None, since: datetime | None,
                  current_end: int | None = None) -> list[Line]:
    """Its last `limit` lines at or after `since`, oldest first. The current file (the last
    path) is read up to `current_end` when given: a follower takes over from there."""
    parser = LineParser(instance)
    out: deque[Line] = deque(maxlen=limit) if limit is not None else deque()
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as f:
                data = f.read(current_end) if i == len(paths) - 1 and current_end is not None else f.read()
        except OSError:
            continue        # rotated away while we read: its lines are in the next file
        for raw in data.splitlines(keepends=True):
            line = parser.parse(raw)
            if since is None or line.when >= since:
                out.append(line)
    return list(out)


def recent(by_instance: dict[str, list[str]], limit: int | None, since: datetime | None,
           ends: dict[str, int] | None = None) -> list[Line]:
    """The last `limit` lines of all the instances, merged by time (stable: an instance's
    own order is kept)."""
    if limit == 0:
        return []
    lines: list[Line] = []
    for instance, paths in by_instance.items():
        lines += read_instance(instance, paths, limit, since, (ends or {}).get(instance))
    if len(by_instance) > 1:
        lines.sort(key=lambda line: line.when)
    return lines[-limit:] if limit is not None else lines


class _Followed:
    """One instance's current file, held open: a rotation renames it, so what was written
    to it before the rename is still read from this fd before the new file is opened."""

    def __init__(self, instance: str, path: str, start_at_end: bool):
        self.instance, self.path = instance, path
        self.parser = LineParser(instance)
        self.partial = b""
        self.fd: int | None = None
        self.pos = 0
        self._open(start_at_end)

    def _open(self, at_end: bool) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.fd = None
            return
        self.pos = os.fstat(self.fd).st_size if at_end else 0

    def history_end(self) -> int:
        """Where the history stops and following begins: the start of its unfinished last
        line, so that line is printed once, whole (one longer than 64 KiB is left cut)."""
        if self.fd is None or self.pos == 0:
            return self.pos
        start = max(0, self.pos - 65536)
        tail = os.pread(self.fd, self.pos - start, start)
        cut = tail.rfind(b"\n")
        if cut >= 0:
            self.pos = start + cut + 1
        elif start == 0:
            self.pos = 0
        return self.pos

    def poll(self) -> Iterator[Line]:
        if self.fd is None:
            self._open(at_end=False)
            if self.fd is None:
                return
        yield from self._drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return          # between the rename and the next write: the new file is not there yet
        mine = os.fstat(self.fd)
        if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):      # rotated
            yield from self._drain()
            yield from self._flush_partial()
            os.close(self.fd)
            self._open(at_end=False)
            yield from self._drain()
        elif mine.st_size < self.pos:                                  # truncated (log_backups = 0)
            yield from self._flush_partial()
            self.pos = 0
            yield from self._drain()

    def _drain(self) -> Iterator[Line]:
        assert self.fd is not None
        while True:
            data = os.pread(self.fd, 1 << 20, self.pos)
            if not data:
                return
            self.pos += len(data)
            data = self.partial + data
            lines = data.split(b"\n")
            self.partial = lines.pop()
            for raw in lines:
                yield self.parser.parse(raw)

    def _flush_partial(self) -> Iterator[Line]:
        if self.partial:
            yield self.parser.parse(self.partial)
            self.partial = b""

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Follower:
    """New lines of every instance of NAME as they are written, across rotations,
    restarts (they append to the same file) and instances that appear later."""

    def __init__(self, log_dir: str, name: str):
        self.log_dir, self.name = log_dir, name
        self.followed: dict[str, _Followed] = {}
        for instance, paths in files_of(log_dir, name).items():
            if paths[-1].endswith(".log"):
                self.followed[instance] = _Followed(instance, paths[-1], start_at_end=True)

    def history_ends(self) -> dict[str, int]:
        return {instance: f.history_end() for instance, f in self.followed.items()}

    def poll(self) -> list[Line]:
        for instance in files_of(self.log_dir, self.name):
            if instance not in self.followed:
                self.followed[instance] = _Followed(instance, os.path.join(self.log_dir, f"{instance}.log"),
                                                    start_at_end=False)
        lines: list[Line] = []
        for f in self.followed.values():
            lines += f.poll()
        return lines

    def lines(self, interval: float = 0.2) -> Iterator[Line]:
        """Until the caller stops (KeyboardInterrupt): poll, since inotify on a directory
        that may be replaced buys little for a command a person watches."""
        while True:
            yield from self.poll()
            time.sleep(interval)

    def close(self) -> None:
        for f in self.followed.values():
            f.close()
