"""Facts /proc tells about a process: start time, systemd unit, user, groups, listeners, children.

Readers only: no policy, no logging. Every function answers None (or an empty result)
when the process is gone or the file cannot be read; deciding what that means is the
caller's business.
"""
from __future__ import annotations

import functools
import os
import pwd
import re
from dataclasses import dataclass

import psutil

# Not .slice: slices are the inner nodes of systemd's tree, never where a process is placed.
UNIT_SUFFIXES = (".service", ".scope", ".timer", ".socket")
_USER_MANAGER = re.compile(r"user@(\d+)\.service")


def start_ticks_from_stat(text: str) -> int | None:
    """Field 22 (starttime, clock ticks after boot) of /proc/PID/stat text.

    comm (field 2) may contain spaces and ')', so fields are counted from the
    last ')'.
    """
    close = text.rfind(")")
    if close < 0:
        return None
    rest = text[close + 1 :].split()
    # rest[0] is field 3 (state), so field 22 is rest[19].
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def proc_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks after boot, or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return start_ticks_from_stat(f.read().decode("utf-8", "replace"))
    except OSError:
        return None


def thread_group(tid: int) -> int | None:
    """The process (Tgid) a thread id belongs to; a process' own pid gives itself."""
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass(frozen=True)
class CgroupUnit:
    """The systemd unit a process runs in."""

    name: str  # redis-server.service, session-3.scope, ...
    user_uid: int | None = None  # set when a user's own systemd (user@UID.service) runs it


def parse_cgroup_unit(text: str) -> CgroupUnit | None:
    """The unit named by /proc/PID/cgroup text; within a path the innermost unit wins.

    The unified (v2, ``0::``) line is read first, then v1's ``name=systemd`` line, then
    any other v1 line (a v1 host without name=systemd shows units on controller lines).
    """
    ranked: list[tuple[int, str]] = []
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        # v2 first: on hybrid hosts systemd >= 233 tracks units in the unified tree; name=systemd is a copy.
        rank = 0 if hierarchy == "0" and controllers == "" else 1 if controllers == "name=systemd" else 2
        ranked.append((rank, path))
    for _, path in sorted(ranked, key=lambda r: r[0]):
        unit = _unit_in_path(path)
        if unit is not None:
            return unit
    return None


def _unit_in_path(path: str) -> CgroupUnit | None:
    parts = [p for p in path.split("/") if p]
    user_uid = None
    for part in parts:
        manager = _USER_MANAGER.fullmatch(part)
        if manager:
            user_uid = int(manager.group(1))
    for part in reversed(parts):
        if part.endswith(UNIT_SUFFIXES) and len(part) > len(".scope"):
            # user@UID.service itself is a system unit; only what it runs belongs to the user.
            if user_uid is not None and part == f"user@{user_uid}.service":
                return CgroupUnit(part)
            return CgroupUnit(part, user_uid)
    return None


def unit_from_cgroup(text: str) -> str | None:
    """Just the unit's name from /proc/PID/cgroup text, e.g. ``relayq-redis-monitor.service``."""
    unit = parse_cgroup_unit(text)
    return unit.name if unit else None


def cgroup_unit(pid: int) -> CgroupUnit | None:
    """The systemd unit `pid` runs in, or None (no unit, gone, unreadable)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return parse_cgroup_unit(f.read())
    except OSError:
        return None


@functools.lru_cache(maxsize=256)
def user_name(uid: int) -> str | None:
    """The login name of `uid`, or None when the user database does not know it."""
    # Cached: a name service lookup may be slow, and callers run on the event loop.
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def supplementary_groups(pid: int) -> set[int]:
    """The supplementary group ids of `pid` (the Groups: line of /proc/PID/status); empty if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def listeners(port: int) -> dict[int | None, str]:
    """pid -> "address:port" for each socket listening on TCP `port`, in the kernel's order.

    The pid is None for sockets of processes we may not inspect (other users' unless root).
    """
    found: dict[int | None, str] = {}
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return found
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            found.setdefault(conn.pid, f"{conn.laddr.ip}:{conn.laddr.port}")
    return found


def own_children() -> list[int]:
    """Direct children of this process, from /proc (cheap: no scan of all processes)."""
    pids: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    # Each thread lists the children it forked itself: all threads together are the process's.
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return pids


def process_children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's), from /proc; empty when it is gone."""
    pids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                pids.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return pids


def process_environ_value(pid: int, name: str) -> str | None:
    """The value of `name` in the environment `pid` was exec'd with (/proc/PID/environ), or
    None (not set, gone, not ours to read). A process may change it in its own memory; this
    is what the kernel kept from its exec."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    prefix = name.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode("utf-8", "replace")
    return None


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, D, Z, ...), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    rest = text[text.rfind(")") + 1:].split()
    return rest[0] if rest else None
