"""Exclusive ownership with flock(2) lock files, each holding a JSON owner record.

Other tools can ask whether something is owned with `flock -n FILE true` (exit 1 =
owned) and read the record with `cat FILE`. A lock file is never unlinked on release:
unlinking a locked file lets a second owner lock a fresh inode under the same name.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass


class LockHeld(Exception):
    def __init__(self, path: str, owner: dict | None):
        self.path = path
        self.owner = owner or {}
        super().__init__(f"{path} is locked by {describe_owner(self.owner)}")


def describe_owner(owner: dict) -> str:
    if not owner.get("pid"):
        return "another process (no owner record)"
    started = owner.get("taken_at", "?")
    return f"pid {owner['pid']} (started {started}, config {owner.get('config', '?')})"


@dataclass
class OwnerLock:
    path: str
    fd: int | None = None
    inode: tuple[int, int] | None = None

    def acquire(self, record: dict) -> None:
        """Take the lock or raise LockHeld naming the owner. Writes `record` into the file."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LockHeld(self.path, read_owner(self.path)) from None
            raise
        record = dict(record, taken_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        st = os.fstat(fd)
        self.fd, self.inode = fd, (st.st_dev, st.st_ino)

    def is_intact(self) -> bool:
        """False when the file was deleted or replaced behind our back."""
        if self.fd is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self.inode

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = self.inode = None


def read_owner(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None
