"""Where a child's stdout and stderr go.

Each child writes into a pipe the supervisor reads on its loop, so that the
supervisor can rotate the log by size (a child holding the file itself would keep
writing into the rotated file) or prefix lines with the program name.
"""
from __future__ import annotations

import os
import sys
from typing import BinaryIO, Protocol

from relayq_supervisor.linux.files import rotate_by_rename


class ChildOutput(Protocol):
    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class RotatingFile:
    """Append-only file rotated by size: NAME -> NAME.1 -> ... -> NAME.<backups>."""

    def __init__(self, path: str, max_bytes: int, backups: int, mode: int = 0o640):
        self.path, self.max_bytes, self.backups, self.mode = path, max_bytes, backups, mode
        self.fd: int | None = None
        self.size = 0

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
        if self.fd is None:
            self._open()
        if self.size and self.size + len(data) > self.max_bytes:
            self.rotate()
            self._open()
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
    return RotatingFile(os.path.join(log_dir, f"{name}.log"), max_bytes, backups)
