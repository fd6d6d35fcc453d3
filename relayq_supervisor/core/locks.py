"""Exclusive ownership with flock(2) lock files, each holding a JSON owner record, and
with abstract unix socket names that no file operation can take away.

Other tools can ask whether something is owned with `flock -n FILE true` (exit 1 =
owned) and read the record with `cat FILE`. A lock file is never unlinked on release:
unlinking a locked file lets a second owner lock a fresh inode under the same name.

But a lock file is only as good as its directory: delete run_dir (a cleanup script, a
tmpfiles rule) and a second supervisor locks fresh files. So the supervisor also binds
`@relayq-supervisor/<hash>` names for its config and its run_dir in the abstract
namespace (unix(7): "an abstract socket address ... has no connection with filesystem
pathnames"); the kernel frees a name only when its socket closes, at our exit or crash.
Abstract names are per network namespace: supervisors in different ones are not kept
apart by them (their lock files still are, while run_dir stands).
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relayq_supervisor.errors import LockHeld, StartupError
from relayq_supervisor.linux.files import FileIdentity
from relayq_supervisor.linux.procfs import proc_start_ticks


def describe_owner(owner: dict[str, Any]) -> str:
    if not owner.get("pid"):
        return "another process (no owner record)"
    started = owner.get("taken_at", "?")
    return f"pid {owner['pid']} (started {started}, config {owner.get('config', '?')})"


@dataclass
class OwnerLock:
    path: str
    fd: int | None = None
    identity: FileIdentity | None = None
    record: dict[str, Any] | None = None
    # in a directory another user may write (Redis' data dir): never follow a link there,
    # nor write into a file that is not ours (root opening a planted link would truncate its target)
    exposed: bool = False
    replaced: str | None = None     # what we found at `path` instead of our file, and replaced

    def open(self) -> int:
        if not self.exposed:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(self.path, flags | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            self.replaced = "a symbolic link"
        else:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid():
                return fd
            os.close(fd)
            self.replaced = f"a file of uid {st.st_uid}" if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 else \
                f"a file with {st.st_nlink} links" if stat.S_ISREG(st.st_mode) else "not a regular file"
        return self.replace(flags)

    def replace(self, flags: int = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK) -> int:
        """Unlink what is at `path` and create our own file there (O_EXCL: if something
        appears in between, FileExistsError: we do not write into it)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o644)

    def acquire(self, record: dict[str, Any], take_from: Callable[[int | None], str | None] | None = None) -> None:
        """Take the lock or raise LockHeld naming the owner. Writes `record` into the file.
        `take_from(pid)`: for an exposed lock held by `pid` (from /proc/locks), why that holder
        is no owner (the lock file is then replaced and taken), or None (it is: LockHeld)."""
        self.replaced = None
        fd = self.open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = flock_holder(self.path)
            why = take_from(holder) if take_from is not None and self.exposed else None
            if why is None:
                owner = read_owner(self.path)
                if self.exposed and holder and (owner or {}).get("pid") != holder:
                    owner = {"pid": holder}     # a record in a file others may write is only a claim
                raise LockHeld(self.path, owner, f"{self.path} is locked by {describe_owner(owner or {})}") from None
            fd = self.replace()
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # a file nobody else has opened yet
            self.replaced = why
        self.fd, self.identity = fd, FileIdentity.of_fd(fd)
        self.rewrite(dict(record, taken_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")))

    def rewrite(self, record: dict[str, Any]) -> None:
        """Replace the record of a lock we hold (what we run changed). Not fsynced: after a
        crash of the machine nothing it names is running any more."""
        assert self.fd is not None
        data = (json.dumps(record) + "\n").encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))
        self.record = record

    def is_intact(self) -> bool:
        """False when the file was deleted or replaced behind our back."""
        return self.fd is not None and self.identity is not None and self.identity.still_at(self.path)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd, self.identity = None, None


def flock_holder(path: str) -> int | None:
    """The pid that took the flock(2) on the file at `path`, as /proc/locks lists it
    (proc(5): `1: FLOCK ADVISORY WRITE PID MAJOR:MINOR:INODE 0 EOF`, a waiter's line has
    `->`); None when it lists none, or 0 (a holder in a pid namespace we cannot see).
    The pid is the one that locked: after a fork and its exit, maybe no process any more."""
    try:
        st = os.stat(path, follow_symlinks=False)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == where and fields[4].isdigit():
            return int(fields[4]) or None
    return None


def owner_key(config_path: str) -> str:
    """A short name for one configuration, the same for every supervisor started with it
    (its real path hashed): names what must be unique per config outside run_dir."""
    return hashlib.sha256(os.path.realpath(config_path).encode()).hexdigest()[:16]


def program_key(name: str) -> str:
    """Programs' locks in a key space of their own: a program may be called `redis-dir`."""
    return f"program:{name}"


def program_lock_path(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, f"{name}.lock")


def read_owner(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            owner = json.loads(f.read() or "null")
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None


ABSTRACT_PREFIX = "relayq-supervisor/"


def path_key(path: str) -> str:
    """A short name for a directory, the same for every supervisor naming it (its real path hashed)."""
    return hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]


def abstract_name(what: str, path: str) -> str:
    """The abstract socket name (without its leading NUL) that stands for owning `path`."""
    return f"{ABSTRACT_PREFIX}{what}/{path_key(path)}"


def holder_of(name: str) -> int | None:
    """The pid that bound abstract stream socket `name` (SO_PEERCRED of a connection), or None."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(1.0)
        try:
            s.connect("\0" + name)
            pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            return pid or None
        except OSError:
            return None


def claim_name(name: str) -> socket.socket | None:
    """Bind and listen on abstract `name`: the socket, or None when another process holds it.
    The caller accepts and closes connections (refused rivals connect to learn the pid)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        s.bind("\0" + name)
        s.listen(8)
        return s
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            return None
        raise


def answer_rival(claimed: socket.socket) -> None:
    """A refused rival connected to learn our pid (SO_PEERCRED at connect): close it."""
    try:
        conn, _ = claimed.accept()
        conn.close()
    except OSError:
        pass


class OwnerLocks:
    """Every lock this supervisor holds, by key (`supervisor`, a program name, `redis-dir`),
    each recording this process as owner."""

    def __init__(self, config_path: str, on_conflict: Callable[[str, dict[str, Any]], object]):
        self.config_path = config_path
        self.on_conflict = on_conflict      # (path, owner record): audited as lock_conflict
        self.held: dict[str, OwnerLock] = {}
        self.names: dict[str, socket.socket] = {}      # abstract socket names we hold
        self.answering: list[tuple[asyncio.AbstractEventLoop, int]] = []   # (loop, fd) of hold_name's readers

    def claim(self, what: str, path: str, record_path: str, thing: str = "", why: str = "") -> socket.socket:
        """Hold the abstract name standing for `path` (a config, a run_dir), or StartupError
        `relayq-supervisor: THING is owned by pid N (...)WHY` (THING: `path` unless given),
        with the holder's lock record at `record_path` when it is still there and names that pid."""
        name = abstract_name(what, path)
        s = claim_name(name)
        if s is None:
            pid = holder_of(name)
            record = read_owner(record_path) or {}
            owner = record if pid and record.get("pid") == pid else ({"pid": pid} if pid else {})
            self.on_conflict("@" + name, owner)
            described = describe_owner(owner) if owner.get("taken_at") else \
                f"pid {pid}" if pid else "another process"
            raise StartupError(f"relayq-supervisor: {thing or path} is owned by {described} (it holds the "
                               f"abstract socket @{name}){why}") from None
        self.names[name] = s
        return s

    def hold_name(self, what: str, path: str, record_path: str, thing: str = "", why: str = "") -> None:
        """claim(), and answer refused rivals on the running loop (they connect to learn our
        pid); without a loop (a unit test) they are answered by the kernel's backlog alone."""
        claimed = self.claim(what, path, record_path, thing, why)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.add_reader(claimed.fileno(), answer_rival, claimed)
        self.answering.append((loop, claimed.fileno()))

    def owner_record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"pid": pid, "start_ticks": proc_start_ticks(pid), "config": self.config_path,
                "manager": "relayq-supervisor"}

    def take(self, key: str, path: str, what: str, why: str = "", keep: dict[str, Any] | None = None,
             take_from: Callable[[int | None], str | None] | None = None) -> str | None:
        """StartupError `relayq-supervisor: WHAT is owned by pid N (started ..., config ...)WHY`.
        `keep`: fields of the previous record carried into ours (what still runs of it).
        With `take_from` (OwnerLock.acquire), the lock file lives in a directory another user
        may write: what was found there instead of our free lock file and replaced (a planted
        file, or ours held by a holder `take_from` says is no owner) is returned, for the
        caller to audit; None when the lock was taken as it was."""
        lock = OwnerLock(path, exposed=take_from is not None)
        try:
            lock.acquire(dict(self.owner_record(), **(keep or {})), take_from)
        except LockHeld as e:
            self.on_conflict(path, e.owner)
            raise StartupError(f"relayq-supervisor: {what} is owned by {describe_owner(e.owner)}{why}") from None
        except FileExistsError:     # exposed: something appeared between our unlink and our create
            raise StartupError(f"relayq-supervisor: {path} was replaced again while the supervisor made it anew "
                               "(someone with write access to its directory): see who, then start again") from None
        self.held[key] = lock
        return lock.replaced

    def take_program(self, name: str, run_dir: str, keep: dict[str, Any] | None = None) -> None:
        self.take(program_key(name), program_lock_path(run_dir, name), f"program {name}", keep=keep)

    def note(self, key: str, **fields: Any) -> None:
        """Record in lock `key` what now runs under it (None removes a field), so that a
        supervisor after a crash of this one can find it."""
        lock = self.held.get(key)
        if lock is None or lock.record is None or lock.fd is None:
            return
        record = {k: v for k, v in {**lock.record, **fields}.items() if v is not None}
        try:
            lock.rewrite(record)
        except OSError:
            pass        # the lock itself still holds; only the note is lost

    def read(self, path: str) -> dict[str, Any] | None:
        """The record in a lock file, whoever wrote it (before we take it: what a crashed
        predecessor left running)."""
        return read_owner(path)

    def release(self, key: str) -> None:
        lock = self.held.pop(key, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)
        for loop, fd in self.answering:
            if not loop.is_closed():
                loop.remove_reader(fd)
        self.answering.clear()
        for s in self.names.values():
            s.close()
        self.names.clear()

    def paths(self) -> list[str]:
        return [lock.path for lock in self.held.values()]

    def retake_needed(self, path: str) -> bool:
        """True when our lock file at `path` was deleted or replaced behind our back."""
        return any(lock.path == path and not lock.is_intact() for lock in self.held.values())

    def retake(self, path: str) -> bool:
        """Lock the file at `path` again (a new inode); False if that failed."""
        for lock in self.held.values():
            if lock.path == path:
                # the same record as before (its notes, the supervisor's control_socket), freshly dated
                previous = {k: v for k, v in (lock.record or {}).items() if k != "taken_at"}
                lock.release()
                try:
                    lock.acquire({**previous, **self.owner_record()})
                    return True
                except (LockHeld, OSError):
                    return False
        return False
