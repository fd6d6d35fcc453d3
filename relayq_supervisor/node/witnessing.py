"""The signal tap and the kernel witness on the loop: which children the tap seizes, which
pids the kernel trace follows, its pipe read in batches, and what status says of both.

What they learn is judged by witness/attribution.py; this module only wires them to the
loop and to the supervised pids."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from relayq_supervisor.config import SupervisorSpec
from relayq_supervisor.core.collaborators import Audit
from relayq_supervisor.core.program import Program
from relayq_supervisor.errors import StartupError
from relayq_supervisor.linux.procfs import thread_group
from relayq_supervisor.witness.attribution import Attribution
from relayq_supervisor.witness.tap import SignalTap
from relayq_supervisor.witness.tracefs import READ_BUDGET_S, KernelWitness

log = logging.getLogger(__package__)     # "relayq_supervisor.node": its lines read "node: ..." as before the split

# The trace pipe wakes its poller at the first event whatever `buffer_percent` says (the
# kernel's trace_poll passes it on, but ring_buffer_poll_wait ignores it for trace_pipe, a
# reader of all CPUs: "full only makes sense on per cpu reads"; tried on 6.18: one exec
# woke a poller at buffer_percent 50). So the loop batches by itself: the first event after
# a quiet spell wakes it, the pipe is read `[supervisor] kernel_trace_read_delay` later
# (0.05 s: a process' fork, exec and exit in one read, and any exec'd meanwhile that has
# exited needs no /proc read), and while events keep coming it is read once a delay,
# without listening, until a read finds they have stopped. Nothing happens: no wake-up at
# all. The delay is also how long an exec'd program must live to be named with its argv,
# uid and unit (a check script that ran 50 ms is); a longer one costs fewer wake-ups on a
# node that execs all the time (BENCHMARKS.md: idle cost). Exits, tap stops and whois
# questions read the pipe up to now themselves (catch_up*, read_soon, KernelWitness.client_of).


class TracedClients:
    """The kinds' view of the kernel witness's Redis clients (kinds.ClientWitness), naming
    our own programs in each identity."""

    def __init__(self, witness: KernelWitness, attribution: Attribution):
        self.witness = witness
        self.attribution = attribution

    def client_of(self, addr: str, at: float | None = None) -> dict[str, Any] | None:
        return self.attribution.name_traced(self.witness.client_of(addr, at))

    def clients_closed_between(self, start: float, end: float) -> list[dict[str, Any]]:
        return [self.attribution.name_traced(c) or c for c in self.witness.clients_closed_between(start, end)]

    def on_client_closed(self, callback: Callable[[], None]) -> None:
        self.witness.on_client_closed = callback


class Witnessing:
    """The tap (`signal_tap`) and the kernel witness (`kernel_trace`), either or both off.

    `supervised_pids` reads the arbiter's live pids: the trace's filter follows them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, spec: SupervisorSpec, attribution: Attribution,
                 audit: Audit, supervised_pids: Callable[[], Iterable[int]]):
        self.loop = loop
        self.attribution = attribution
        self.audit = audit
        self.supervised_pids = supervised_pids
        self.tap = SignalTap(attribution.on_traced_signal) if spec.signal_tap else None
        self.kernel = KernelWitness(attribution.on_kernel_signal, attribution.on_oom_victim,
                                    private_mount=os.path.join(spec.run_dir, "tracefs")) \
            if spec.kernel_trace != "false" else None
        self.tapped: set[int] = set()       # pids the signal tap seized (traced(pid))
        self.closed = False                 # no fd may be registered again
        self.read_asked = False             # read_soon() scheduled a read
        self.read_delay = spec.kernel_trace_read_delay
        self.listening = False              # the trace pipe's fd is on the loop
        self.read_handle: asyncio.TimerHandle | None = None     # the next read, when scheduled

    @property
    def tap_active(self) -> bool:
        return self.tap is not None and not self.tap.unavailable

    @property
    def witness_watching(self) -> bool:
        return self.kernel is not None and self.kernel.fd is not None

    def clients(self) -> TracedClients | None:
        return TracedClients(self.kernel, self.attribution) if self.kernel is not None else None

    def traced(self, pid: int) -> bool:
        """Does the tap stop at signals to `pid` (a process, or a thread of one it seized)?"""
        if pid in self.tapped:
            return True
        tgid = thread_group(pid) if self.tapped else None
        return tgid is not None and tgid in self.tapped

    # --- the kernel witness ---------------------------------------------------------------

    def start(self, required: bool, redis_port: int | None) -> None:
        """Where the kernel allows (root, tracefs, the initial pid namespace); else the
        supervisor runs on without it and says why, once, or with `kernel_trace = true`
        (`required`) refuses to start (StartupError, before any child)."""
        w = self.kernel
        if w is None:
            return
        if not w.start() and required:
            raise StartupError(f"relayq-supervisor: kernel_trace = true, but the kernel trace is unavailable: "
                               f"{w.unavailable}; fix that, or set kernel_trace = \"auto\" to run without it")
        if w.fd is not None:
            # a tap record whose sender is gone waits until the trace is read up to its stop
            self.attribution.trace_position = lambda: w.read_position() if w.fd is not None else float("inf")
            self.attribution.read_trace_soon = self.read_soon
            w.on_lost = self.attribution.on_trace_lost
            self.listen_to_kernel_trace()
            log.info("kernel witness: tracing signals to children in %s", w.instance)
            if redis_port and w.watch_clients(redis_port):
                log.info("kernel witness: tracing client connections to Redis port %d", redis_port)
        else:
            log.warning("kernel trace: %s (signals are attributed by the tap alone)", w.state)
            self.audit("kernel_witness_unavailable", reason=w.unavailable)

    def on_kernel_trace_ready(self) -> None:
        """The first event after a quiet spell: stop listening, read after `read_delay`."""
        self.stop_listening()
        self.schedule_read(self.read_delay)

    def on_kernel_trace(self) -> None:
        """Read the trace pipe (a bounded stretch: a backlog is read on in the next loop
        pass, after what else is ready there, a status request, an exit), then: read again
        after `read_delay` while events keep coming (its newest line is recent), else wait
        for the next event."""
        w = self.kernel
        assert w is not None
        self.read_handle = None
        self.read_asked = False
        self.stop_listening()
        more = w.drain(budget_s=READ_BUDGET_S)
        self.attribution.trace_read()
        if w.fd is None or self.closed:
            return
        if w.unavailable:       # a read failed: say so in status
            w.close()
            self.audit("kernel_witness_unavailable", reason=w.unavailable)
            return
        if more:
            self.schedule_read(0)
        elif w.read_ts > time.clock_gettime(time.CLOCK_BOOTTIME) - self.read_delay / 2:
            self.schedule_read(self.read_delay)    # still flowing: one wake-up a period
        else:
            self.listen_to_kernel_trace()

    def schedule_read(self, delay: float) -> None:
        if self.read_handle is not None:
            self.read_handle.cancel()
        self.read_handle = self.loop.call_later(delay, self.on_kernel_trace)

    def read_soon(self) -> None:
        """The trace's next read on the next loop pass, not after the coalescing delay."""
        if not self.read_asked:
            self.read_asked = True
            self.schedule_read(0)

    def listen_to_kernel_trace(self) -> None:
        w = self.kernel
        if w is not None and w.fd is not None and not self.closed and not self.listening:
            self.loop.add_reader(w.fileno(), self.on_kernel_trace_ready)
            self.listening = True

    def stop_listening(self) -> None:
        if self.listening and self.kernel is not None and self.kernel.fd is not None:
            self.loop.remove_reader(self.kernel.fileno())
        self.listening = False

    def catch_up(self) -> None:
        """Read the trace's backlog now (before an exit is handled: its signal came first)."""
        if self.kernel is not None:
            self.kernel.drain()
            self.attribution.trace_read()

    def catch_up_before_exit(self) -> None:
        """The backlog before an exit is handled, without the /proc reads of new execs:
        those wait until after the restart (the next loop pass)."""
        if self.kernel is not None:
            self.kernel.drain(capture=False)
            self.attribution.trace_read()         # tap records that waited for it, before the exit
            self.loop.call_soon(self.kernel.capture_execs)     # after the restart

    def follow_children(self, also: int | None = None) -> None:
        """The kernel witness's filter follows the supervised pids (a restarted child too)."""
        if self.kernel is not None and self.kernel.instance is not None:
            pids = set(self.supervised_pids())
            if also is not None:
                pids.add(also)
            self.kernel.watch(pids)

    def who_held(self, ip: str, port: int, at: float | None) -> dict[str, Any] | None:
        assert self.kernel is not None
        return self.attribution.name_traced(self.kernel.who_held(ip, port, at))

    def watch_connections(self, destinations: list[tuple[str, int]]) -> bool:
        """Record this node's connections to these addresses (the cluster's Redis)."""
        w = self.kernel
        return w is not None and w.instance is not None and w.watch_connections(destinations)

    # --- the tap ------------------------------------------------------------------------

    def before_exec(self, pid: int, p: Program) -> None:
        """While the child waits at spawn's exec gate: the kernel witness starts watching it
        (before the program runs, so no signal is missed) and the signal tap seizes it where
        it is needed. With the witness watching, that is only where a signal must be blocked
        (`protect = true`): the witness names every sender without stopping anyone, while a
        traced program stops at every signal, each SIGCHLD of a fork-per-job worker
        included, until the loop resumes it (BENCHMARKS.md: fork-per-job worker)."""
        self.follow_children(also=pid)
        if self.tap is None or self.tap.unavailable:
            return
        if self.witness_watching and not p.protected:
            return
        if self.tap.attach(pid):
            self.tapped.add(pid)
        else:
            log.warning("signal tap: %s (signals to children are not attributed)", self.tap.state)
            self.audit("tap_unavailable", reason=self.tap.unavailable)

    def seize_running(self, pid: int) -> bool:
        """Seize a process we did not start (an adopted one); False where the tap is off."""
        traced = self.tap.attach_running(pid) if self.tap_active and self.tap is not None else False
        if traced:
            self.tapped.add(pid)
        return traced

    def tap_stop(self, pid: int, status: int) -> bool:
        """A waitpid() result: True if it was a tap stop (the tap answered it), not an exit."""
        return self.tap is not None and self.tap.handle(pid, status) is None

    def forget(self, pid: int) -> None:
        self.tapped.discard(pid)

    # --- status and the end -----------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "signal_tap": self.tap.state if self.tap is not None else "off (signal_tap = false)",
            "signal_tap_stats": {"signal_stops": self.tap.signal_stops, "recorded": dict(self.attribution.traced)}
            if self.tap is not None else None,
            "kernel_trace": self.kernel.state if self.kernel is not None else "off (kernel_trace = false)",
            "kernel_trace_stats": self.kernel.stats() if self.kernel is not None else None,
        }

    def notes(self) -> list[str]:
        notes = []
        if self.tap is not None and self.tap.unavailable:
            notes.append(f"signal tap: {self.tap.state}")
        if self.kernel is not None and self.kernel.unavailable:
            notes.append(f"kernel trace: {self.kernel.state}")
        return notes

    def close(self) -> None:
        if self.kernel is not None:
            self.stop_listening()
            self.closed = True
            if self.read_handle is not None:
                self.read_handle.cancel()
                self.read_handle = None
            self.kernel.close()
