"""The arbiter's watchdog decisions: arm a run's watchdog from READY (or a first ping),
feed it, retime it, check it at its due time and read RSS every max_rss_interval, and
fire (keep the evidence, watchdog_signal, SIGKILL after stop_timeout). The timing rules
themselves are pure, in core/watchdog.py, which Program holds.

Decisions only, like the arbiter: timers from the Clock, /proc readings from the Probe,
the signal sent through the stop escalation's `send` (core/stopping.py).
"""
from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

from relayq_supervisor.core.collaborators import Audit, Clock, Probe, Witness
from relayq_supervisor.core.program import ChildHandle, Program
from relayq_supervisor.core.states import State
from relayq_supervisor.core.watchdog import Watchdog
from relayq_supervisor.kinds import ProgramKind
from relayq_supervisor.linux.siginfo import signal_name

# the arbiter's: its lines read "core.arbiter: ..." as before the split
log = logging.getLogger("relayq_supervisor.core.arbiter")


def evidence_summary(evidence: dict[str, Any]) -> str:
    parts = [f"{k} {evidence[k]}" for k in ("state", "wchan") if evidence.get(k) not in (None, "", "0")]
    return ", ".join(parts)


class Watching:
    def __init__(self, kind_of: Callable[[Program], ProgramKind], *, clock: Clock, audit: Audit,
                 witness: Witness, probe: Probe | None, send: Callable[[Program, int, str], None]):
        self.kind_of = kind_of          # the arbiter's kinds, which a reload replaces
        self.clock = clock
        self.audit = audit
        self.witness = witness
        self.probe = probe
        self.send = send

    def arm(self, p: Program, proc: ChildHandle) -> None:
        """From READY (or a first ping): silence over watchdog_sec, or RSS over max_rss, fires."""
        spec = p.spec
        if not spec.watched or p.watchdog is not None:
            return
        kind = self.kind_of(p)
        p.arm_watchdog(Watchdog(spec.watchdog_sec, kind.sign_of_life, self.clock.monotonic()))
        if spec.watchdog_sec > 0:
            p.watch(self.clock.call_later(spec.watchdog_sec, self.check, p, proc))
            p.watch(kind.watch(p, lambda: self.sign_of_life(p, proc)))
        if spec.max_rss > 0:
            p.watch(self.clock.call_later(spec.max_rss_interval, self.check_rss, p, proc))

    def sign_of_life(self, p: Program, proc: ChildHandle) -> None:
        if p.proc is proc and p.watchdog is not None:
            p.watchdog.fed(self.clock.monotonic())

    def retime(self, p: Program, proc: ChildHandle, usec: str) -> None:
        """WATCHDOG_USEC= from the program: its own new timeout, as under systemd."""
        try:
            timeout = int(usec) / 1e6
        except ValueError:
            log.warning("%s: ignoring WATCHDOG_USEC=%r (not a number)", p.name, usec[:40])
            return
        if p.watchdog is not None and timeout > 0:
            p.watchdog.timeout = timeout
            p.watch(self.clock.call_later(max(0.0, p.watchdog.due_at() - self.clock.monotonic()),
                                          self.check, p, proc))

    def check(self, p: Program, proc: ChildHandle) -> None:
        """At the due time: fire if still silent, else come back at the new due time (pings
        only move a number, so the timer is re-armed here, once per due time)."""
        if p.proc is not proc or p.watchdog is None or p.fired:
            return
        now = self.clock.monotonic()
        cause = p.watchdog.overdue(now)
        if cause:
            self.fire(p, proc, cause)
        else:
            p.watch(self.clock.call_later(p.watchdog.due_at() - now, self.check, p, proc))

    def check_rss(self, p: Program, proc: ChildHandle) -> None:
        if p.proc is not proc or p.watchdog is None or p.fired or self.probe is None:
            return
        rss = self.probe.rss(proc.pid, proc.members())
        cause = p.watchdog.rss_reading(rss, p.spec.max_rss) if rss is not None else None
        if cause:
            self.fire(p, proc, cause)
        else:
            p.watch(self.clock.call_later(p.spec.max_rss_interval, self.check_rss, p, proc))

    def fire(self, p: Program, proc: ChildHandle, cause: str) -> None:
        """Keep the evidence, then watchdog_signal; SIGKILL after stop_timeout; the exit
        restarts it under its policy, counted as a failure."""
        evidence = self.probe.evidence(proc.pid) if self.probe is not None else {}
        summary = evidence_summary(evidence)
        if summary:
            cause = f"{cause} ({summary})"
        event = self.audit("watchdog", program=p.name, pid=proc.pid, cause=cause, evidence=evidence,
                           signal=signal_name(p.spec.watchdog_signal))
        p.remember(event)
        log.warning("%s: %s: %s to pid %d", p.name, cause, signal_name(p.spec.watchdog_signal), proc.pid)
        p.watchdog_fired(cause, self.clock.call_later(p.spec.stop_timeout, self.kill, p, proc))
        self.send(p, p.spec.watchdog_signal, cause)

    def kill(self, p: Program, proc: ChildHandle) -> None:
        if p.proc is not proc or p.state == State.STOPPING:
            return
        log.warning("%s: still alive %gs after its watchdog signal: SIGKILL to process group %d", p.name,
                    p.spec.stop_timeout, proc.pid)
        self.witness.record(p, proc.pid, signal.SIGKILL, action="delivered", reason="watchdog-kill")
        proc.kill_group()
