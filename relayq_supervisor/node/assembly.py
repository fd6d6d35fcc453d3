"""One node's supervisor: the arbiter wired to the loop's event sources.

One thread, one asyncio loop. Every fd is registered on it: the signalfd (signals as
data: SIGCHLD triggers one reap pass, SIGTERM/SIGINT an ordered shutdown, SIGHUP a
reload), the children's notify socket, their output pipes (core/children.py), the
control socket (control/), inotify (ground.py), and the kinds' own tasks (Redis
health). State changes happen only in the arbiter; Node turns events into calls on it,
owns what lives as long as the process (locks, the loop's fds) and says in which order
the pieces start and stop. The pieces, each behind a narrow interface:
`witnessing` (the signal tap and the kernel witness), `reaping` (waitpid, leftovers),
`records` (supervisor.log, the audit log), `startup` (locks, a predecessor's processes),
`clustering` ([cluster]: publisher and whois), `reloading` (a new config, applied).
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
from relayq_supervisor.background import start_task
from relayq_supervisor.config import Config, children_path
from relayq_supervisor.control.server import ControlServer
from relayq_supervisor.core.arbiter import Arbiter
from relayq_supervisor.core.children import ProcessSpawner
from relayq_supervisor.core.containment import Containment
from relayq_supervisor.core.locks import OwnerLocks, owner_key
from relayq_supervisor.core.program import Program
from relayq_supervisor.core.states import State
from relayq_supervisor.errors import RelayqError, StartupError
from relayq_supervisor.ground import GroundWatch
from relayq_supervisor.kinds import Cancellable, KindContext
from relayq_supervisor.kinds.redis.kind import RedisKind
from relayq_supervisor.linux import prctl
from relayq_supervisor.linux.journal import SOCKET_ENV
from relayq_supervisor.linux.notify_socket import ChildNotifySocket
from relayq_supervisor.linux.siginfo import signal_name
from relayq_supervisor.linux.signalfd import SignalFd
from relayq_supervisor.metrics import SupervisorMetrics
from relayq_supervisor.node.clustering import Clustering
from relayq_supervisor.node.reaping import Reaper
from relayq_supervisor.node.records import Records
from relayq_supervisor.node.reloading import Reloader
from relayq_supervisor.node.startup import Adoption, ChildNotes, Orphan, claim_ground, take_program_locks
from relayq_supervisor.node.witnessing import Witnessing
from relayq_supervisor.systemd import ServiceLink
from relayq_supervisor.witness.attribution import Attribution
from relayq_supervisor.witness.evidence import Probe

log = logging.getLogger(__package__)     # "relayq_supervisor.node": its lines read "node: ..." as before the split

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


class Node:
    def __init__(self, config: Config, with_control: bool = True):
        self.config = config
        self.with_control = with_control
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.shutdown_requested = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.locks = OwnerLocks(config.path, lambda path, owner: self.audit("lock_conflict", path=path, owner=owner))
        self.attribution = Attribution(self, config.supervisor.audit_ignore, self.loop.call_later)
        self.witnessing = Witnessing(self.loop, config.supervisor, self.attribution, self.audit,
                                     lambda: self.arbiter.by_pid)
        self.service = ServiceLink(self)
        self.ground = GroundWatch(self)
        self.control: ControlServer | None = None
        self.sigfd: SignalFd | None = None
        self.notify_socket = ChildNotifySocket()
        # the cluster's Redis answering starts nothing before take_over() has adopted or stopped
        # what a crashed predecessor left (else Redis is started while its adoption is checked)
        self.taken_over = False
        self.cluster = Clustering(config, status=self.status, programs=lambda: self.arbiter.programs,
                                  reconcile=lambda: self.arbiter.reconcile() if self.taken_over else None,
                                  redis_admin=self.redis_admin,
                                  name_process=self.attribution.name_process,
                                  who_held=self.witnessing.who_held if self.witnessing.kernel is not None else None)
        self.kind_context = KindContext(supervisor=config.supervisor, call_later=self.loop.call_later,
                                        locks=self.locks, audit=self.audit, name_process=self.attribution.name_process,
                                        clients=self.witnessing.clients() if config.redis is not None else None,
                                        remote_clients=self.cluster.asker)
        base_env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_CHILDREN}
        base_env["PATH"] = children_path()
        base_env["NOTIFY_SOCKET"] = self.notify_socket.address
        if config.cluster is not None and config.redis is None:     # a worker-only node: the cluster's Redis
            base_env["RELAYQ_REDIS_URL"] = config.cluster.redis_url
        # cgroups are made in prepare(), once the locks say this supervisor is the owner
        self.containment = Containment(None, owner_key(config.path), "not set up yet")
        self.spawner = ProcessSpawner(self.loop, config.supervisor, self.witnessing.before_exec, self.containment)
        # [supervisor] metrics_listen: read-only metrics on this loop (None: off, no lag probe either)
        self.metrics = SupervisorMetrics(lambda: self.arbiter.programs, self.loop, self.spawner.journal_counts) \
            if config.supervisor.metrics_listen is not None else None
        collector = self.cluster.collector()
        if self.metrics is not None and collector is not None:
            self.metrics.registry.register(collector)
        self.metrics_problem: str | None = None
        self.records = Records(self.loop, self.metrics)     # opened in prepare(), once we hold the locks
        self.arbiter = Arbiter(config, {spec.name: kinds.make_kind(spec, self.kind_context) for spec in config.programs},
                               spawner=self.spawner,
                               clock=LoopClock(self.loop), audit=self.audit, witness=self, base_env=base_env,
                               probe=Probe(), on_change=self.changed, remote_ready=self.cluster.remote_ready)
        self.child_notes = ChildNotes(self.loop, self.locks, lambda base: self.arbiter.graph.instances(base))
        self.reloader = Reloader(self.arbiter, self.locks, self.service, self.kind_context, self.reloaded)
        self.reaper = Reaper(self.loop, self.witnessing, self.arbiter.child_exited)
        self.orphans: list[Orphan] = []     # a crashed predecessor's workers, still running

    # --- what collaborators see (witness, ground, control, systemd) -------------------

    @property
    def programs(self) -> list[Program]:
        return self.arbiter.programs

    @property
    def shutting_down(self) -> bool:
        return self.arbiter.shutting_down

    def traced(self, pid: int) -> bool:
        """Does the tap stop at signals to `pid` (a process, or a thread of one it seized)?"""
        return self.witnessing.traced(pid)

    def program_of_pid(self, pid: int | None) -> Program | None:
        return self.arbiter.program_of_pid(pid)

    def record(self, p: Program | None, pid: int, signo: int, **fields: Any) -> dict[str, Any]:
        return self.attribution.record(p, pid, signo, **fields)

    def catch_up(self) -> None:
        """Before an exit is judged (after its restart began): the kernel trace's backlog."""
        self.witnessing.catch_up_before_exit()

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
        self.cluster.status_changed()
        if p.state == State.STARTING and p.pid is not None:
            self.child_notes.started(p)
            self.arbiter.kinds[p.base].record_running(p.pid)

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

    def awaits_other_node(self, p: Program) -> bool:
        return self.arbiter.awaits_other_node(p)

    def doctor_target(self) -> doctor.DoctorTarget:
        return doctor_target(self.config, {os.getpid(), *self.arbiter.by_pid})

    def audit(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Queue one audit event (written and fsynced with the others of this loop pass)."""
        return self.records.audit(kind, **fields)

    async def cluster_status(self) -> dict[str, Any]:
        """`cluster-status`: the cluster view read by this supervisor (node/clustering.py)."""
        return await self.cluster.cluster_status()

    async def cluster_why(self, node: str, name: str) -> dict[str, Any]:
        """`cluster-why`: what another node published of a program, read by this supervisor."""
        return await self.cluster.cluster_why(node, name)

    def request_shutdown(self, why: str) -> None:
        if not self.shutdown_requested.is_set():
            log.info("shutting down (%s)", why)
            self.shutdown_requested.set()

    # --- start-up --------------------------------------------------------------------

    def prepare(self) -> None:
        """Everything that can refuse to start, before any child is started."""
        sup = self.config.supervisor
        claim_ground(self.locks, self.config, self.loop)
        # after the lock: a second supervisor refused here must not write into our logs
        self.records.open(sup, self.cluster.audit_listener())
        take_program_locks(self.locks, self.config, self.arbiter.graph, self.orphans)
        for kind in self.arbiter.kinds.values():
            kind.prepare()
        self.containment = self.spawner.containment = Containment.open(sup.cgroups, owner_key(self.config.path))
        log.info("descendants of programs: %s", self.containment.state)

    async def take_over(self) -> None:
        """After a crash of the previous supervisor (node/startup.py's Adoption)."""
        adoption = Adoption(self.loop, self.arbiter, self.containment, self.witnessing, self.audit, self.reap)
        await adoption.take_over(self.orphans)
        self.orphans = []

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
            redis = self.config.redis
            self.witnessing.start(required=self.config.supervisor.kernel_trace == "true",
                                  redis_port=redis.redis.port if redis is not None and redis.redis is not None
                                  else None)
        except StartupError:
            self.close()
            raise
        if self.with_control:
            self.control = ControlServer(self, self.config.supervisor)
            await self.control.start()
        await self.start_metrics()
        self.cluster.start(self.witnessing.watch_connections if self.witnessing.kernel is not None else None)
        log.info("started pid %d with %s (%d programs)", os.getpid(), self.config.path, len(self.programs))
        self.ground.warn_about_rivals()
        self.ground.start(self.loop)
        self.service.start_watchdog()
        try:
            await self.take_over()
        except StartupError:
            self.close()
            raise
        self.taken_over = True
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
                start_task(self.reloader.reload_logged(f"SIGHUP from pid {info.pid}"), "reload on SIGHUP")
        self.reap()

    def reap(self) -> None:
        """Every waitpid() result (node/reaping.py)."""
        self.reaper.reap()

    def on_notify(self) -> None:
        for pid, fields in self.notify_socket.receive():
            self.arbiter.notified(pid, fields)

    # --- reload (node/reloading.py) ---------------------------------------------------

    async def reload(self, who: str) -> dict[str, Any]:
        return await self.reloader.reload(who)

    def reloaded(self, new: Config) -> None:
        self.config = new
        self.ground.config_loaded()

    # --- shutdown -----------------------------------------------------------------------

    async def shutdown(self) -> None:
        """In order: the Redis node's last words to the cluster (before its Redis stops),
        the programs, whatever they left, their cgroups, then the rest of [cluster]."""
        self.service.stopping()
        await self.cluster.close_before_programs()
        await self.arbiter.shutdown()
        await self.reaper.end_leftovers()
        await self.containment.shutdown()
        await self.cluster.close_after_programs()
        for kind in self.arbiter.kinds.values():
            await kind.close()
        log.info("all programs stopped, exiting")

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
        self.witnessing.close()
        self.containment.close()
        for s in self.locks.names.values():
            self.loop.remove_reader(s.fileno())
        self.locks.release_all()
        self.attribution.close_bursts()
        self.records.close()

    # --- status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "started_at": self.started_wall, "config": self.config.path,
            "redis_binary": None, "redis_version": None,
            "hostname": socket.gethostname(),
            **self.witnessing.describe(),
            "config_changed": self.ground.config_changed,
            "descendants_by": self.containment.state,
            "notes": self.status_notes(),
        }
        for kind in self.arbiter.kinds.values():
            header.update(kind.describe())
        header.update(self.cluster.describe())
        return {"supervisor": header, "programs": self.arbiter.status()}

    def status_notes(self) -> list[str]:
        notes = []
        if self.ground.config_changed:
            notes.append("config changed on disk since load")
        notes += self.witnessing.notes()
        if self.metrics_problem:
            notes.append(self.metrics_problem)
        cluster_note = self.cluster.note()
        if cluster_note:
            notes.append(cluster_note)
        return notes


def doctor_target(config: Config, own_pids: set[int] | frozenset[int]) -> doctor.DoctorTarget:
    redis = config.redis
    return doctor.DoctorTarget(redis_port=redis.redis.port if redis and redis.redis else None,
                               redis_dir=redis.redis.dir if redis and redis.redis else None,
                               program_commands=tuple(s.command for s in config.programs if s.redis is None),
                               own_pids=frozenset(own_pids), own_config=config.path)
