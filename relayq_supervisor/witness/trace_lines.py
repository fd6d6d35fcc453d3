"""The kernel's trace_pipe lines, parsed: the header every line has, and the bodies of the
events the witness enables (signal_generate, sched_process_*, inet_sock_set_state, oom's
mark_victim). Pure text to data; the witness (tracefs.py) and its connection records
(clients.py, connections.py) read these."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from relayq_supervisor.linux.siginfo import code_name, signal_name

# signal_generate's `res` (enum in include/trace/events/signal.h)
RESULTS = {0: "delivered", 1: "ignored", 2: "already-pending", 3: "queue-overflow", 4: "delivered-without-info"}
RESULT_DELIVERED = 0
RESULT_ALREADY_PENDING = 2
SI_KERNEL = 0x80

# --- trace_pipe lines ------------------------------------------------------------------

# The history's three events and signal_generate, nearly every line on a busy node or in a
# signal storm, matched with the whole read in one finditer pass (a fraction of the general
# path's cost per line: bench/witness_cost.py, bench/storm_lines.py); any other line
# (another event, no (TGID) column without record-tgid, LOST) is the last group and takes
# the general path below. Possessive quantifiers: no backtracking in the header; lazy
# fields, the line's end anchoring the last one. A comm cannot fake a header: it has 15
# bytes, `: sched_process_` is 16. Groups: task, tid, tgid, ts; fork (4), exec (2), exit
# (3); signal_generate (7); the other line.
_TRACE_LINES = re.compile(
    r"^(?: *+(\S.*?)-(\d++) ++\( *+(\d++|-++)\) \[\d++\] \S++ ++(\d++\.\d++): (?:sched_process_(?:"
    r"fork: comm=(.*?) pid=(\d++) child_comm=(.*?) child_pid=(\d++)"
    r"|exec: filename=(.*?) pid=(\d++) old_pid=\d++"
    r"|exit: comm=(.*?) pid=(\d++) prio=-?\d++(?: group_dead=(\w++))?)"
    r"|signal_generate: sig=(\d++) errno=(-?\d++) code=(-?\d++) comm=(.*?) pid=(\d++) grp=(\d++) res=(\d++))"
    r"|(.+))$", re.MULTILINE)

# `  sh-30529  (  30529) [001] d..1.  1651.658289: signal_generate: sig=18 ...`; the
# (TGID) column is there with the record-tgid option, `(-------)` when unknown.
_HEADER = re.compile(r"^\s*(?P<task>.+?)-(?P<tid>\d+)\s+(?:\(\s*(?P<tgid>\d+|-+)\)\s+)?\[\d+\]\s+(?P<flags>\S+)\s+"
                     r"(?P<ts>\d+\.\d+):\s(?P<event>\w+):\s(?P<body>.*)$")
_LOST = re.compile(r"^CPU:(\d+) \[LOST (\d+) EVENTS\]")
# comm fields may hold spaces: each body is matched whole, anchored at both ends
_SIGNAL = re.compile(r"^sig=(\d+) errno=(-?\d+) code=(-?\d+) comm=(.*) pid=(\d+) grp=(\d+) res=(\d+)$")
_FORK = re.compile(r"^comm=(.*) pid=(\d+) child_comm=(.*) child_pid=(\d+)$")
_EXEC = re.compile(r"^filename=(.*) pid=(\d+) old_pid=(\d+)$")
_EXIT = re.compile(r"^comm=(.*) pid=(\d+) prio=(-?\d+)(?: group_dead=(\w+))?$")
# inet_sock_set_state's print fmt (the format file's; skaddr is a field but not printed)
_SOCK = re.compile(r"^family=(\w+) protocol=(\w+) sport=(\d+) dport=(\d+) saddr=(\S+) daddr=(\S+) "
                   r"saddrv6=(\S+) daddrv6=(\S+) oldstate=(\w+) newstate=(\w+)$")
_OOM = re.compile(r"^pid=(\d+)(?: comm=(.*) total-vm=(\d+)kB anon-rss=(\d+)kB.*)?$")


@dataclass(frozen=True, slots=True)
class TraceLine:
    task: str               # the current task's comm as the trace printed it (`<...>` if unknown)
    tid: int                # the current task (the sender of a signal)
    tgid: int | None
    ts: float               # trace_clock seconds (boot: CLOCK_BOOTTIME)
    event: str
    body: str
    flags: str = ""         # irqs-off/need-resched/hardirq-softirq/...: `..s2.` in a softirq


@dataclass(frozen=True, slots=True)
class Lost:
    cpu: int
    count: int


def parse_line(line: str) -> TraceLine | Lost | None:
    """One trace_pipe line; None for anything else."""
    m = _HEADER.match(line)
    if m is None:
        lost = _LOST.match(line)
        return Lost(int(lost.group(1)), int(lost.group(2))) if lost else None
    tgid = m.group("tgid")
    return TraceLine(task=m.group("task"), tid=int(m.group("tid")),
                     tgid=int(tgid) if tgid and tgid.isdigit() else None, ts=float(m.group("ts")),
                     event=m.group("event"), body=m.group("body"), flags=m.group("flags"))


@dataclass(frozen=True, slots=True)
class SignalGenerated:
    ts: float
    sender_tid: int
    sender_tgid: int | None
    sender_task: str
    signo: int
    errno: int
    code: int
    target_comm: str
    target_pid: int
    group: bool
    result: int

    @property
    def sender_pid(self) -> int:
        return self.sender_tgid if self.sender_tgid is not None else self.sender_tid


def parse_signal(t: TraceLine) -> SignalGenerated | None:
    m = _SIGNAL.match(t.body)
    if m is None:
        return None
    sig, err, code, comm, pid, grp, res = m.groups()
    return SignalGenerated(ts=t.ts, sender_tid=t.tid, sender_tgid=t.tgid, sender_task=t.task, signo=int(sig),
                           errno=int(err), code=int(code), target_comm=comm, target_pid=int(pid),
                           group=grp != "0", result=int(res))


@dataclass(frozen=True, slots=True)
class OomVictim:
    ts: float
    pid: int
    comm: str | None
    anon_rss_kb: int | None
    total_vm_kb: int | None

    def describe(self) -> str:
        if self.anon_rss_kb is None:
            return "the kernel's OOM killer"
        return f"the kernel's OOM killer (anon-rss {self.anon_rss_kb // 1024} MiB)"


def parse_oom(t: TraceLine) -> OomVictim | None:
    m = _OOM.match(t.body)
    if m is None:
        return None
    pid, comm, total_vm, anon = m.groups()
    return OomVictim(ts=t.ts, pid=int(pid), comm=comm, anon_rss_kb=int(anon) if anon else None,
                     total_vm_kb=int(total_vm) if total_vm else None)


@dataclass(frozen=True, slots=True)
class SockState:
    """One TCP state change of a socket, as inet_sock_set_state printed it."""
    ts: float
    tid: int
    tgid: int | None
    task: str
    softirq: bool           # in softirq: the task printed is whoever was interrupted
    sport: int
    dport: int
    saddr: str              # the IPv4 address, or the IPv6 one for AF_INET6
    daddr: str
    oldstate: str           # "TCP_SYN_SENT" ...
    newstate: str

    @property
    def pid(self) -> int:
        return self.tgid if self.tgid is not None else self.tid


def parse_sock(t: TraceLine) -> SockState | None:
    m = _SOCK.match(t.body)
    if m is None:
        return None
    family, protocol, sport, dport, saddr, daddr, saddr6, daddr6, old, new = m.groups()
    if protocol != "IPPROTO_TCP":
        return None
    if family == "AF_INET6":
        saddr, daddr = saddr6, daddr6
    return SockState(ts=t.ts, tid=t.tid, tgid=t.tgid, task=t.task, softirq=_in_softirq(t.flags), sport=int(sport),
                     dport=int(dport), saddr=saddr, daddr=daddr, oldstate=old, newstate=new)


def _in_softirq(flags: str) -> bool:
    # the third flag column: h hardirq, s softirq, H hardirq in softirq, '.' task context
    return len(flags) >= 3 and flags[2] in "shHzZ"


@dataclass(frozen=True)
class KernelSignal:
    """A signal to a supervised program, as the kernel traced it."""
    ts: float
    signo: int
    code: int
    target_pid: int
    result: int
    sender_pid: int | None          # None when the kernel itself sent it (SI_KERNEL)
    sender: dict[str, Any] | None
    context: str | None = None      # for SI_KERNEL: the task that was running, not a sender
    # a merge into a pending signal is only counted, its sender named only if its burst is
    # ever recorded: naming it later from what the history held at `ts`
    name_later: Callable[[], dict[str, Any]] | None = field(default=None, compare=False, repr=False)
    count: int = 1                  # merges folded into this one (same target, sender, signal, code)

    def sender_identity(self) -> dict[str, Any] | None:
        if self.sender is None and self.name_later is not None:
            return self.name_later()
        return self.sender

    @property
    def signal(self) -> str:
        return signal_name(self.signo)

    @property
    def code_name(self) -> str:
        return code_name(self.signo, self.code)

    @property
    def result_name(self) -> str:
        return RESULTS.get(self.result, f"result {self.result}")
