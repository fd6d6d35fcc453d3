"""Start-up: the ground this supervisor claims (abstract names, locks), what a crashed
predecessor left running (recorded in its program locks; `ChildNotes` records ours), and
taking it over: adopt what a kind verifies (Redis, without downtime), stop the
predecessor's other processes."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterable
from typing import Protocol

from relayq_supervisor.config import Config
from relayq_supervisor.core.arbiter import Arbiter
from relayq_supervisor.core.children import AdoptedProcess
from relayq_supervisor.core.collaborators import Audit
from relayq_supervisor.core.containment import Containment
from relayq_supervisor.core.graph import Graph
from relayq_supervisor.core.locks import OwnerLocks, answer_rival, program_key, program_lock_path
from relayq_supervisor.core.program import Program
from relayq_supervisor.linux.procfs import proc_start_ticks
from relayq_supervisor.linux.siginfo import signal_name

log = logging.getLogger(__package__)     # "relayq_supervisor.node": its lines read "node: ..." as before the split

Orphan = tuple[Program, int]        # a crashed predecessor's process of a program, still running


def claim_ground(locks: OwnerLocks, config: Config, loop: asyncio.AbstractEventLoop) -> None:
    """The names no deleted directory can free (a second supervisor on this config or
    run_dir is refused here), our directories, then the supervisor's lock."""
    sup = config.supervisor
    lock_path = os.path.join(sup.run_dir, "supervisor.lock")
    for what, path in (("run_dir", sup.run_dir), ("config", config.path)):
        claimed = locks.claim(what, path, lock_path)
        loop.add_reader(claimed.fileno(), answer_rival, claimed)
    for d in (sup.run_dir, sup.log_dir, os.path.dirname(sup.audit_log), os.path.dirname(sup.control_socket)):
        os.makedirs(d, exist_ok=True)
    # the record names the socket: relayqctl finds it there when the config on disk is broken
    locks.take("supervisor", lock_path, sup.run_dir, keep={"control_socket": sup.control_socket})


def take_program_locks(locks: OwnerLocks, config: Config, graph: Graph[Program], orphans: list[Orphan]) -> None:
    """Each program's lock, reading first which of its processes a crashed predecessor
    recorded there and are still running (same pid, same start time): added to `orphans`
    as found, and kept in our record until stopped (a refused start must not erase the
    trail to them)."""
    run_dir = config.supervisor.run_dir
    for spec in config.programs:
        previous = locks.read(program_lock_path(run_dir, spec.name)) or {}
        recorded = previous["children"] if isinstance(previous.get("children"), dict) else {}
        alive = {name: rec for name, rec in recorded.items()
                 if isinstance(rec, dict) and isinstance(rec.get("pid"), int) and rec["pid"] > 0
                 and proc_start_ticks(rec["pid"]) == rec.get("start_ticks")}
        locks.take_program(spec.name, run_dir, keep={"children": alive} if alive else None)
        orphans += [(p, alive[p.name]["pid"]) for p in graph.instances(spec.name) if p.name in alive]


class ChildNotes:
    """Each program's lock names its running processes (pid, start ticks): where a successor
    looks for them after a crash of this supervisor (take_program_locks). One rewrite of a
    program's lock per loop pass, however many of its instances started in it (a boot of
    1000 instances would otherwise rewrite it 1000 times)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, locks: OwnerLocks,
                 instances: Callable[[str], Iterable[Program]]):
        self.loop = loop
        self.locks = locks
        self.instances = instances
        self.due: set[str] = set()

    def started(self, p: Program) -> None:
        if not self.due:
            self.loop.call_soon(self.write)
        self.due.add(p.base)

    def write(self) -> None:
        due, self.due = self.due, set()
        for base in due:
            self.locks.note(program_key(base), children={q.name: {"pid": q.pid, "start_ticks": proc_start_ticks(q.pid)}
                                                         for q in self.instances(base) if q.pid})


class Seizing(Protocol):
    """What adoption needs of the witnesses (node/witnessing.py's Witnessing)."""

    def seize_running(self, pid: int) -> bool: ...

    def follow_children(self, also: int | None = None) -> None: ...

    def catch_up(self) -> None: ...

    def forget(self, pid: int) -> None: ...


class Adoption:
    def __init__(self, loop: asyncio.AbstractEventLoop, arbiter: Arbiter, containment: Containment,
                 witnesses: Seizing, audit: Audit, reap: Callable[[], None]):
        self.loop = loop
        self.arbiter = arbiter
        self.containment = containment
        self.witnesses = witnesses
        self.audit = audit
        self.reap = reap

    async def take_over(self, orphans: list[Orphan]) -> None:
        """After a crash of the previous supervisor: adopt what its kinds verify (Redis,
        without downtime); stop its other programs' processes, whose output pipes died
        with it, so that exactly one set runs once ours start."""
        for name, kind in self.arbiter.kinds.items():
            found = await kind.adoptable()
            if found is not None:
                self.adopt(self.arbiter.graph.instances(name)[0], found.pid, found.verified)
        # all at once: one after the other, N workers that each take their stop_timeout would
        # hold back the start of every program N times as long
        await asyncio.gather(*(self.stop_orphan(p, pid) for p, pid in orphans
                               if p.proc is None or p.pid != pid))

    def adopt(self, p: Program, pid: int, verified: tuple[str, ...]) -> None:
        pidfd = os.pidfd_open(pid)
        proc = AdoptedProcess(pid, pidfd, self.containment, self.containment.adopted_run(pid))
        # seized whether protected or not: only its tracer's waitpid() sees an adopted
        # process' exit status (rare: after a crash, so its cost does not matter)
        traced = self.witnesses.seize_running(pid)
        self.loop.add_reader(pidfd, self.on_adopted_exit, proc)
        self.audit("adopted", program=p.name, pid=pid, verified=list(verified), traced=traced)
        self.arbiter.adopt(p, proc, f"adopted pid {pid} from the previous supervisor")
        self.witnesses.follow_children()      # the kernel witness names its signals, traced or not
        if not traced:
            log.warning("%s: adopted pid %d is not traced: signals to it are not attributed, and its exit "
                        "status will not be visible", p.name, pid)

    def on_adopted_exit(self, proc: AdoptedProcess) -> None:
        if proc.pidfd is not None:
            self.loop.remove_reader(proc.pidfd)
        self.reap()                 # traced: the tap's waitpid has its real status
        owner = self.arbiter.by_pid.get(proc.pid)
        if owner is not None and owner.proc is proc:
            self.witnesses.catch_up()     # untraced: reap() had no exit to read it for
            self.arbiter.child_exited(proc.pid, None)
        self.witnesses.forget(proc.pid)

    async def stop_orphan(self, p: Program, pid: int) -> None:
        """Stop a predecessor's process of p: its stop signal, stop_timeout, then SIGKILL to
        its process group. Not our child: its exit shows only as its pidfd turning readable."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return
        gone = asyncio.Event()
        self.loop.add_reader(pidfd, gone.set)
        run = self.containment.adopted_run(pid)     # its cgroup: what it forked goes with it
        how = signal_name(p.spec.stop_signal)
        try:
            signal.pidfd_send_signal(pidfd, p.spec.stop_signal)
            try:
                await asyncio.wait_for(gone.wait(), p.spec.stop_timeout)
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                how += f", SIGKILL after stop_timeout {p.spec.stop_timeout:g}s"
                await asyncio.wait_for(gone.wait(), 5.0)
        except (TimeoutError, OSError):
            how = "already gone"
        finally:
            self.loop.remove_reader(pidfd)
            os.close(pidfd)
            if run is not None:
                self.containment.end_run(run)
        self.audit("orphan_stopped", program=p.name, pid=pid, how=how)
        log.warning("%s: stopped pid %d, left running by the previous supervisor (%s); starting a fresh one",
                    p.name, pid, how)
