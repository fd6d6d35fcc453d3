"""One node's supervisor: the arbiter wired to the loop's event sources.

One thread, one asyncio loop. Every fd is registered on it: the signalfd (signals as
data: SIGCHLD triggers one reap pass, SIGTERM/SIGINT an ordered shutdown, SIGHUP a
reload), the children's notify socket, their output pipes (core/children.py), the
control socket (control/), inotify (ground.py), and the kinds' own tasks (Redis
health). State changes happen only in the arbiter; this module turns events into
calls on it and owns what lives as long as the process: locks, the audit log.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from relayq_supervisor import doctor, kinds
from relayq_supervisor.audit.log import RETRY_S as AUDIT_RETRY_S
from relayq_supervisor.audit.log import AuditLog, make_event
from relayq_supervisor.background import start_task
from relayq_supervisor.cluster.metrics import ClusterCollector
from relayq_supervisor.cluster.publisher import ClusterPublisher
from relayq_supervisor.cluster.whois_answer import Whois
from relayq_supervisor.config import Config, children_path, load_config
from relayq_supervisor.control.server import ControlServer
from relayq_supervisor.core import reload as reload_diff
from relayq_supervisor.core.arbiter import Arbiter
from relayq_supervisor.core.children import AdoptedProcess, ProcessSpawner
from relayq_supervisor.core.containment import Containment
from relayq_supervisor.core.locks import OwnerLocks, owner_key, program_key, program_lock_path
from relayq_supervisor.core.output import SupervisorLogFile
from relayq_supervisor.core.program import Program
from relayq_supervisor.core.states import State
from relayq_supervisor.errors import RelayqError, ReloadRefused, StartupError
from relayq_supervisor.ground import GroundWatch
from relayq_supervisor.kinds import Cancellable, KindContext, ProgramKind
from relayq_supervisor.kinds.redis import RedisKind
from relayq_supervisor.linux import prctl, ptrace
from relayq_supervisor.linux.journal import SOCKET_ENV
from relayq_supervisor.linux.notify_socket import ChildNotifySocket
from relayq_supervisor.linux.procfs import own_children, proc_start_ticks, thread_group
from relayq_supervisor.linux.siginfo import signal_name
from relayq_supervisor.linux.signalfd import SignalFd
from relayq_supervisor.metrics import SupervisorMetrics
from relayq_supervisor.systemd import ServiceLink
from relayq_supervisor.witness.attribution import Attribution
from relayq_supervisor.witness.evidence import Probe
from relayq_supervisor.witness.tap import SignalTap
from relayq_supervisor.witness.tracefs import CATCH_UP_READS, READ_BUDGET_S, KernelWitness

log = logging.getLogger(__name__)

# at most 20 trace reads a second on a busy node; a lone event waits this long, and an exit
# reads at most this much backlog before its restart (~0.6 ms of parsing at 1000 execs/s)
TRACE_READ_PAUSE_S = 0.05
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
# Variables that describe the supervisor's own place under systemd, not the children's.
_NOT_FOR_CHILDREN = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                     "LISTEN_PID", "LISTEN_FDNAMES", "JOURNAL_STREAM", "RELAYQ_CONFIG", SOCKET_ENV)


class LoopClock:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Cancellable:
        return self.loop.call_later(delay, callback, *args)


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


REAP_BATCH = 256        # waitpid() results per loop pass (a signal storm stops a tracee at each signal)


class Node:
    def __init__(self, config: Config, with_control: bool = True):
        self.config = config
        self.with_control = with_control
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.shutdown_requested = asyncio.Event()
        self.reaped = asyncio.Event()           # set whenever reap() collects a process
        self.audit_log: AuditLog | None = None
        self.shutdown_done = False          # closed: no fd may be registered again
        self._flush_scheduled = False
        self._notes_due: set[str] = set()
        self.loop = asyncio.get_running_loop()
        self.locks = OwnerLocks(config.path, lambda path, owner: self.audit("lock_conflict", path=path, owner=owner))
        self.attribution = Attribution(self, config.supervisor.audit_ignore, self.loop.call_later)
        self.tap = SignalTap(self.attribution.on_traced_signal) if config.supervisor.signal_tap else None
        self.kernel_witness = KernelWitness(self.attribution.on_kernel_signal, self.attribution.on_oom_victim,
                                            private_mount=os.path.join(config.supervisor.run_dir, "tracefs")) \
            if config.supervisor.kernel_trace != "false" else None
        self.service = ServiceLink(self)
        self.ground = GroundWatch(self)
        self.control: ControlServer | None = None
        self.sigfd: SignalFd | None = None
        self.notify_socket = ChildNotifySocket()
        clients = TracedClients(self.kernel_witness, self.attribution) \
            if self.kernel_witness is not None and config.redis is not None else None
        # [cluster]: the Redis node asks the node owning a denied client's address; every node answers
        self.whois = Whois(config, self.redis_admin, self.attribution.name_process,
                           self.who_held if self.kernel_witness is not None else None) \
            if config.cluster is not None else None
        self.kind_context = KindContext(supervisor=config.supervisor, call_later=self.loop.call_later,
                                        locks=self.locks, audit=self.audit, name_process=self.attribution.name_process,
                                        clients=clients, remote_clients=self.whois.asker if self.whois else None)
        base_env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_CHILDREN}
        base_env["PATH"] = children_path()
        base_env["NOTIFY_SOCKET"] = self.notify_socket.address
        # cgroups are made in prepare(), once the locks say this supervisor is the owner
        self.containment = Containment(None, owner_key(config.path), "not set up yet")
        self.spawner = ProcessSpawner(self.loop, config.supervisor, self.before_exec, self.containment)
        if config.cluster is not None and config.redis is None:     # a worker-only node: the cluster's Redis
            base_env["RELAYQ_REDIS_URL"] = config.cluster.redis_url
        self.arbiter = Arbiter(config, {spec.name: kinds.make_kind(spec, self.kind_context) for spec in config.programs},
                               spawner=self.spawner,
                               clock=LoopClock(self.loop), audit=self.audit, witness=self, base_env=base_env,
                               probe=Probe(), on_change=self.changed, remote_ready=self.remote_ready)
        # [cluster]: this node's status and audit events in the cluster's Redis
        self.cluster = ClusterPublisher(config, self.status, lambda: self.arbiter.programs, self.cluster_reachable) \
            if config.cluster is not None else None
        self.tapped: set[int] = set()       # pids the signal tap seized (traced(pid))
        self.orphans: list[tuple[Program, int]] = []   # a crashed predecessor's workers, still running
        # [supervisor] metrics_listen: read-only metrics on this loop (None: off, no lag probe either)
        self.metrics = SupervisorMetrics(lambda: self.arbiter.programs, self.loop, self.spawner.journal_counts) \
            if config.supervisor.metrics_listen is not None else None
        if self.cluster is not None and self.metrics is not None:
            self.metrics.registry.register(ClusterCollector(self.cluster))
        self.metrics_problem: str | None = None
        self.log_file: SupervisorLogFile | None = None     # log_dir/supervisor.log, for `relayqctl logs`

    # --- what collaborators see (witness, ground, control, systemd) -------------------

    @property
    def programs(self) -> list[Program]:
        return self.arbiter.programs

    @property
    def shutting_down(self) -> bool:
        return self.arbiter.shutting_down

    @property
    def tap_active(self) -> bool:
        return self.tap is not None and not self.tap.unavailable

    @property
    def witness_watching(self) -> bool:
        return self.kernel_witness is not None and self.kernel_witness.fd is not None

    def traced(self, pid: int) -> bool:
        """Does the tap stop at signals to `pid` (a process, or a thread of one it seized)?"""
        if pid in self.tapped:
            return True
        tgid = thread_group(pid) if self.tapped else None
        return tgid is not None and tgid in self.tapped

    def program_of_pid(self, pid: int | None) -> Program | None:
        return self.arbiter.program_of_pid(pid)

    def record(self, p: Program | None, pid: int, signo: int, **fields: Any) -> dict[str, Any]:
        return self.attribution.record(p, pid, signo, **fields)

    def count_blocked(self) -> None:
        self.service.count_blocked()

    @property
    def config_path(self) -> str:
        return self.config.path

    @property
    def doctor_root(self) -> str:
        return self.config.supervisor.doctor_root

    @property
    def control_socket_path(self) -> str:
        return self.config.supervisor.control_socket

    def changed(self, p: Program) -> None:
        """After every transition: tell systemd; note a new process where a successor
        would look for it after a crash of this supervisor."""
        self.service.publish()
        if self.cluster is not None:
            self.cluster.status_changed()
        if p.state == State.STARTING and p.pid is not None:
            # One rewrite of the program's lock per loop pass, however many instances started
            # in it (a boot of 1000 instances would otherwise rewrite it 1000 times).
            if not self._notes_due:
                self.loop.call_soon(self._note_children)
            self._notes_due.add(p.base)
            self.arbiter.kinds[p.base].record_running(p.pid)

    def _note_children(self) -> None:
        due, self._notes_due = self._notes_due, set()
        for base in due:
            self.locks.note(program_key(base), children={q.name: {"pid": q.pid, "start_ticks": proc_start_ticks(q.pid)}
                                                         for q in self.arbiter.graph.instances(base) if q.pid})

    def kept_files(self) -> list[str]:
        return [path for kind in self.arbiter.kinds.values() for path in kind.kept_files()]

    def restore_files(self, directory: str) -> None:
        """A kept file in `directory`, or `directory` itself, was deleted under us: the
        kinds write back what they keep there."""
        if directory != self.config.supervisor.run_dir:
            return
        for name, kind in self.arbiter.kinds.items():
            try:
                kind.restore_files()
            except (OSError, RelayqError, ValueError) as e:
                log.error("%s: cannot write its files in %s again (%s)", name, directory, e)

    def redis_admin(self) -> Any:
        """The Redis node's admin client (whois checks an answer's connection with CLIENT LIST)."""
        assert self.config.redis is not None
        kind = self.arbiter.kinds[self.config.redis.name]
        assert isinstance(kind, RedisKind)
        return kind.client()

    def who_held(self, ip: str, port: int, at: float | None) -> dict[str, Any] | None:
        assert self.kernel_witness is not None
        return self.attribution.name_traced(self.kernel_witness.who_held(ip, port, at))

    async def watch_cluster_connections(self) -> None:
        """A worker node's witness records its processes' connections to the cluster's Redis."""
        assert self.whois is not None
        w = self.kernel_witness
        destinations = await self.whois.remote_redis()
        if w is not None and w.instance is not None and destinations and w.watch_connections(destinations):
            log.info("kernel witness: recording connections to the cluster's Redis (%s)",
                     ", ".join(f"{ip}:{port}" for ip, port in destinations))

    def remote_ready(self, name: str) -> bool:
        """A dependency on another node (`redis` on a worker-only node) is met: its Redis answers."""
        return self.cluster is not None and self.cluster.reachable is True

    def awaits_other_node(self, p: Program) -> bool:
        return self.arbiter.awaits_other_node(p)

    def cluster_reachable(self, up: bool) -> None:
        """Programs waiting on the cluster's Redis may start; a lost Redis stops nothing (the
        workers reconnect by themselves): it is shown in status."""
        if up:
            self.arbiter.reconcile()

    def doctor_target(self) -> doctor.DoctorTarget:
        return doctor_target(self.config, {os.getpid(), *self.arbiter.by_pid})

    def audit(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Queue one audit event; the events of one loop pass are written and fsynced
        together at its end, after the work (a respawn) that produced them."""
        event = make_event(kind, **fields)
        if self.metrics is not None:
            self.metrics.count_event(event)
        if self.audit_log is not None:
            self.audit_log.queue(event)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush_audit)
        return event

    def _flush_audit(self) -> None:
        self._flush_scheduled = False
        if self.audit_log is None or self.audit_log.flush():
            return
        if self.metrics is not None:
            self.metrics.count_audit_write_error()
        # the disk refuses: one retry per AUDIT_RETRY_S (new events wait with the held ones),
        # not one failing write per loop pass
        self._flush_scheduled = True
        self.loop.call_later(AUDIT_RETRY_S, self._flush_audit)

    # --- start-up --------------------------------------------------------------------

    def prepare(self) -> None:
        """Everything that can refuse to start, before any child is started."""
        sup = self.config.supervisor
        # first: names no deleted directory can free (a second supervisor on this config or run_dir)
        lock_path = os.path.join(sup.run_dir, "supervisor.lock")
        for what, path in (("run_dir", sup.run_dir), ("config", self.config.path)):
            claimed = self.locks.claim(what, path, lock_path)
            self.loop.add_reader(claimed.fileno(), self.answer_claim, claimed)
        for d in (sup.run_dir, sup.log_dir, os.path.dirname(sup.audit_log), os.path.dirname(sup.control_socket)):
            os.makedirs(d, exist_ok=True)
        # the record names the socket: relayqctl finds it there when the config on disk is broken
        self.locks.take("supervisor", lock_path, sup.run_dir,
                        keep={"control_socket": sup.control_socket})
        # after the lock: a second supervisor refused here must not write into our log
        self.log_file = SupervisorLogFile(sup.log_dir, sup.log_max_bytes, sup.log_backups, __package__ or "")
        logging.getLogger(__package__).addHandler(self.log_file)
        self.audit_log = AuditLog(sup.audit_log, max_bytes=sup.audit_max_bytes, keep=sup.audit_backups,
                                  on_error=lambda msg: log.error("audit: %s", msg))
        if self.cluster is not None:
            self.audit_log.add_listener(self.cluster.audit_written)
        for spec in self.config.programs:
            previous = self.locks.read(program_lock_path(sup.run_dir, spec.name)) or {}
            recorded = previous["children"] if isinstance(previous.get("children"), dict) else {}
            alive = {name: rec for name, rec in recorded.items()
                     if isinstance(rec, dict) and isinstance(rec.get("pid"), int) and rec["pid"] > 0
                     and proc_start_ticks(rec["pid"]) == rec.get("start_ticks")}
            # kept in our record until stopped: a refused start must not erase the trail to them
            self.locks.take_program(spec.name, sup.run_dir, keep={"children": alive} if alive else None)
            self.orphans += [(p, alive[p.name]["pid"]) for p in self.arbiter.graph.instances(spec.name)
                             if p.name in alive]
        for kind in self.arbiter.kinds.values():
            kind.prepare()
        self.containment = self.spawner.containment = Containment.open(sup.cgroups, owner_key(self.config.path))
        log.info("descendants of programs: %s", self.containment.state)

    def answer_claim(self, claimed: socket.socket) -> None:
        """A refused rival connected to learn our pid (SO_PEERCRED at connect): close it."""
        try:
            conn, _ = claimed.accept()
            conn.close()
        except OSError:
            pass

    async def take_over(self) -> None:
        """After a crash of the previous supervisor: adopt what its kinds verify (Redis,
        without downtime); stop its other programs' processes, whose output pipes died
        with it, so that exactly one set runs once ours start."""
        for name, kind in self.arbiter.kinds.items():
            found = await kind.adoptable()
            if found is not None:
                self.adopt(self.arbiter.graph.instances(name)[0], found.pid, found.verified)
        # all at once: one after the other, N workers that each take their stop_timeout would
        # hold back the start of every program N times as long
        await asyncio.gather(*(self.stop_orphan(p, pid) for p, pid in self.orphans
                               if p.proc is None or p.pid != pid))
        self.orphans = []

    def adopt(self, p: Program, pid: int, verified: tuple[str, ...]) -> None:
        pidfd = os.pidfd_open(pid)
        proc = AdoptedProcess(pid, pidfd, self.containment, self.containment.adopted_run(pid))
        # seized whether protected or not: only its tracer's waitpid() sees an adopted
        # process' exit status (rare: after a crash, so its cost does not matter)
        traced = self.tap.attach_running(pid) if self.tap_active and self.tap is not None else False
        if traced:
            self.tapped.add(pid)
        self.loop.add_reader(pidfd, self.on_adopted_exit, proc)
        self.audit("adopted", program=p.name, pid=pid, verified=list(verified), traced=traced)
        self.arbiter.adopt(p, proc, f"adopted pid {pid} from the previous supervisor")
        self.follow_children()      # the kernel witness names its signals, traced or not
        if not traced:
            log.warning("%s: adopted pid %d is not traced: signals to it are not attributed, and its exit "
                        "status will not be visible", p.name, pid)

    def on_adopted_exit(self, proc: AdoptedProcess) -> None:
        if proc.pidfd is not None:
            self.loop.remove_reader(proc.pidfd)
        self.reap()                 # traced: the tap's waitpid has its real status
        owner = self.arbiter.by_pid.get(proc.pid)
        if owner is not None and owner.proc is proc:
            if self.kernel_witness is not None:
                self.kernel_witness.drain()     # untraced: reap() had no exit to read it for
            self.arbiter.child_exited(proc.pid, None)
        self.tapped.discard(proc.pid)

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

    async def run(self) -> None:
        try:
            self.prepare()
        except StartupError:
            self.close()        # the lock_conflict event is evidence too
            raise
        prctl.set_child_subreaper(True)
        self.sigfd = SignalFd(HANDLED_SIGNALS)
        self.loop.add_reader(self.sigfd.fileno(), self.on_signalfd)
        self.loop.add_reader(self.notify_socket.fileno(), self.on_notify)
        try:
            self.start_kernel_witness()
        except StartupError:
            self.close()
            raise
        if self.with_control:
            self.control = ControlServer(self, self.config.supervisor)
            await self.control.start()
        await self.start_metrics()
        if self.cluster is not None:
            self.cluster.start()
        if self.whois is not None:
            self.whois.start()
            if self.kernel_witness is not None:
                start_task(self.watch_cluster_connections(), "witness: the cluster's Redis")
        log.info("started pid %d with %s (%d programs)", os.getpid(), self.config.path, len(self.programs))
        self.ground.warn_about_rivals()
        self.ground.start(self.loop)
        self.service.start_watchdog()
        try:
            await self.take_over()
        except StartupError:
            self.close()
            raise
        self.start_duties()
        self.arbiter.reconcile()
        self.service.publish()
        try:
            await self.shutdown_requested.wait()
            await self.shutdown()
        finally:
            self.close()

    async def start_metrics(self) -> None:
        """Metrics watch supervision and must never stop it: an address that cannot be bound
        is logged and shown in `relayqctl status`, and the supervisor runs without them."""
        address = self.config.supervisor.metrics_listen
        if self.metrics is None or address is None:
            return
        gid = self.control.group_gid if self.control is not None else None
        try:
            await self.metrics.start(address, group_gid=gid)
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)     # asyncio rewords bind errors
            self.metrics_problem = f"metrics: cannot listen on {address} ({why}); serving none"
            log.error("%s", self.metrics_problem)
            self.metrics.close()
            return
        log.info("metrics: GET /metrics on %s", address)

    def start_duties(self) -> None:
        for name, kind in self.arbiter.kinds.items():
            kind.start_duties(self.running_instance(name))

    def running_instance(self, program: str) -> Callable[[], Program | None]:
        """For a kind's duties: its (first) instance while RUNNING, looked up after reloads too."""
        def running() -> Program | None:
            return next((p for p in self.arbiter.graph.instances(program) if p.state == State.RUNNING), None)
        return running

    def start_kernel_witness(self) -> None:
        """Where the kernel allows (root, tracefs, the initial pid namespace); else the
        supervisor runs on without it and says why, once, or with `kernel_trace = true`
        refuses to start (StartupError, before any child)."""
        w = self.kernel_witness
        if w is None:
            return
        if not w.start() and self.config.supervisor.kernel_trace == "true":
            raise StartupError(f"relayq-supervisor: kernel_trace = true, but the kernel trace is unavailable: "
                               f"{w.unavailable}; fix that, or set kernel_trace = \"auto\" to run without it")
        if w.fd is not None:
            self.attribution.catch_up = lambda: w.drain(CATCH_UP_READS)
            self.listen_to_kernel_trace()
            log.info("kernel witness: tracing signals to children in %s", w.instance)
            redis = self.config.redis
            if redis is not None and redis.redis is not None and redis.redis.port and w.watch_clients(redis.redis.port):
                log.info("kernel witness: tracing client connections to Redis port %d", redis.redis.port)
        else:
            log.warning("kernel trace: %s (signals are attributed by the tap alone)", w.state)
            self.audit("kernel_witness_unavailable", reason=w.unavailable)

    def on_kernel_trace(self) -> None:
        """The trace pipe is readable: read it, then stop listening for a moment so that a
        busy node's events are read in batches, not one wake-up per fork (exits do not wait
        for this: reap() drains the pipe first). A backlog is read on in the next loop pass,
        after what else is ready there (a status request, an exit), not in one long stretch."""
        w = self.kernel_witness
        assert w is not None
        more = w.drain(budget_s=READ_BUDGET_S)
        if w.fd is None:
            return
        self.loop.remove_reader(w.fileno())
        if w.unavailable:       # a read failed: say so in status
            w.close()
            self.audit("kernel_witness_unavailable", reason=w.unavailable)
            return
        self.loop.call_later(0 if more else TRACE_READ_PAUSE_S, self.listen_to_kernel_trace)

    def listen_to_kernel_trace(self) -> None:
        w = self.kernel_witness
        if w is not None and w.fd is not None and not self.shutdown_done:
            self.loop.add_reader(w.fileno(), self.on_kernel_trace)

    def follow_children(self, also: int | None = None) -> None:
        """The kernel witness's filter follows the supervised pids (a restarted child too)."""
        if self.kernel_witness is not None and self.kernel_witness.instance is not None:
            pids = set(self.arbiter.by_pid)
            if also is not None:
                pids.add(also)
            self.kernel_witness.watch(pids)

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

    def request_shutdown(self, why: str) -> None:
        if not self.shutdown_requested.is_set():
            log.info("shutting down (%s)", why)
            self.shutdown_requested.set()

    # --- events ----------------------------------------------------------------------

    def on_signalfd(self) -> None:
        assert self.sigfd is not None
        for info in self.sigfd.read_all():
            if info.signo == signal.SIGCHLD:
                continue    # coalesced: one reap pass below covers all of them
            self.attribution.received(info)
            if info.signo in (signal.SIGTERM, signal.SIGINT):
                self.request_shutdown(f"{signal_name(info.signo)} from pid {info.pid}")
            elif info.signo == signal.SIGHUP:
                start_task(self.reload_logged(f"SIGHUP from pid {info.pid}"), "reload on SIGHUP")
        self.reap()

    def reap(self) -> None:
        """Every waitpid() result: traced children's stops go to the tap, exits to the
        arbiter. __WALL: threads of traced children report too."""
        try:
            self.reap_all()
        finally:
            self.follow_children()

    def reap_all(self) -> None:
        """The kernel witness is read before the first exit is handled (the signal that ended
        a child was traced before its exit was reported), not before a tap stop: a stopped
        program (Redis at each SIGCHLD of its save child) must not wait for the node's trace
        backlog; the tap's attribution catches up itself when it finds a sender gone."""
        caught_up = self.kernel_witness is None
        for _ in range(REAP_BATCH):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | ptrace.WALL)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.tap is not None and self.tap.handle(pid, status) is None:
                continue
            if not caught_up and self.kernel_witness is not None:
                self.kernel_witness.drain(capture=False)
                self.loop.call_soon(self.kernel_witness.capture_execs)     # after the restart
                caught_up = True
            self.reaped.set()
            self.arbiter.child_exited(pid, status)
            self.tapped.discard(pid)
        # a signal storm keeps a traced child stopping: let the loop answer others between batches
        self.loop.call_soon(self.reap)

    def on_notify(self) -> None:
        for pid, fields in self.notify_socket.receive():
            self.arbiter.notified(pid, fields)

    # --- reload --------------------------------------------------------------------------

    async def reload_logged(self, who: str) -> None:
        try:
            await self.reload(who)
        except RelayqError as e:
            log.error("reload rejected, nothing changed: %s", e)

    async def reload(self, who: str) -> dict[str, Any]:
        """Re-read the config: a broken one changes nothing; otherwise only what changed
        is stopped, started or restarted. ConfigError or ReloadRefused otherwise."""
        new = load_config(self.config.path)
        refusal = kinds.refuse_reload(self.config, new) or (
            "a changed [cluster] needs a restart of the supervisor" if new.cluster != self.config.cluster else None)
        if refusal:
            raise ReloadRefused(f"{new.path}: {refusal}; nothing changed")
        changes = reload_diff.diff(self.config, new)
        taken = []
        try:        # locks first: a program owned elsewhere changes nothing
            for name in changes.added:
                self.locks.take_program(name, self.config.supervisor.run_dir)
                taken.append(name)
        except StartupError as e:
            for name in taken:
                self.locks.release(program_key(name))
            raise ReloadRefused(f"{e}; nothing changed") from None
        log.info("reloading %s (%s)", new.path, who)
        self.service.reloading()
        try:
            await self.arbiter.apply(new, changes, self.reloaded_kinds(new, changes))
        finally:
            self.service.reloaded()
        for name in changes.removed:
            self.locks.release(program_key(name))
        self.config = self.arbiter.config
        self.ground.config_loaded()
        summary = changes.to_dict()
        log.info("reloaded: %s", ", ".join(f"{k} {v}" for k, v in summary.items() if v) or "nothing changed")
        return {"changes": summary}

    def reloaded_kinds(self, new: Config, changes: reload_diff.Changes) -> dict[str, ProgramKind]:
        old = self.arbiter.kinds
        out = {}
        for spec in new.programs:
            kind = old.get(spec.name)
            if kind is None:
                kind = kinds.make_kind(spec, self.kind_context)
            elif kind.spec != spec:
                kind = kind.with_spec(spec)
            out[spec.name] = kind
        return out

    # --- shutdown -----------------------------------------------------------------------

    async def shutdown(self) -> None:
        self.service.stopping()
        # the Redis node's own Redis is about to stop: its last words go first
        if self.cluster is not None and self.config.redis is not None:
            await self.cluster.close()
        await self.arbiter.shutdown()
        await self.end_leftovers()
        await self.containment.shutdown()
        if self.cluster is not None and self.config.redis is None:
            await self.cluster.close()
        if self.whois is not None:
            await self.whois.close()
        for kind in self.arbiter.kinds.values():
            await kind.close()
        log.info("all programs stopped, exiting")

    async def end_leftovers(self, deadline_s: float = 5.0) -> None:
        """No child, grandchild or zombie survives the supervisor."""
        deadline = time.monotonic() + deadline_s
        while True:
            self.reap()
            children = own_children()
            if not children or time.monotonic() > deadline:
                return
            for pid in children:
                try:
                    fd = os.pidfd_open(pid)     # not reaped yet, so the pid is still that child
                except OSError:
                    continue
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            self.reaped.clear()
            try:        # their SIGCHLD wakes the signalfd, whose handler reaps and sets this
                await asyncio.wait_for(self.reaped.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass

    def close(self) -> None:
        self.service.close()
        if self.metrics is not None:
            self.metrics.close()
        self.ground.close()
        if self.control is not None:
            self.control.close()
        if self.sigfd is not None:
            self.loop.remove_reader(self.sigfd.fileno())
            self.sigfd.close()
        self.loop.remove_reader(self.notify_socket.fileno())
        self.notify_socket.close()
        self.spawner.close()
        if self.kernel_witness is not None:
            self.shutdown_done = True
            if self.kernel_witness.fd is not None:
                self.loop.remove_reader(self.kernel_witness.fileno())
            self.kernel_witness.close()
        self.containment.close()
        for s in self.locks.names.values():
            self.loop.remove_reader(s.fileno())
        self.locks.release_all()
        self.attribution.close_bursts()
        if self.audit_log is not None:
            self.audit_log.close()
        if self.log_file is not None:
            logging.getLogger(__package__).removeHandler(self.log_file)
            self.log_file.close()
            self.log_file = None

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "started_at": self.started_wall, "config": self.config.path,
            "redis_binary": None, "redis_version": None,
            "hostname": socket.gethostname(),
            "signal_tap": self.tap.state if self.tap is not None else "off (signal_tap = false)",
            "signal_tap_stats": {"signal_stops": self.tap.signal_stops, "recorded": dict(self.attribution.traced)}
            if self.tap is not None else None,
            "kernel_trace": self.kernel_witness.state if self.kernel_witness is not None
            else "off (kernel_trace = false)",
            "kernel_trace_stats": self.kernel_witness.stats() if self.kernel_witness is not None else None,
            "config_changed": self.ground.config_changed,
            "descendants_by": self.containment.state,
            "notes": self.status_notes(),
        }
        for kind in self.arbiter.kinds.values():
            header.update(kind.describe())
        if self.cluster is not None:
            header["cluster"] = self.cluster.describe()
        if self.whois is not None:
            header["whois"] = self.whois.describe()
        return {"supervisor": header, "programs": self.arbiter.status()}

    def status_notes(self) -> list[str]:
        notes = []
        if self.ground.config_changed:
            notes.append("config changed on disk since load")
        if self.tap is not None and self.tap.unavailable:
            notes.append(f"signal tap: {self.tap.state}")
        if self.kernel_witness is not None and self.kernel_witness.unavailable:
            notes.append(f"kernel trace: {self.kernel_witness.state}")
        if self.metrics_problem:
            notes.append(self.metrics_problem)
        cluster_note = self.cluster.note() if self.cluster is not None else None
        if cluster_note:
            notes.append(cluster_note)
        return notes


def doctor_target(config: Config, own_pids: set[int] | frozenset[int]) -> doctor.DoctorTarget:
    redis = config.redis
    return doctor.DoctorTarget(redis_port=redis.redis.port if redis and redis.redis else None,
                               redis_dir=redis.redis.dir if redis and redis.redis else None,
                               program_commands=tuple(s.command for s in config.programs if s.redis is None),
                               own_pids=frozenset(own_pids), own_config=config.path)
