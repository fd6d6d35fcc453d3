"""The kernel witness's memory of the node's processes, and naming a sender from it.

`ProcessHistory` is fed the trace's fork, exec and exit events in the kernel's time order:
pid -> parent, exec'd file, comm, start and exit time, and, read from /proc when the
exec event is read, the command line, uid and systemd unit (`captured`; False when the
process was gone by then: a 2 ms `sh -c kill` is named by its file and parents only).
`Namer` names a sender: from /proc while it lives (pid and start time must match the
trace's record), else from the history, with its parent chain up to a live ancestor.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from relayq_supervisor.linux.procfs import parse_cgroup_unit, proc_start_ticks, start_ticks_from_stat, user_name
from relayq_supervisor.witness.identity import CLOCK_TICKS, MAX_ANCESTRY, ProcessIdentity

PRUNE_EVERY_S = 5.0
# A process' /proc start time (clock ticks) and its fork event's timestamp differ by the
# time copy_process() takes plus the tick rounding.
START_MATCH_S = 2.0 / CLOCK_TICKS
GONE_NOTE = "exited before it could be inspected; named from the kernel trace"
OVERRUN_NOTE = "lineage incomplete (trace buffer overrun)"
# /proc reads per capture pass (one per trace read on the loop): ~20 us each, bounded by
# time like the trace reads (tracefs.READ_BUDGET_S); the rest wait for the next pass (a
# process that exits meanwhile is marked not captured without a read), at most
# CAPTURES_WAITING_MAX of them: beyond that the oldest are given up (`captured` False).
CAPTURE_BUDGET_S = 0.002
CAPTURES_WAITING_MAX = 4096
ARGV_MAX_BYTES = 4096


@dataclass(slots=True)
class ProcessRecord:
    pid: int
    ppid: int | None
    comm: str
    start: float | None         # fork timestamp (trace clock); None: started before we looked
    filename: str | None = None  # what it exec'd last
    exit: float | None = None
    # read from /proc when its exec was read (capture_execs): True, False when it was gone
    # by then, None when no exec was seen (it started before the trace) or not yet read
    captured: bool | None = None
    cmdline: tuple[str, ...] | None = None
    uid: int | None = None      # the owner of /proc/PID: the effective uid (root if not dumpable)
    unit: str | None = None


class ProcessHistory:
    """pid -> what the trace told about it, bounded by count and by age after exit.

    Fed in the kernel's time order, so at any moment it describes the processes as they
    were at the last event handled; a pid reused later replaces its old record only then.
    """

    def __init__(self, max_processes: int = 65536, max_age: float = 600.0):
        self.max_processes = max_processes
        self.max_age = max_age
        self.records: OrderedDict[int, ProcessRecord] = OrderedDict()
        self.exited: deque[tuple[float, ProcessRecord]] = deque()
        self.last_prune = 0.0
        self.to_capture: list[ProcessRecord] = []     # exec'd since the last capture_execs()
        self.captures = 0           # /proc reads made, ever (stats)
        self.execs = 0              # exec events seen, ever (stats: the node's exec rate)

    def __len__(self) -> int:
        return len(self.records)

    def get(self, pid: int) -> ProcessRecord | None:
        return self.records.get(pid)

    def forked(self, ts: float, parent: int, child: int, comm: str, parent_comm: str | None = None) -> None:
        if parent_comm is not None and parent not in self.records:
            # started before the trace: the fork event still names it
            self.records[parent] = ProcessRecord(pid=parent, ppid=None, comm=parent_comm, start=None)
        self.records.pop(child, None)       # a reused pid: the old record is history now
        self.records[child] = ProcessRecord(pid=child, ppid=parent, comm=comm, start=ts)
        while len(self.records) > self.max_processes:
            self.records.popitem(last=False)
        self.prune(ts)

    def execed(self, ts: float, pid: int, filename: str, comm: str | None) -> None:
        r = self.records.get(pid)
        if r is None:                       # forked before the trace started
            r = self.records[pid] = ProcessRecord(pid=pid, ppid=None, comm=comm or "", start=None)
        self.execs += 1
        r.filename = filename
        # the kernel names an exec'd process after its file (first 15 bytes of its basename)
        r.comm = comm if comm and comm != "<...>" else filename.rpartition("/")[2][:15]
        r.captured = r.cmdline = r.uid = r.unit = None     # a new program: read again
        self.to_capture.append(r)

    def exited_at(self, ts: float, pid: int, comm: str) -> None:
        r = self.records.get(pid)
        if r is None:
            r = self.records[pid] = ProcessRecord(pid=pid, ppid=None, comm=comm, start=None)
        r.comm = comm
        r.exit = ts
        self.exited.append((ts, r))

    def capture_execs(self, budget_s: float = CAPTURE_BUDGET_S) -> None:
        """Read argv, uid and unit from /proc for the processes exec'd since the last call
        (the caller has read all the trace it could first, so an exit seen there needs no
        syscall: `captured` False at once). A process whose exit is not in the trace is
        matched by its start time, so a pid reused meanwhile is never read as it. Past
        `budget_s` (a storm of long-lived execs, a starved CPU), the rest wait for the
        next call."""
        pending, self.to_capture = self.to_capture, []
        deadline = time.monotonic() + budget_s
        for i, r in enumerate(pending):
            if r.captured is not None or self.records.get(r.pid) is not r:
                continue        # exec'd again (that exec is pending too) or replaced by a reuse
            if r.exit is not None:
                r.captured = False
                continue
            if time.monotonic() > deadline:
                self.defer(pending[i:])
                return
            self.captures += 1
            facts = read_exec_facts(r.pid, r.start)
            if facts is None:
                r.captured = False
            else:
                r.cmdline, r.uid, r.unit = facts
                r.captured = True

    def defer(self, rest: list[ProcessRecord]) -> None:
        waiting = rest + self.to_capture
        for r in waiting[:-CAPTURES_WAITING_MAX]:
            if r.captured is None:
                r.captured = False
        self.to_capture = waiting[-CAPTURES_WAITING_MAX:]

    def prune(self, now: float) -> None:
        if now - self.last_prune < PRUNE_EVERY_S:
            return
        self.last_prune = now
        while self.exited and self.exited[0][0] < now - self.max_age:
            _, r = self.exited.popleft()
            if self.records.get(r.pid) is r:
                del self.records[r.pid]


def read_exec_facts(pid: int, start: float | None) -> tuple[tuple[str, ...], int | None, str | None] | None:
    """(argv, uid, unit) of `pid` now, or None when it is gone, a zombie (no argv), or
    started at another time than `start` (trace clock; None: not checked). Raw os.open
    reads: a buffered open() costs four times as much, and this runs for every program
    that outlives its exec's read."""
    base = f"/proc/{pid}"
    if start is not None:
        stat = _read(f"{base}/stat")
        ticks = start_ticks_from_stat(stat.decode("utf-8", "replace")) if stat else None
        if ticks is None or abs(ticks / CLOCK_TICKS - start) > START_MATCH_S:
            return None
    raw = _read(f"{base}/cmdline")
    if not raw:
        return None
    try:
        uid: int | None = os.stat(base).st_uid
    except OSError:
        return None
    argv = tuple(a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0"))
    cgroup = _read(f"{base}/cgroup")
    return argv, uid, _unit_of(cgroup) if cgroup else None


@functools.lru_cache(maxsize=256)
def _unit_of(cgroup: bytes) -> str | None:
    """Parsed once per distinct /proc/PID/cgroup text: a node runs in few cgroups."""
    unit = parse_cgroup_unit(cgroup.decode("utf-8", "replace"))
    return unit.name if unit is not None else None


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, ARGV_MAX_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)


# --- naming a sender ------------------------------------------------------------------------

def _boot_to_epoch(ts: float) -> float:
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + ts


def _live_match(pid: int, record: ProcessRecord | None, ts: float) -> bool:
    """Is the process now at `pid` the one the trace knew at time `ts`?"""
    ticks = proc_start_ticks(pid)
    if ticks is None:
        return False
    started = ticks / CLOCK_TICKS
    if record is not None and record.start is not None:
        return abs(started - record.start) <= START_MATCH_S and record.exit is None
    return started <= ts + START_MATCH_S and (record is None or record.exit is None)


SENDER_REUSE_S = 1.0
SENDER_REUSE_MAX = 256


class Namer:
    """Sender identities from the history, /proc where the process still lives."""

    def __init__(self, history: ProcessHistory):
        self.history = history
        self.lost = 0               # events the kernel dropped (buffer overrun), ever
        # (pid, its record's start, code) -> (trace time, identity): a signal storm's sender
        # is read from /proc once per SENDER_REUSE_S, not once per signal (issue 13)
        self.recent: dict[tuple[int, float | None, bool, str | None], tuple[float, dict[str, Any]]] = {}

    def name(self, pid: int, ts: float, task: str, code: str | None) -> dict[str, Any]:
        record = self.history.get(pid)
        key = (pid, record.start if record is not None else None, record is None, code)
        hit = self.recent.get(key)
        if hit is not None and 0 <= ts - hit[0] < SENDER_REUSE_S:
            return dict(hit[1])                 # callers add fields to what they get
        out = self.name_record(pid, record, ts, task, code)
        if len(self.recent) >= SENDER_REUSE_MAX:
            self.recent.clear()
        self.recent[key] = (ts, dict(out))
        return out

    def name_record(self, pid: int, record: ProcessRecord | None, ts: float, task: str,
                    code: str | None) -> dict[str, Any]:
        """`record` is what the history held for `pid` at time `ts` (records are replaced,
        not rewritten, when a pid is reused: one kept since then still names that process)."""
        if _live_match(pid, record, ts):
            identity = ProcessIdentity.capture(pid, code_hint=code, seen_boottime=ts)
            if identity.comm is not None:
                out = identity.to_dict()
                if out["exe"] is None and record is not None:
                    out["exe"] = record.filename
                out["seen_by"] = "procfs"
                return out
        comm = record.comm if record is not None else (None if task == "<...>" else task)
        ancestry, complete = self.ancestry(record.ppid if record else None, record.start if record else ts)
        note = GONE_NOTE if complete or not self.lost else f"{GONE_NOTE}; {OVERRUN_NOTE}"
        identity = ProcessIdentity(pid=pid, comm=comm, exe=record.filename if record else None,
                                   cmdline=record.cmdline if record else None,
                                   uid=record.uid if record else None,
                                   user=user_name(record.uid) if record and record.uid is not None else None,
                                   start_time=_boot_to_epoch(record.start) if record and record.start else None,
                                   ppid=record.ppid if record else None, alive=False, note=note, code=code)
        out = identity.to_dict()
        out["ancestry"] = ancestry
        out["unit"] = (record.unit if record else None) or next((a["unit"] for a in ancestry if a.get("unit")), None)
        out["captured"] = record.captured if record else None
        out["seen_by"] = "tracefs"
        return out

    def ancestry(self, ppid: int | None, child_start: float | None) -> tuple[list[dict[str, Any]], bool]:
        """Parents from the history while they are there, then from /proc (a live ancestor
        names the rest of the chain itself). False when the chain broke early."""
        chain: list[dict[str, Any]] = []
        seen: set[int] = set()
        pid = ppid
        while pid and pid not in seen and len(chain) < MAX_ANCESTRY:
            seen.add(pid)
            r = self.history.get(pid)
            if r is not None and r.start is not None and child_start is not None and r.start > child_start:
                r = None            # reused after our process was born: not its parent
            if _live_match(pid, r, child_start if child_start is not None else time.clock_gettime(time.CLOCK_BOOTTIME)):
                live = ProcessIdentity.capture(pid)
                if live.comm is not None:
                    chain.append({"pid": pid, "comm": live.comm, "cmdline": list(live.cmdline or ()),
                                  "exe": live.exe, "unit": live.unit, "alive": live.alive})
                    chain.extend(a.to_dict() for a in live.ancestry)
                    return chain, True
            if r is None:
                return chain, False
            chain.append({"pid": pid, "comm": r.comm, "cmdline": list(r.cmdline or ()), "exe": r.filename,
                          "unit": r.unit, "alive": False, "captured": r.captured})
            if r.ppid is None:
                return chain, pid == 1      # known only by name: its own parent is unknown
            pid, child_start = r.ppid, r.start
        return chain, True


def lineage_text(sender: dict[str, Any], width: int = 3) -> str:
    identity = ProcessIdentity.from_dict(sender)
    parts = [dataclasses.replace(identity, note=None).describe() if not identity.alive else identity.describe()]
    for a in (sender.get("ancestry") or [])[:width]:
        command = " ".join(a.get("cmdline") or []) or a.get("exe") or a.get("comm") or "?"
        parts.append(f"pid {a['pid']} {command}")
    return " <- ".join(parts)
