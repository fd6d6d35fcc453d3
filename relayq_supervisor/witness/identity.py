"""Who a process is, read so that a recycled pid is never blamed.

A signal carries only the sender's pid (and real uid). By the time we look at
/proc that pid may belong to another process, so `ProcessIdentity.capture`
pins the process with a pidfd *before* reading anything, and afterwards checks
through the pidfd that the same process is still there and that its start
time did not change. A pid cannot be reused while the process (even as a
zombie) exists, so facts read between the two steps belong to it. When the
check fails the identity says so (``alive=False``) and keeps only what the
kernel itself reported.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import psutil

from relayq_supervisor.linux.procfs import cgroup_unit, proc_start_ticks, user_name
from relayq_supervisor.shell_text import command_line

EXITED_NOTE = "sender exited before it could be inspected"
ZOMBIE_NOTE = "sender had exited when inspected; its command line was already gone"
KERNEL_NOTE = "no sender pid (the kernel, or a process in a pid namespace we cannot see)"
UNSET_ID = 4294967295  # (uid_t)-1 in /proc/PID/loginuid and sessionid: never set
MAX_ANCESTRY = 64  # parent chains are short; this only stops a corrupt /proc loop
DESCRIBE_WIDTH = 80

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# psutil's epoch start time is btime (whole seconds, re-read from /proc/stat and
# moved by clock steps) plus ticks: a cross-check only, the tick readings are exact.
START_TIME_SLACK = 1.0


@dataclass(frozen=True)
class Ancestor:
    """One process in a sender's parent chain."""

    pid: int
    comm: str
    cmdline: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "comm": self.comm, "cmdline": list(self.cmdline)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ancestor:
        return cls(pid=int(d["pid"]), comm=d.get("comm") or "", cmdline=tuple(d.get("cmdline") or ()))


@dataclass(frozen=True)
class ProcessIdentity:
    """Evidence about one process; None means "not known", never a guess.

    ``code`` is the siginfo si_code name the caller got from the kernel
    (e.g. ``SI_USER``), kept with the identity because it says how far the
    pid can be trusted. ``program`` is set by the supervisor when the process
    is one of its own children.
    """

    pid: int
    uid: int | None = None
    user: str | None = None
    comm: str | None = None
    exe: str | None = None
    cmdline: tuple[str, ...] | None = None
    start_time: float | None = None
    ppid: int | None = None
    ancestry: tuple[Ancestor, ...] = ()
    unit: str | None = None
    loginuid: int | None = None
    session: int | None = None
    tty: str | None = None
    alive: bool = False
    note: str | None = None
    program: str | None = None
    code: str | None = None

    @classmethod
    def capture(
        cls,
        pid: int,
        uid_hint: int | None = None,
        code_hint: str | None = None,
        *,
        seen_boottime: float | None = None,
    ) -> ProcessIdentity:
        """Read who `pid` is now, pinned with a pidfd so a recycled pid is never blamed.

        `uid_hint`/`code_hint` are the sender uid and si_code from the siginfo;
        a process whose real uid differs from `uid_hint` is not the sender.
        `seen_boottime` (``time.clock_gettime(time.CLOCK_BOOTTIME)`` when the
        signal was read) rejects a process started after the signal: the pid
        was reused before we could open it.
        """
        pin = Pin.open(pid)
        try:
            return pin.capture(uid_hint, code_hint, seen_boottime=seen_boottime)
        finally:
            pin.close()

    @classmethod
    def _capture_pinned(cls, pid: int, pidfd: int | None, uid_hint: int | None, code_hint: str | None,
                        seen_boottime: float | None) -> ProcessIdentity:
        gone = cls(pid=pid, uid=uid_hint, code=code_hint, alive=False, note=EXITED_NOTE)
        ticks = proc_start_ticks(pid)
        if ticks is None:
            return gone
        found = _recent(pid, ticks, pidfd)
        if found is None:
            found = cls._read_pinned(pid, pidfd, ticks)
            if found is None:
                return gone
            _remember(pid, ticks, found)
        if seen_boottime is not None and ticks / CLOCK_TICKS > seen_boottime + 1.0 / CLOCK_TICKS:
            return dataclasses.replace(
                gone, note=f"pid {pid} was reused by a process started after the signal; sender already gone"
            )
        if uid_hint is not None and found.uid != uid_hint:
            return dataclasses.replace(
                gone, note=f"pid {pid} now belongs to uid {found.uid}, not the sender's uid {uid_hint}; sender already gone"
            )
        return dataclasses.replace(found, code=code_hint) if code_hint is not None else found

    @classmethod
    def _read_pinned(cls, pid: int, pidfd: int | None, ticks: int) -> ProcessIdentity | None:
        """Everything /proc says about the process that started at `ticks`, checked against
        the pin afterwards; None when it is gone (or its pid was reused) meanwhile."""
        facts = _read_facts(pid)
        if facts is None or facts.start_ticks != ticks:
            return None
        if not _still_same_process(pidfd, pid, ticks, facts.start_time):
            return None
        ancestry = _read_ancestry(facts.ppid, ticks) if facts.ppid else ()
        return cls(
            pid=pid,
            uid=facts.uid,
            user=user_name(facts.uid),
            comm=facts.comm,
            exe=facts.exe,
            cmdline=facts.cmdline,
            start_time=facts.start_time,
            ppid=facts.ppid,
            ancestry=ancestry,
            unit=facts.unit,
            loginuid=facts.loginuid,
            session=facts.session,
            tty=facts.tty,
            alive=not facts.zombie,
            note=ZOMBIE_NOTE if facts.zombie else None,
        )

    def with_program(self, name: str) -> ProcessIdentity:
        """A copy naming the supervised program this process is."""
        return dataclasses.replace(self, program=name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; every field present, unknowns as None."""
        return {
            "pid": self.pid,
            "uid": self.uid,
            "user": self.user,
            "comm": self.comm,
            "exe": self.exe,
            "cmdline": list(self.cmdline) if self.cmdline is not None else None,
            "start_time": self.start_time,
            "ppid": self.ppid,
            "ancestry": [a.to_dict() for a in self.ancestry],
            "unit": self.unit,
            "loginuid": self.loginuid,
            "session": self.session,
            "tty": self.tty,
            "alive": self.alive,
            "note": self.note,
            "program": self.program,
            "code": self.code,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProcessIdentity:
        """Inverse of `to_dict`; tolerates missing keys (older log lines)."""
        cmdline = d.get("cmdline")
        return cls(
            pid=int(d["pid"]),
            uid=d.get("uid"),
            user=d.get("user"),
            comm=d.get("comm"),
            exe=d.get("exe"),
            cmdline=tuple(cmdline) if cmdline is not None else None,
            start_time=d.get("start_time"),
            ppid=d.get("ppid"),
            ancestry=tuple(Ancestor.from_dict(a) for a in d.get("ancestry") or ()),
            unit=d.get("unit"),
            loginuid=d.get("loginuid"),
            session=d.get("session"),
            tty=d.get("tty"),
            alive=bool(d.get("alive", False)),
            note=d.get("note"),
            program=d.get("program"),
            code=d.get("code"),
        )

    def describe(self) -> str:
        """One short line: ``pid 4412 python3 /opt/relayq/monitor.py (relayq-redis-monitor.service)``."""
        if self.program:
            return f"{self.program} (pid {self.pid})"
        if self.comm is None:
            return f"pid {self.pid} ({self.note or EXITED_NOTE})"
        args = list(self.cmdline[1:]) if self.cmdline else []
        command = command_line([self.comm, *args]) if self.cmdline or not self.alive else f"[{self.comm}]"
        if len(command) > DESCRIBE_WIDTH:
            command = command[: DESCRIBE_WIDTH - 3] + "..."
        text = f"pid {self.pid} {command}"
        if self.unit:
            text += f" ({self.unit})"
        if not self.alive and self.note:
            text += f" [{self.note}]"
        return text


class Pin:
    """A process held by a pidfd, opened at once (a signal-delivery-stop: before the tracee
    is resumed) and read later: the reading is checked against the pidfd, so what it finds
    is the process that was there when the pin was taken, or it says the sender is gone.
    Opening a pidfd is one syscall; reading /proc is the slow part, done after the resume."""

    def __init__(self, pid: int, pidfd: int | None, failure: str | None, seen_boottime: float):
        self.pid, self.pidfd, self.failure, self.seen_boottime = pid, pidfd, failure, seen_boottime

    @classmethod
    def open(cls, pid: int) -> Pin:
        now = boottime_now()
        if pid <= 0:
            return cls(pid, None, KERNEL_NOTE, now)
        try:
            return cls(pid, os.pidfd_open(pid), None, now)
        except ProcessLookupError:
            return cls(pid, None, EXITED_NOTE, now)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EINVAL):
                return cls(pid, None, None, now)   # kernel < 5.3: the start-time check alone
            return cls(pid, None, f"could not open pid {pid}: {e.strerror}", now)

    @property
    def alive(self) -> bool:
        return self.failure is None and (self.pidfd is None or _pidfd_alive(self.pidfd))

    def capture(self, uid_hint: int | None = None, code_hint: str | None = None, *,
                seen_boottime: float | None = None) -> ProcessIdentity:
        if self.failure is not None:
            return ProcessIdentity(pid=self.pid, uid=uid_hint, code=code_hint, alive=False, note=self.failure)
        return ProcessIdentity._capture_pinned(self.pid, self.pidfd, uid_hint, code_hint, seen_boottime)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


@dataclass(frozen=True)
class _Facts:
    """What /proc said about a pid, before we know it is still the pinned process."""

    start_ticks: int | None
    uid: int
    comm: str
    exe: str | None
    cmdline: tuple[str, ...] | None
    start_time: float
    ppid: int
    tty: str | None
    unit: str | None
    loginuid: int | None
    session: int | None
    zombie: bool


def _read_facts(pid: int) -> _Facts | None:
    """Everything /proc tells about `pid`, or None if it vanished while reading."""
    try:
        p = psutil.Process(pid)
        start_ticks = proc_start_ticks(pid)
        with p.oneshot():
            zombie = p.status() == psutil.STATUS_ZOMBIE
            comm = p.name()
            uid = p.uids().real
            ppid = p.ppid()
            start_time = p.create_time()
            tty = p.terminal()
            # A zombie has no memory left: no argv, no exe link.
            cmdline = None if zombie else tuple(p.cmdline())
            exe = None if zombie else _exe(p)
    except psutil.ZombieProcess:
        return None  # became a zombie between status() and the reads: treat as gone
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    unit = cgroup_unit(pid)
    return _Facts(
        start_ticks=start_ticks,
        uid=uid,
        comm=comm,
        exe=exe,
        cmdline=cmdline,
        start_time=start_time,
        ppid=ppid,
        tty=tty,
        unit=unit.name if unit else None,
        loginuid=_read_id(f"/proc/{pid}/loginuid"),
        session=_read_id(f"/proc/{pid}/sessionid"),
        zombie=zombie,
    )


def _exe(p: psutil.Process) -> str | None:
    try:
        return p.exe() or None  # kernel threads have no exe: psutil says ""
    except psutil.AccessDenied:
        return None


def _still_same_process(pidfd: int | None, pid: int, ticks: int, start_time: float | None) -> bool:
    """True if the pidfd's process is still there and every reading agrees on its start."""
    if pidfd is not None and not _pidfd_alive(pidfd):
        return False
    if proc_start_ticks(pid) != ticks:
        return False
    if start_time is None:
        return True
    expected = psutil.boot_time() + ticks / CLOCK_TICKS
    return abs(start_time - expected) <= START_TIME_SLACK


def _pidfd_alive(pidfd: int) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # the permission check comes after the lookup: it exists
    return True


def _read_ancestry(ppid: int, child_ticks: int) -> tuple[Ancestor, ...]:
    """Parents from `ppid` up to pid 1, each pinned like the sender; stops where one vanishes."""
    chain: list[Ancestor] = []
    seen: set[int] = set()
    pid = ppid
    while pid > 0 and pid not in seen and len(chain) < MAX_ANCESTRY:
        seen.add(pid)
        found = _read_ancestor(pid, child_ticks)
        if found is None:
            break
        ancestor, pid, child_ticks = found
        chain.append(ancestor)
    return tuple(chain)


# (pid, start ticks) -> (monotonic time read, its identity): a storm's sender is read from
# /proc once per IDENTITY_REUSE_S, not at each of its signals that opens a window, nor again
# when the kernel witness names the same sender (issue 13: ~1 ms and 19 /proc opens a
# reading). The start ticks (read again each time) tell a reused pid apart, the pin that the
# process is still there; an exec, or its exit to a zombie, meanwhile is shown at most that late.
IDENTITY_REUSE_S = 1.0
IDENTITY_CACHE_MAX = 256
_identities: dict[tuple[int, int], tuple[float, ProcessIdentity]] = {}


def _recent(pid: int, ticks: int, pidfd: int | None) -> ProcessIdentity | None:
    hit = _identities.get((pid, ticks))
    if hit is None or time.monotonic() - hit[0] >= IDENTITY_REUSE_S:
        return None
    if pidfd is not None and not _pidfd_alive(pidfd):
        return None
    return hit[1]


def _remember(pid: int, ticks: int, identity: ProcessIdentity) -> None:
    if len(_identities) >= IDENTITY_CACHE_MAX:
        _identities.clear()
    _identities[(pid, ticks)] = (time.monotonic(), identity)


# (pid, start ticks) -> (monotonic time read, the ancestor, its parent): a storm's senders
# share their parents (a script's loops, its shell, the login), read once per
# ANCESTOR_REUSE_S rather than once per sender. The start ticks, read again each time,
# tell a reused pid apart; an exec meanwhile is shown at most that late.
ANCESTOR_REUSE_S = 1.0
ANCESTOR_CACHE_MAX = 256
_ancestors: dict[tuple[int, int], tuple[float, Ancestor, int]] = {}


def _read_ancestor(pid: int, child_ticks: int) -> tuple[Ancestor, int, int] | None:
    ticks = proc_start_ticks(pid)
    if ticks is None or ticks > child_ticks:
        return None
    hit = _ancestors.get((pid, ticks))
    if hit is not None and time.monotonic() - hit[0] < ANCESTOR_REUSE_S:
        return hit[1], hit[2], ticks
    found = _read_ancestor_now(pid, child_ticks)
    if found is not None:
        if len(_ancestors) >= ANCESTOR_CACHE_MAX:
            _ancestors.clear()
        _ancestors[(pid, found[2])] = (time.monotonic(), found[0], found[1])
    return found


def _read_ancestor_now(pid: int, child_ticks: int) -> tuple[Ancestor, int, int] | None:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL):
            return None
        pidfd = None
    try:
        ticks = proc_start_ticks(pid)
        # A parent always started before its child; a later start means the
        # parent exited and its pid was reused between our two reads.
        if ticks is None or ticks > child_ticks:
            return None
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                if p.status() == psutil.STATUS_ZOMBIE:
                    return None
                ancestor = Ancestor(pid=pid, comm=p.name(), cmdline=tuple(p.cmdline()))
                parent = p.ppid()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if not _still_same_process(pidfd, pid, ticks, None):
            return None
        return ancestor, parent, ticks
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _read_id(path: str) -> int | None:
    try:
        with open(path) as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if value == UNSET_ID else value


def boottime_now() -> float:
    """Seconds since boot on the clock /proc/PID/stat start times use (for `seen_boottime`)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
