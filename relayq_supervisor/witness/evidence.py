"""What a stuck or bloated process looked like, read before the watchdog signals it:
scheduler state, where it sleeps in the kernel, its kernel stack where readable, CPU
time, RSS. And the RSS of a program's whole run, for max_rss: the processes of its cgroup
where it has one (a daemon that left with setsid() included), else of its process group."""
from __future__ import annotations

import os
import time
from typing import Any

import psutil

STACK_LINES = 16
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _read(path: str, limit: int = 4096) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace").strip()
    except OSError:
        return None


def _resident(pid: int) -> int | None:
    """RSS in bytes: /proc/PID/statm's second field (resident pages), as proc(5) has it."""
    text = _read(f"/proc/{pid}/statm", 256)
    fields = text.split() if text else []
    return int(fields[1]) * _PAGE if len(fields) > 1 else None


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


class Probe:
    """Reads /proc for the arbiter (core.collaborators.Probe); remembers CPU time per pid so
    evidence can say how much CPU the process used since the previous look."""

    def __init__(self) -> None:
        self.cpu_seen: dict[int, tuple[float, float]] = {}    # pid -> (monotonic, cpu seconds)

    def rss(self, pgid: int, members: list[int] | None = None) -> int | None:
        """Resident bytes of `members` (a run's cgroup) when given, else of every process
        in the group `pgid` (a program's main pid); None when none of them is left.

        Without members, every pid on the node is asked its group (getpgid(2), no file
        read) and only the group's are read: no psutil object per process."""
        total, found = 0, False
        for pid in (members if members is not None else _pids()):
            try:
                if members is None and os.getpgid(pid) != pgid:
                    continue
            except OSError:
                continue
            resident = _resident(pid)
            if resident is not None:
                total += resident
                found = True
        return total if found else None

    def evidence(self, pid: int) -> dict[str, Any]:
        """Facts about `pid` now; a field that could not be read is None (never a guess)."""
        out: dict[str, Any] = {"pid": pid, "state": None, "wchan": _read(f"/proc/{pid}/wchan") or None,
                               "stack": None, "cpu_s": None, "cpu_s_since_last_look": None, "rss": None,
                               "threads": None}
        stack = _read(f"/proc/{pid}/stack", 16384)       # root only, and only on some kernels
        if stack:
            out["stack"] = stack.splitlines()[:STACK_LINES]
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                out["state"] = p.status()
                cpu = p.cpu_times()
                out["cpu_s"] = round(cpu.user + cpu.system, 3)
                out["rss"] = p.memory_info().rss
                out["threads"] = p.num_threads()
        except psutil.Error:
            return out
        now = time.monotonic()
        seen = self.cpu_seen.get(pid)
        if seen is not None:
            out["cpu_s_since_last_look"] = round(out["cpu_s"] - seen[1], 3)
            out["seconds_since_last_look"] = round(now - seen[0], 3)
        self.cpu_seen[pid] = (now, out["cpu_s"])
        return out

    def forget(self, pid: int) -> None:
        self.cpu_seen.pop(pid, None)


def summary(evidence: dict[str, Any]) -> str:
    """`state sleeping, wchan ep_poll` for the one-line cause."""
    parts = []
    if evidence.get("state"):
        parts.append(f"state {evidence['state']}")
    if evidence.get("wchan") and evidence["wchan"] != "0":
        parts.append(f"wchan {evidence['wchan']}")
    return ", ".join(parts)
