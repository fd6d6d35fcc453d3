"""The kernel witness: who sent each signal to a supervised program, from the kernel's own
tracepoints, even when the sender lived for two milliseconds.

`KernelWitness` is the supervisor's tracefs instance (trace_instance.py: signal_generate
and oom's mark_victim filtered to the supervised pids, sched_process_fork/exec/exit for
all, inet_sock_set_state on the watched ports), read: on the loop, non-blocking, a bounded
stretch per wake-up, its lines (trace_lines.py) handled in the kernel's time order, so the
process history (history.py) is exactly as it was when each signal was sent and a pid
reused later is never blamed. trace_clock is `boot`, the clock /proc start times use, so
a live process is matched to its history by start time. Client connections (clients.py,
connections.py) name who connected from an address, even once gone.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from relayq_supervisor.linux.siginfo import code_name
from relayq_supervisor.witness.clients import (  # noqa: F401 (CATCH_UP_READS: node/witnessing's)
    CATCH_UP_READS,
    CLIENT_LATE_SLACK_S,
    CLIENT_TIME_SLACK_S,
    REMOTE_CLOCK_SLACK_S,
    ClientConnections,
    ClientRecord,
    client_filter_expression,
)
from relayq_supervisor.witness.history import Namer, ProcessHistory, _boot_to_epoch
from relayq_supervisor.witness.trace_instance import TraceInstance
from relayq_supervisor.witness.trace_lines import (
    _EXEC,
    _EXIT,
    _FORK,
    _TRACE_LINES,
    RESULT_ALREADY_PENDING,
    SI_KERNEL,
    KernelSignal,
    Lost,
    OomVictim,
    SignalGenerated,
    parse_line,
    parse_oom,
    parse_signal,
    parse_sock,
)

if TYPE_CHECKING:
    from relayq_supervisor.witness.connections import NetnsGate, OwnConnections

log = logging.getLogger(__name__)

READ_SIZE = 1 << 16
# A trace_pipe read returns one page of text (~8 KiB, ~60 lines) whatever the size asked:
# up to 256 reads a wake-up (8 held a busy node to ~2,500 lines/s, below 1000 execs/s)...
READS_PER_WAKEUP = 256
# ...but the loop's reader stops after this much and reads on in the next loop pass, after
# what else is ready (a status request, an exit, the tap). Under a storm the kill loops take
# the CPU and a stretch costs ~3x its CPU time on the wall: 2 ms stretches answered status
# within ~10-70 ms where 10 ms ones took ~100 ms (BENCHMARKS.md: signal storm).
READ_BUDGET_S = 0.002
LOST_LOG_EVERY_S = 60.0


class KernelWitness(TraceInstance):
    """Our tracefs instance (trace_instance.py), read: its lines handled in the kernel's
    order, signals to the supervised pids handed to `on_signal`, the process history and
    the client connections kept, and what they know answered."""

    def __init__(self, on_signal: Callable[[KernelSignal], None],
                 on_oom: Callable[[OomVictim], None] | None = None, *,
                 max_processes: int = 65536, max_age: float = 600.0, root: str | None = None,
                 private_mount: str | None = None):
        super().__init__(root, private_mount)
        self.on_signal = on_signal
        self.on_oom = on_oom
        self.history = ProcessHistory(max_processes, max_age)
        self.namer = Namer(self.history)
        self.partial = b""
        # merges read but not yet handed on: (target, sender, signo, code) as the trace
        # printed them -> [count, first's ts, its task, the sender's record then] (feed())
        self.merges: dict[tuple[str, int, str, str], list[Any]] = {}
        self.lines = 0
        self.reads = 0                  # drains that found something (stats: wake-ups that read)
        self.read_ts = 0.0              # the last line's time (trace clock: boot)
        self.caught_up_to = 0.0         # boot clock when the last drain that emptied the pipe began
        self.signals = 0
        self.lost_logged_at = 0.0
        self.lost_unlogged = 0
        # each LOST line's count, as it is read (attribution marks the storms it hid)
        self.on_lost: Callable[[int], None] | None = None
        self.clients = ClientConnections(max_age=max_age)
        self.client_port: int | None = None
        # this node's own connections to a remote Redis (witness/connections.py), and the
        # judge of whether a socket event is of our network namespace (the tracepoint is global)
        self.connections: OwnConnections | None = None
        self.gate: NetnsGate | None = None
        # "a client connection to the watched port closed" (not our own): a prompt to read ACL LOG
        self.on_client_closed: Callable[[], None] | None = None

    def watch_clients(self, port: int) -> bool:
        """Trace TCP connections to `port` (Redis'): who connected from each client address,
        and when each closed. False (logged) where the kernel has no such event."""
        if self.instance is None:
            return False
        self.client_port = port
        if not self._trace_sockets(port, *(self.connections.ports if self.connections else ())):
            self.client_port = None
            return False
        return True

    def watch_connections(self, destinations: Iterable[tuple[str, int]]) -> bool:
        """Also trace this node's own connections to `destinations` (the cluster's Redis,
        remote: ip, port), for `who_held`. False (logged) where the kernel cannot."""
        from relayq_supervisor.witness.connections import OwnConnections
        if self.instance is None:
            return False
        own = OwnConnections(destinations, self.netns_gate(), max_age=self.history.max_age)
        ports = (self.client_port,) if self.client_port is not None else ()
        if not own.ports or not self._trace_sockets(*ports, *own.ports):
            return False
        self.connections = own
        return True

    def netns_gate(self) -> NetnsGate:
        from relayq_supervisor.witness.connections import NetnsGate
        if self.gate is None:
            self.gate = NetnsGate()
        return self.gate

    def _trace_sockets(self, *ports: int) -> bool:
        if not self.trace_sockets(client_filter_expression(*ports, server=self.client_port), ports):
            return False
        self.netns_gate()
        return True

    def who_held(self, addr: str, port: int, at: float | None = None) -> dict[str, Any] | None:
        """The local process that held source `addr`:`port` in a connection to a watched
        remote destination at `at` (epoch; None: the latest), as an identity with its
        `connection`; None when the trace never saw one then."""
        if self.connections is None:
            return None
        self.drain(CATCH_UP_READS)
        r = self.connections.get(addr, port)
        if r is None:
            return None
        # `at` comes from another host's clock: REMOTE_CLOCK_SLACK_S either way (a port reused
        # sooner is no risk: the newer connection's record has replaced the older one)
        if at is not None and not r.held_at(at - _boot_to_epoch(0.0), REMOTE_CLOCK_SLACK_S,
                                            CLIENT_LATE_SLACK_S + REMOTE_CLOCK_SLACK_S):
            return None
        ts = r.connected if r.connected is not None else (r.closed or 0.0)
        out = self.namer.name_record(r.pid, r.process, ts, r.task, None)
        out["connection"] = {"addr": f"{r.ip}:{r.port}" if ":" not in r.ip else f"[{r.ip}]:{r.port}",
                             "to": f"{r.dest[0]}:{r.dest[1]}",
                             "connected": _boot_to_epoch(r.connected) if r.connected is not None else None,
                             "closed": _boot_to_epoch(r.closed) if r.closed is not None else None,
                             "joined": r.joined}
        return out

    def client_of(self, addr: str, at: float | None = None) -> dict[str, Any] | None:
        """The process that connected from `addr` (a Redis client address) as an identity
        (`seen_by` procfs while it lives, tracefs once gone), with when it connected and
        closed; None when the trace never saw that connection, or (`at`: when the client
        was seen, epoch) when the connection it saw was not open then: an earlier user of
        the same port must never answer for a later one the trace could not name."""
        if self.client_port is None:
            return None
        # a connection of the last moments may still be in the buffer, behind a busy node's
        # backlog (a read gives ~8 KiB, the loop's wake-ups read 64 KiB): catch up, bounded
        self.drain(CATCH_UP_READS)
        r = self.clients.get(addr)
        if r is None:
            return None
        if at is not None:
            seen = at - _boot_to_epoch(0.0)
            closed_before = r.closed is not None and r.closed < seen - CLIENT_LATE_SLACK_S
            if r.connected > seen + CLIENT_TIME_SLACK_S or closed_before:
                return None
        return self.describe_client(r)

    def clients_closed_between(self, start_epoch: float, end_epoch: float) -> list[dict[str, Any]]:
        """Every traced client whose connection closed in that wall-clock window, oldest first."""
        if self.client_port is None:
            return []
        self.drain(CATCH_UP_READS)
        offset = _boot_to_epoch(0.0)
        return [self.describe_client(r)
                for r in self.clients.closed_between(start_epoch - offset, end_epoch - offset)]

    def describe_client(self, r: ClientRecord) -> dict[str, Any]:
        out = self.namer.name_record(r.pid, r.process, r.connected, r.task, None)
        out["connection"] = {"addr": f"{r.ip}:{r.port}", "connected": _boot_to_epoch(r.connected),
                             "closed": _boot_to_epoch(r.closed) if r.closed is not None else None}
        return out

    # --- reading --------------------------------------------------------------------------

    def drain(self, reads: int = READS_PER_WAKEUP, budget_s: float | None = None, capture: bool = True) -> bool:
        """Read what the kernel has (the loop's reader callback, and before exits are
        judged, so the signal that caused one is known). Never blocks. True when it stopped
        with more to read (the reads or the time budget spent). capture=False leaves the
        /proc reads of the processes exec'd meanwhile to a later call (`capture_execs`): an
        exit's restart must not wait for them."""
        if self.fd is None:
            return False
        more = got = False
        began = time.clock_gettime(time.CLOCK_BOOTTIME)
        deadline = time.monotonic() + budget_s if budget_s is not None else None
        for _ in range(reads):
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                log.error("kernel witness: reading the trace failed (%s); stopped", e.strerror)
                self.unavailable = f"trace read failed: {e.strerror}"
                if self.merges:
                    self.flush_merges()
                return False
            if not data:
                break
            if not got:
                got = True
                self.reads += 1
            self.feed(data, flush=False)
            if deadline is not None and time.monotonic() > deadline:
                more = True
                break
        else:
            more = True
        if not more:
            self.caught_up_to = began       # all the kernel had written before this drain is read
        if self.merges:
            self.flush_merges()
        if capture:
            self.history.capture_execs()
        return more

    def capture_execs(self) -> None:
        self.history.capture_execs()

    def read_position(self) -> float:
        """Up to when (boot clock) the trace is known to be read: its last line's time, or
        the start of the last read that found the pipe empty."""
        return max(self.read_ts, self.caught_up_to)

    def feed(self, data: bytes, flush: bool = True) -> None:
        """Handle the complete lines of `data` (a partial last line waits for the next read).
        A storm's merges (res already-pending: thousands a second, each only counted) are
        folded by (target, sender, signal, code), never each made an object, and handed on
        when a line of the same target and sender that is not a merge comes, or at the end
        (`flush`; drain() folds across all its reads, then flushes)."""
        data = self.partial + data
        cut = data.rfind(b"\n") + 1
        self.partial = data[cut:]
        history = self.history
        self_pid = self.self_pid
        merges = self.merges
        stamp = None                    # the last line's time, as printed
        for m in _TRACE_LINES.finditer(data[:cut].decode("utf-8", "replace")):
            task, tid, tgid, ts, parent_comm, parent_tid, comm, child, filename, pid, exit_comm, exit_pid, dead, \
                sig, err, code, target_comm, target, grp, res, other = m.groups()
            if sig is not None:
                self.lines += 1
                stamp = ts
                sender = int(tgid) if tgid[0] != "-" else int(tid)
                if res == "2" and sig != "9" and code != "128" and sender and sender != self_pid:
                    # RESULT_ALREADY_PENDING, not SIGKILL nor SI_KERNEL: named (if ever) from
                    # what the history held at the first of them, as signal_seen would
                    key = (target, sender, sig, code)
                    fold = merges.get(key)
                    if fold is None:
                        merges[key] = [1, ts, task, history.get(sender)]
                    else:
                        fold[0] += 1
                    continue
                if merges:
                    self.flush_merges(target, sender)   # theirs came first
                self.signal_seen(SignalGenerated(
                    ts=float(ts), sender_tid=int(tid), sender_tgid=int(tgid) if tgid[0] != "-" else None,
                    sender_task=task, signo=int(sig), errno=int(err), code=int(code), target_comm=target_comm,
                    target_pid=int(target), group=grp != "0", result=int(res)))
                continue
            if other is not None:
                if merges:
                    self.flush_merges()
                self.handle(other)
                continue
            self.lines += 1
            stamp = ts
            if child is not None:
                # the parent as a process (its tgid), not the thread that forked
                parent = int(tgid) if tgid[0] != "-" else int(parent_tid)
                history.forked(float(ts), parent, int(child), comm, parent_comm)
            elif pid is not None:
                history.execed(float(ts), int(pid), filename, None)
            elif dead != "false":               # a thread's end is not its process' end
                history.exited_at(float(ts), int(exit_pid), exit_comm)
        if stamp is not None:
            self.read_ts = max(self.read_ts, float(stamp))
        if flush and merges:
            self.flush_merges()

    def flush_merges(self, target: str | None = None, sender: int | None = None) -> None:
        """Each fold of merges (only those to `target` from `sender` when given) as one
        KernelSignal with its count."""
        if target is None:
            folds = list(self.merges.items())
            self.merges.clear()             # in place: feed() holds it
        else:
            folds = [(k, self.merges.pop(k)) for k in [k for k in self.merges if k[0] == target and k[1] == sender]]
        for (to, pid, sig, code), (count, ts, task, record) in folds:
            self.signals += count
            signo, code_no, at = int(sig), int(code), float(ts)
            self.on_signal(KernelSignal(
                ts=at, signo=signo, code=code_no, target_pid=int(to), result=RESULT_ALREADY_PENDING,
                sender_pid=pid, sender=None, count=count,
                name_later=functools.partial(self.namer.name_record, pid, record, at, task, code_name(signo, code_no))))

    def handle(self, line: str) -> None:
        """Any line but the history's three events with a (TGID) column (feed() has those)."""
        parsed = parse_line(line)
        if parsed is None:
            return
        self.lines += 1
        if isinstance(parsed, Lost):
            self.overrun(parsed.count)
            return
        self.read_ts = max(self.read_ts, parsed.ts)
        event, body = parsed.event, parsed.body
        if event == "sched_process_fork":
            m = _FORK.match(body)
            if m:
                # the parent as a process (its tgid), not the thread that forked
                parent = parsed.tgid if parsed.tgid is not None else int(m.group(2))
                self.history.forked(parsed.ts, parent, int(m.group(4)), m.group(3), m.group(1))
        elif event == "sched_process_exec":
            m = _EXEC.match(body)
            if m:
                self.history.execed(parsed.ts, int(m.group(2)), m.group(1), None)
        elif event == "sched_process_exit":
            m = _EXIT.match(body)
            if m and m.group(4) != "false":     # a thread's end is not its process' end
                self.history.exited_at(parsed.ts, int(m.group(2)), m.group(1))
        elif event == "signal_generate":
            seen = parse_signal(parsed)
            if seen is not None:
                self.signal_seen(seen)
        elif event == "inet_sock_set_state":
            st = parse_sock(parsed)
            if st is None:
                return
            if self.connections is not None and self.connections.wants(st):
                self.connections.seen(st, self.history)
            elif st.sport == self.client_port and st.newstate == "TCP_CLOSE_WAIT":
                # our Redis' side of a client's close: the only line a remote client leaves here
                if self.on_client_closed is not None:
                    self.on_client_closed()
            elif st.dport == self.client_port:
                if st.newstate == "TCP_SYN_SENT" and self.gate is not None and not self.gate.ours(st, self.history):
                    return          # another network namespace's client (a container, a test's other host)
                closed = self.clients.seen(st, self.history)
                if closed is not None and closed.pid != self.self_pid and self.on_client_closed is not None:
                    self.on_client_closed()
        elif event == "mark_victim":
            victim = parse_oom(parsed)
            if victim is not None and self.on_oom is not None:
                self.on_oom(victim)

    def signal_seen(self, s: SignalGenerated) -> None:
        if s.sender_pid == self.self_pid or (s.sender_tgid is None and s.sender_tid == self.self_pid):
            return      # the supervisor records its own signals when it sends them
        self.signals += 1
        code = code_name(s.signo, s.code)
        if s.result == RESULT_ALREADY_PENDING and s.signo != signal.SIGKILL and s.code != SI_KERNEL and s.sender_pid != 0:
            # a storm's merges: thousands a second, each only counted (attribution.on_kernel_signal)
            pid, record, ts, task = s.sender_pid, self.history.get(s.sender_pid), s.ts, s.sender_task
            self.on_signal(KernelSignal(ts=s.ts, signo=s.signo, code=s.code, target_pid=s.target_pid, result=s.result,
                                        sender_pid=pid, sender=None,
                                        name_later=lambda: self.namer.name_record(pid, record, ts, task, code)))
            return
        self.history.capture_execs()
        if s.code == SI_KERNEL:
            # the running task is whoever the kernel interrupted, not a sender: never blamed
            seen = KernelSignal(ts=s.ts, signo=s.signo, code=s.code, target_pid=s.target_pid, result=s.result,
                                sender_pid=None, sender=None, context=f"{s.sender_task}-{s.sender_tid}")
        else:
            seen = KernelSignal(ts=s.ts, signo=s.signo, code=s.code, target_pid=s.target_pid, result=s.result,
                                sender_pid=s.sender_pid,
                                sender=self.namer.name(s.sender_pid, s.ts, s.sender_task, code))
        self.on_signal(seen)

    def overrun(self, count: int) -> None:
        self.namer.lost += count
        self.lost_unlogged += count
        if self.on_lost is not None:
            self.on_lost(count)
        now = time.monotonic()
        if now - self.lost_logged_at >= LOST_LOG_EVERY_S:
            log.warning("kernel witness: the kernel dropped %d trace events (buffer overrun); "
                        "senders' lineage may be incomplete", self.lost_unlogged)
            self.lost_logged_at, self.lost_unlogged = now, 0

    def stats(self) -> dict[str, Any]:
        return {"state": self.state, "instance": self.instance, "processes_known": len(self.history),
                "buffer_kb": self.buffer_kb * (os.cpu_count() or 1),
                "execs": self.history.execs, "exec_captures": self.history.captures, "reads": self.reads,
                "lines": self.lines, "signals": self.signals, "lost": self.namer.lost,
                "clients_known": len(self.clients), "client_connects": self.clients.connects,
                "client_closes": self.clients.closes, "clients_unnamed": self.clients.unclaimed,
                "own_connections": len(self.connections) if self.connections is not None else None,
                "other_netns_events": self.gate.foreign if self.gate is not None else 0,
                "watched": sorted(self.watched)}


