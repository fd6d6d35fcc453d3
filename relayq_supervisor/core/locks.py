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
from typing import Any, Callable

from relayq_supervisor.errors import LockHeld, StartupError
from relayq_supervisor.witness.identity import proc_start_ticks


def describe_owner(owner: dict[str, Any]) -> str:
    if not owner.get("pid"):
        return "another process (no owner record)"
    started = owner.get("taken_at", "?")
    return f"pid {owner['pid']} (started {started}, config {owner.get('config', '?')})"


@dataclass
class OwnerLock:
    path: str
    fd: int | None = None
    inode: tuple[int, int] | None = None

    def acquire(self, record: dict[str, Any]) -> None:
        """Take the lock or raise LockHeld naming the owner. Writes `record` into the file."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                owner = read_owner(self.path)
                raise LockHeld(self.path, owner, f"{self.path} is locked by {describe_owner(owner or {})}") from None
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


def read_owner(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            owner = json.loads(f.read() or "null")
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None


class OwnerLocks:
    """Every lock this supervisor holds, by key (`supervisor`, a program name, `redis-dir`),
    each recording this process as owner."""

    def __init__(self, config_path: str, on_conflict: Callable[[str, dict[str, Any]], object]):
        self.config_path = config_path
        self.on_conflict = on_conflict      # (path, owner record): audited as lock_conflict
        self.held: dict[str, OwnerLock] = {}

    def owner_record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"pid": pid, "start_ticks": proc_start_ticks(pid), "config": self.config_path,
                "manager": "relayq-supervisor"}

    def take(self, key: str, path: str, what: str, why: str = "") -> None:
        """StartupError `relayq-supervisor: WHAT is owned by pid N (started ..., config ...)WHY`."""
        lock = OwnerLock(path)
        try:
            lock.acquire(self.owner_record())
        except LockHeld as e:
            self.on_conflict(path, e.owner)
            raise StartupError(f"relayq-supervisor: {what} is owned by {describe_owner(e.owner)}{why}") from None
        self.held[key] = lock

    def take_program(self, name: str, run_dir: str) -> None:
        self.take(name, os.path.join(run_dir, f"{name}.lock"), f"program {name}")

    def release(self, key: str) -> None:
        lock = self.held.pop(key, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

    def paths(self) -> list[str]:
        return [lock.path for lock in self.held.values()]

    def retake_needed(self, path: str) -> bool:
        """True when our lock file at `path` was deleted or replaced behind our back."""
        return any(lock.path == path and not lock.is_intact() for lock in self.held.values())

    def retake(self, path: str) -> bool:
        """Lock the file at `path` again (a new inode); False if that failed."""
        for lock in self.held.values():
            if lock.path == path:
                lock.release()
                try:
                    lock.acquire(self.owner_record())
                    return True
                except (LockHeld, OSError):
                    return False
        return False
