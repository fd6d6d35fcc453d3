"""The arbiter's stop escalation: a run is asked to exit by its kind (a signal, SHUTDOWN
SAVE), SIGKILLed after stop_timeout where its kind allows, never killed for a refused stop
(its final save failed: it keeps running until the stop is retried or forced).

Decisions only, like the arbiter: signals go through the run's ChildHandle, time is the
Clock's, each signal sent is recorded with the Witness.
"""
from __future__ import annotations

import logging
import signal
from collections.abc import Callable

from relayq_supervisor.core.collaborators import Audit, Clock, Witness
from relayq_supervisor.core.program import ChildHandle, Program
from relayq_supervisor.core.states import State
from relayq_supervisor.kinds import ProgramKind, StopCalls

# the arbiter's: its lines read "core.arbiter: ..." as before the split
log = logging.getLogger("relayq_supervisor.core.arbiter")


class Stopping:
    def __init__(self, kind_of: Callable[[Program], ProgramKind], *, clock: Clock, audit: Audit,
                 witness: Witness):
        self.kind_of = kind_of          # the arbiter's kinds, which a reload replaces
        self.clock = clock
        self.audit = audit
        self.witness = witness

    def begin(self, p: Program, reason: str, *, save: bool = True) -> None:
        """STARTING/RUNNING -> STOPPING: its kind asks it to exit (a signal, SHUTDOWN SAVE)."""
        assert p.proc is not None
        kind = self.kind_of(p)
        timer = self.clock.call_later(p.spec.stop_timeout, self.timed_out, p, p.proc)
        p.stopping(reason, kind.stop_method(save), timer)
        p.stop_began(kind.begin_stop(p, self.calls(p, p.proc, reason, save)))

    def calls(self, p: Program, proc: ChildHandle, reason: str, save: bool) -> StopCalls:
        def signal_it(signo: int) -> None:
            if p.proc is proc:
                self.send(p, signo, reason)

        def refused(cause: str) -> None:
            if p.proc is proc and p.state == State.STOPPING:
                self.refused(p, cause)
        return StopCalls(signal=signal_it, refused=refused, save=save)

    def refused(self, p: Program, cause: str) -> None:
        """Its stop failed (the final save): never kill it for that; it keeps running until
        the cause is fixed and the stop retried, or an operator forces it."""
        self.audit("stop_refused", program=p.name, pid=p.pid, cause=cause)
        p.cancel_timer()
        p.stop_blocked(cause, f"stop refused, it keeps running: {cause}; fix that, then `relayqctl stop "
                              f"{p.name}` tries again, or `relayqctl stop --force {p.name}` kills it without a save")

    def retry(self, p: Program, reason: str) -> None:
        assert p.proc is not None
        kind = self.kind_of(p)
        p.stop_retried(f"{reason}: {kind.stop_method(True)} to pid {p.pid} again")
        p.set_timer(self.clock.call_later(p.spec.stop_timeout, self.timed_out, p, p.proc))
        p.stop_began(kind.begin_stop(p, self.calls(p, p.proc, reason, True)))

    def kill(self, p: Program, reason: str) -> None:
        """SIGKILL to its process group now, without a save (`relayqctl stop --force`)."""
        assert p.proc is not None
        proc = p.proc
        if p.state != State.STOPPING:
            p.stopping(reason, "SIGKILL", None)
        log.warning("%s: %s: SIGKILL to process group %d (no save)", p.name, reason, proc.pid)
        self.witness.record(p, proc.pid, signal.SIGKILL, action="delivered", reason=reason)
        p.stop_escalated(f"SIGKILL by {reason}")
        proc.kill_group()

    def send(self, p: Program, signo: int, reason: str) -> None:
        assert p.proc is not None
        delivered = p.proc.send_signal(signo)
        self.witness.record(p, p.proc.pid, signo, action="delivered" if delivered else "not-delivered",
                            reason=reason)

    def timed_out(self, p: Program, proc: ChildHandle) -> None:
        if p.proc is not proc or p.state != State.STOPPING:
            return
        kind = self.kind_of(p)
        method = kind.stop_method(True)
        if not kind.kill_on_stop_timeout:
            # e.g. Redis writing a large dump: a SIGKILL would lose what it has not written yet
            log.warning("%s: not exited %gs after %s; still waiting (`relayqctl stop --force %s` kills it "
                        "without a save)", p.name, p.spec.stop_timeout, method, p.name)
            self.audit("stop_slow", program=p.name, pid=proc.pid, waited_s=p.spec.stop_timeout, method=method)
            p.timer = None
            return
        log.warning("%s: did not exit %gs after %s: SIGKILL to process group %d", p.name,
                    p.spec.stop_timeout, method, proc.pid)
        self.witness.record(p, proc.pid, signal.SIGKILL, action="delivered", reason="stop-timeout-kill")
        p.stop_escalated(f"SIGKILL after stop_timeout {p.spec.stop_timeout:g}s")
        proc.kill_group()      # not reaped yet: its pid (the group id) is still ours
