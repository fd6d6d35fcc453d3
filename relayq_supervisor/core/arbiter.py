"""The arbiter: the loop's decisions about programs. What is wanted against what is,
in dependency order: start what should run, decide about each exit under the restart
rules, stop in order, apply a reload.

It owns no fd and makes no syscall of its own: processes come from a Spawner, time
from a Clock, readiness and argv from each program's kind, attribution from the
witness (the Protocols in core/collaborators.py). The real ones are wired up in node/;
tests drive it with fakes. Its parts, decisions too: core/launching.py (a start's
process), core/watching.py (the watchdog), core/stopping.py (the stop escalation).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from relayq_supervisor.config.model import Config, ProgramSpec
from relayq_supervisor.core import launching, policy
from relayq_supervisor.core.collaborators import Audit, Clock, Probe, Spawner, Witness
from relayq_supervisor.core.graph import Graph
from relayq_supervisor.core.launching import Launch
from relayq_supervisor.core.program import ChildHandle, ExitInfo, Program
from relayq_supervisor.core.reload import Changes
from relayq_supervisor.core.states import ENDED, State
from relayq_supervisor.core.stopping import Stopping
from relayq_supervisor.core.watching import Watching
from relayq_supervisor.kinds import ProgramKind
from relayq_supervisor.linux.siginfo import signal_name
from relayq_supervisor.witness.attribution import attribute_exit

log = logging.getLogger(__name__)


class _NoCheck:
    def cancel(self) -> None:
        pass


_NO_CHECK = _NoCheck()


class Arbiter:
    def __init__(self, config: Config, kinds: dict[str, ProgramKind], *, spawner: Spawner, clock: Clock,
                 audit: Audit, witness: Witness, base_env: dict[str, str], probe: Probe | None = None,
                 on_change: Callable[[Program], None] | None = None,
                 remote_ready: Callable[[str], bool] | None = None):
        self.config = config
        self.kinds = kinds
        self.spawner = spawner
        self.clock = clock
        self.audit = audit
        self.witness = witness
        self.base_env = base_env        # the supervisor's environment as children get it
        self.stops = Stopping(self.kind_of, clock=clock, audit=audit, witness=witness)
        self.watchdogs = Watching(self.kind_of, clock=clock, audit=audit, witness=witness, probe=probe,
                                  send=self.stops.send)
        self.on_change = on_change
        # whether a dependency on another node (config.remote_dependencies) is met now
        self.remote_ready = remote_ready or (lambda name: False)
        self.by_pid: dict[int, Program] = {}
        self.shutting_down = False
        self.waiters: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        # the successor started before its predecessor's exit was judged (on_exit), for start()
        self.successor: tuple[Program, Launch] | None = None
        self.graph: Graph[Program] = Graph(config.programs, (self.new_program(spec, name)
                                                             for spec in config.programs
                                                             for name in spec.instance_names()))

    def kind_of(self, p: Program) -> ProgramKind:
        return self.kinds[p.base]

    def new_program(self, spec: ProgramSpec, name: str) -> Program:
        return Program(spec, name, clock=self.clock.monotonic, on_change=self.changed)

    @property
    def programs(self) -> list[Program]:
        return self.graph.order

    def program_of_pid(self, pid: int | None) -> Program | None:
        if pid is None:
            return None
        p = self.by_pid.get(pid)
        if p is not None:
            return p
        try:        # a helper process or thread of the child: same session
            return self.by_pid.get(os.getsid(pid))
        except OSError:
            return None

    # --- starting ------------------------------------------------------------------

    def reconcile(self, candidates: Iterable[Program] | None = None) -> None:
        """Start whatever should run and can (its dependencies are RUNNING). An event
        passes the instances it can have made startable, so its cost does not grow with
        the number of programs."""
        if self.shutting_down:
            return
        for p in self.programs if candidates is None else candidates:
            if not p.wanted or not (p.state == State.STOPPED or (p.state == State.BACKOFF and p.start_due)):
                continue
            waiting = self.waiting_for(p)
            if waiting:
                if p.note_waiting(f"waiting for {', '.join(waiting)}"):
                    log.info("%s: %s", p.name, p.reason)
                continue
            self.start(p)

    def waiting_for(self, p: Program) -> list[str]:
        """The dependencies p waits for (not RUNNING, or on another node and not ready)."""
        waiting = [d.name for d in self.graph.dependencies(p) if d.state != State.RUNNING]
        waiting += [f"{name} (remote)" for name in p.spec.depends_on
                    if name in self.config.remote_dependencies and not self.remote_ready(name)]
        return waiting

    def awaits_other_node(self, p: Program) -> bool:
        """p is held only by a dependency on another node that is not met (a worker-only node's
        `redis`): systemd's start-up does not wait for it (it may take as long as that node)."""
        return p.state == State.STOPPED and any(name in self.config.remote_dependencies and not self.remote_ready(name)
                                                for name in p.spec.depends_on)

    def launch(self, p: Program) -> Launch:
        """Make p's process (no state change, no audit: start() records it)."""
        launch = launching.launch(p, self.kinds, self.spawner, self.base_env)
        if launch.proc is not None:
            self.by_pid[launch.proc.pid] = p
        return launch

    def start(self, p: Program) -> None:
        """STOPPED/BACKOFF -> STARTING, on a process launched now or just before its
        predecessor's exit was judged (on_exit)."""
        if self.successor is not None and self.successor[0] is p:
            launch, self.successor = self.successor[1], None
        else:
            launch = self.launch(p)
        if launch.proc is None:
            self.give_up(p, launch.refusal or "cannot start")
            return
        proc = launch.proc
        kind = self.kinds[p.base]
        self.audit("spawn", program=p.name, pid=proc.pid, argv=launch.argv)
        p.started(proc, kind.begin_ready_check(p, lambda why: self.mark_running(p, proc, why),
                                               lambda why: self.refuse_started(p, proc, why)))

    def mark_running(self, p: Program, proc: ChildHandle, why: str) -> None:
        if p.proc is not proc or p.state != State.STARTING:
            return
        p.ready(why)
        self.watchdogs.arm(p, proc)
        self.reconcile(self.graph.dependents(p))

    def refuse_started(self, p: Program, proc: ChildHandle, why: str) -> None:
        """Its process runs but must not be used (Redis did not take a persistence setting):
        stop it without writing its data, then FATAL with this reason."""
        if p.proc is not proc or p.state != State.STARTING:
            return
        log.error("%s: refused: %s", p.name, why)
        self.audit("refused", program=p.name, pid=proc.pid, reason=why)
        p.refused(why)
        self.begin_stop(p, f"refused: {why}", save=False)

    def notified(self, pid: int | None, fields: dict[str, str]) -> None:
        """sd_notify from a child: READY=1 makes it RUNNING, STATUS= is shown."""
        p = self.program_of_pid(pid)
        if p is None or p.proc is None:
            return
        proc = p.proc
        if fields.get("WATCHDOG") == "1" and p.spec.watchdog_sec > 0:
            if p.watchdog is None:          # a ping before READY arms it from that ping
                self.watchdogs.arm(p, proc)
            self.watchdogs.sign_of_life(p, proc)
        if "WATCHDOG_USEC" in fields and p.watchdog is not None:
            self.watchdogs.retime(p, proc, fields["WATCHDOG_USEC"])
        if fields.get("READY") == "1" and self.kinds[p.base].ready_by_notify:
            self.mark_running(p, proc, "sent READY=1")
        if "STATUS" in fields:
            p.set_notify_status(fields["STATUS"])
        if fields.get("WATCHDOG") == "trigger" and p.state in (State.STARTING, State.RUNNING) and not p.fired:
            self.watchdogs.fire(p, proc, "watchdog: WATCHDOG=trigger from the program")

    # --- exits and restarts ------------------------------------------------------------

    def adopt(self, p: Program, proc: ChildHandle, why: str) -> None:
        """A process of p that a crashed predecessor started, verified by its kind: p is
        RUNNING on it at once, no restart."""
        self.by_pid[proc.pid] = p
        p.started(proc, _NO_CHECK, why)
        p.ready(why)
        self.watchdogs.arm(p, proc)

    def child_exited(self, pid: int, status: int | None) -> bool:
        """A reaped process (status None: an adopted one whose status we cannot see):
        False if it was not one of ours."""
        p = self.by_pid.get(pid)
        if p is None or p.proc is None or p.proc.pid != pid:
            self.by_pid.pop(pid, None)
            return False
        proc = p.proc
        left = proc.descendants()
        if proc.kill_group():
            # as systemd does for a service's cgroup: nothing it left behind survives it, a
            # daemon that left the process group with setsid() included (core/containment.py)
            log.info("%s: killed what pid %d left behind (its process group and other descendants)", p.name, pid)
            if left:
                self.audit("leftovers_killed", program=p.name, pid=pid, pids=left[:100], count=len(left))
        try:
            self.on_exit(p, status)
        finally:
            # kept until its exit was judged: the trace's late lines about it name p (unless its
            # successor got the same pid back)
            if self.by_pid.get(pid) is p and (p.proc is None or p.proc.pid != pid):
                del self.by_pid[pid]
        return True

    def on_exit(self, p: Program, status: int | None) -> None:
        """Decide, start the successor of a run that restarts at once, then judge the exit
        (who caused it: the witnesses' backlog is read first), record it, and enter the
        states in their order (BACKOFF, then STARTING on the successor). The successor is
        started before the judging because reading the kernel trace's backlog and naming a
        sender (its /proc files and ancestry) took milliseconds of every restart."""
        assert p.proc is not None
        pid = p.proc.pid
        runtime = self.clock.monotonic() - (p.started_at or self.clock.monotonic())
        info = ExitInfo.from_wait_status(status, runtime)
        exec_error = p.proc.exec_error()
        stopping = p.state == State.STOPPING
        failed = p.fired is not None
        ending = stopping or not p.wanted or self.shutting_down
        decision = None if ending else p.tracker.on_exit(runtime, info.code, info.signal, failed=failed)
        if decision is not None and decision.action == policy.RESTART and not self.waiting_for(p):
            self.successor = (p, self.launch(p))
        try:
            self.judge_exit(p, pid, info, runtime, exec_error, stopping, ending, decision)
        finally:
            if self.successor is not None:      # start() did not take it (not expected): it must not run
                q, launch = self.successor
                self.successor = None
                if launch.proc is not None:
                    log.error("%s: pid %d started for a restart that did not happen: killed", q.name, launch.proc.pid)
                    self.by_pid.pop(launch.proc.pid, None)
                    launch.proc.kill_group()
                    launch.proc.close()

    def judge_exit(self, p: Program, pid: int, info: ExitInfo, runtime: float, exec_error: str | None,
                   stopping: bool, ending: bool, decision: policy.Decision | None) -> None:
        assert p.proc is not None
        self.witness.catch_up()
        sender = None
        if exec_error:
            log.error("%s: %s", p.name, exec_error)
            info = info.with_detail(exec_error)
        elif stopping and p.stop_reason:
            info = info.with_detail(p.stop_reason)
        elif p.fired:
            info = info.with_detail(p.fired)
        elif not stopping:
            detail, sender = attribute_exit(p.last_signal, info.signal, self.witness.traced(pid))
            if detail:
                info = info.with_detail(detail)
        event = self.audit("exit", program=p.name, pid=pid, code=info.code,
                           signal=signal_name(info.signal) if info.signal else None,
                           runtime_s=round(runtime, 3), sender=sender, note=info.detail)
        p.run_ended(info, sender, event)
        if ending:
            p.stopped(info.describe())
            if p.refused_start and not self.shutting_down:
                self.give_up(p, p.refused_start)
            return
        assert decision is not None
        what = f"pid {pid} {info.describe()} after {runtime:.1f}s"
        if decision.action == policy.FATAL:
            self.give_up(p, f"{decision.reason} (last: {what})")
        elif decision.action == policy.EXIT:
            p.ended(f"{what}; {decision.reason}")
        elif decision.action == policy.BACKOFF:
            timer = self.clock.call_later(decision.delay, self.backoff_over, p)
            p.backing_off(f"{what}; {decision.reason}", decision.delay, timer)
            self.audit("backoff", program=p.name, delay_s=round(decision.delay, 3), streak=decision.streak,
                       **({"flapping": True} if decision.flapping else {}))
            if decision.flapping:       # no start limit will stop it: say so every time
                log.error("%s: flapping, %d failed runs in a row, next start in %.1fs (no start limit; "
                          "`relayqctl why %s` shows the last exit)", p.name, decision.streak, decision.delay, p.base)
        else:
            p.backing_off(f"{what}; {decision.reason}", None, None)
        self.reconcile([p])

    def backoff_over(self, p: Program) -> None:
        if p.backoff_over():
            self.reconcile([p])

    def give_up(self, p: Program, reason: str) -> None:
        p.gave_up(reason)
        self.audit("gave_up", program=p.name, reason=reason)

    # --- stopping ------------------------------------------------------------------------

    async def stop(self, p: Program, reason: str, *, force: bool = False, until_refused: bool = False) -> None:
        """Stop one instance and wait until it has exited. force: SIGKILL now, no save.
        until_refused: return also when its stop is refused (its final save failed) and it
        keeps running (an operator's stop reports that; a shutdown waits for the exit)."""
        if p.proc is None:
            if p.state in (State.BACKOFF, *ENDED):
                p.stopped(reason)
            return
        if force:
            self.stops.kill(p, reason)
        elif p.state != State.STOPPING:
            self.begin_stop(p, reason)
        elif p.stop_refused is not None:
            self.stops.retry(p, reason)
        proc = p.proc
        await self.wait_until(lambda: True if p.proc is not proc or (until_refused and p.stop_refused) else None)

    def begin_stop(self, p: Program, reason: str, *, save: bool = True) -> None:
        """STARTING/RUNNING -> STOPPING (core/stopping.py: asked, then escalated)."""
        self.stops.begin(p, reason, save=save)

    async def stop_in_order(self, targets: Iterable[Program], reason: str, *, force: bool = False,
                            until_refused: bool = False) -> None:
        """Stop `targets`, dependents before what they depend on. until_refused: a refused stop
        ends it there (what the refusing program depends on keeps running)."""
        for layer in self.graph.stop_layers(targets):
            await asyncio.gather(*(self.stop(p, reason, force=force, until_refused=until_refused) for p in layer))
            if any(p.proc is not None for p in layer):
                return

    async def shutdown(self) -> None:
        """Stop everything in order; nothing starts any more."""
        self.shutting_down = True
        for p in self.programs:
            p.want(False)
        await self.stop_in_order(self.programs, "supervisor shutdown")
        for p in self.programs:
            self.spawner.release(p)

    # --- operators ---------------------------------------------------------------------

    def want_started(self, targets: Iterable[Program], who: str) -> None:
        """Start them and what they depend on; an operator start forgets the failure
        streak and start window, and revives FATAL and EXITED programs."""
        for p in self.graph.with_dependencies(targets):
            if p.state in (State.RUNNING, State.STARTING) and p.wanted:
                continue
            p.revive(who)
            log.info("%s: start requested (%s)", p.name, who)
        self.reconcile()

    async def want_stopped(self, targets: list[Program], who: str, *, force: bool = False) -> None:
        """Returns once they have exited, or one's stop was refused (it keeps running)."""
        for p in targets:
            p.want(False)
        await self.stop_in_order(targets, who, force=force, until_refused=True)

    def changed(self, p: Program) -> None:
        """After every transition: wake whoever waits for an outcome, tell the listener."""
        if self.on_change is not None:
            self.on_change(p)
        still = []
        for check, fut in self.waiters:
            if fut.done():
                continue
            outcome = check()
            if outcome is not None:
                fut.set_result(outcome)
            else:
                still.append((check, fut))
        self.waiters = still

    async def wait_until(self, check: Callable[[], Any]) -> Any:
        """Wait until check() returns something other than None, re-checked after every transition."""
        outcome = check()
        if outcome is not None:
            return outcome
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters.append((check, fut))
        return await fut

    # --- reload -----------------------------------------------------------------------------

    async def apply(self, new: Config, changes: Changes, kinds: dict[str, ProgramKind]) -> None:
        """Stop what changed or went, then run the new configuration. `new`'s [supervisor]
        is not applied: it stays as it runs until a restart."""
        going_names = changes.going(self.config, new)
        going = [p for p in self.programs if p.name in going_names]
        await self.stop_in_order(going, "reload")
        for p in going:
            self.spawner.release(p)
        programs = []
        for spec in new.programs:
            for name in spec.instance_names():
                kept = self.graph.by_name.get(name)
                p = self.new_program(spec, name) if kept is None or name in going_names else kept
                p.respec(spec)
                programs.append(p)
        self.config = dataclasses.replace(new, supervisor=self.config.supervisor)
        self.kinds = kinds
        self.graph = Graph(self.config.programs, programs)
        self.reconcile()

    def status(self) -> list[dict[str, Any]]:
        return [p.status() for p in self.programs]
