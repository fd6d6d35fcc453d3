"""The arbiter: desired vs actual state of every program, dependency order, shutdown.

One thread, one asyncio loop. Signals arrive as data through a signalfd; child exits
are reaped with waitpid(-1) when SIGCHLD is read; every other fd (pidfds via spawn's
exec-result pipes, children's output pipes, the notify socket, the control socket) is
registered on the same loop. State changes happen only in the handlers below.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass

from relayq_supervisor import doctor
from relayq_supervisor.kinds.redis import acl as redis_acl
from relayq_supervisor.kinds.redis import server as redis_server
from relayq_supervisor.witness.guard import judge
from relayq_supervisor.witness.identity import ProcessIdentity, boottime_now, proc_start_ticks
from relayq_supervisor.audit.log import AuditLog, make_event
from relayq_supervisor.witness.tap import SignalTap
from relayq_supervisor.config import Config, ConfigError, ProgramSpec, children_path, load_config, redis_version
from relayq_supervisor.ground import GroundWatch
from relayq_supervisor.linux import prctl, ptrace
from relayq_supervisor.linux.siginfo import Siginfo, is_user_sent, sender_is_verified
from relayq_supervisor.linux.signalfd import SignalFd
from relayq_supervisor.core.locks import LockHeld, OwnerLock, describe_owner
from relayq_supervisor.linux.notify_socket import ChildNotifySocket
from relayq_supervisor.core.output import open_child_output
from relayq_supervisor.core.policy import BACKOFF as DECIDE_BACKOFF, EXIT as DECIDE_EXIT, FATAL as DECIDE_FATAL
from relayq_supervisor.core.program import (BACKOFF, EXITED, FATAL, RUNNING, STARTING, STOPPED, STOPPING, ExitInfo,
                      Program, signal_name)
from relayq_supervisor.control.protocol import ProtocolError
from relayq_supervisor.kinds.redis.health import RedisHealth
from relayq_supervisor.systemd import ServiceLink
from relayq_supervisor.core.spawn import read_exec_result, spawn

log = logging.getLogger("relayq")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
STOP_REQUESTS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP})
# Variables that describe the supervisor's own place under systemd, not the children's.
_NOT_FOR_CHILDREN = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                     "LISTEN_PID", "LISTEN_FDNAMES", "JOURNAL_STREAM", "RELAYQ_CONFIG")


class StartupError(Exception):
    """Refusal to start; the message is for people, exit status 2."""


@dataclass(frozen=True)
class Outcome:
    name: str
    state: str
    ok: bool
    detail: str


class Supervisor:
    def __init__(self, config: Config, control_factory=None):
        """control_factory(supervisor) makes the control server (a layer above this one)."""
        self.config = config
        self.control_factory = control_factory
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.programs: dict[str, Program] = {}
        for spec in config.programs:
            for name in spec.instance_names():
                self.programs[name] = program = Program(spec, name)
                program.listener = self.on_state_change
        self.index_programs()
        self.by_pid: dict[int, Program] = {}
        self.locks: dict[str, OwnerLock] = {}
        self.shutting_down = False
        self.shutdown_requested = asyncio.Event()
        self.reaped = asyncio.Event()       # set whenever reap() collects a process
        self.sigfd: SignalFd | None = None
        self.notify_socket: ChildNotifySocket | None = None
        self.service = ServiceLink(self)
        self.ground = GroundWatch(self)
        self.redis_health = RedisHealth(self)
        self.audit_log: AuditLog | None = None
        self.redis_version = None
        self.control = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiters: list[tuple[object, asyncio.Future]] = []
        self.tap = SignalTap(self.on_traced_signal) if config.supervisor.signal_tap else None
        self.redis_admin: redis_acl.AdminCredentials | None = None
        self.redis_conn = None      # ((host, port), client), see redis_client()
        self.worker_redis_url = None    # RELAYQ_REDIS_URL for every child

    # --- ordering ----------------------------------------------------------------

    def index_programs(self) -> None:
        """Instances by program name, and who depends on whom: lookups per event."""
        self.groups: dict[str, list[Program]] = {}
        for p in self.programs.values():
            self.groups.setdefault(p.base, []).append(p)
        self.spec_dependents = {spec.name: [s.name for s in self.config.programs if spec.name in s.depends_on]
                                for spec in self.config.programs}

    def instances(self, spec_name: str) -> list[Program]:
        return self.groups.get(spec_name, [])

    def dependencies_running(self, p: Program) -> str | None:
        """None if every dependency is RUNNING, else what it waits for."""
        waiting = [d.name for dep in p.spec.depends_on for d in self.instances(dep) if d.state != RUNNING]
        return f"waiting for {', '.join(waiting)}" if waiting else None

    def dependents(self, p: Program) -> list[Program]:
        return [q for name in self.spec_dependents.get(p.base, ()) for q in self.instances(name)]

    # --- audit ---------------------------------------------------------------------

    def audit(self, kind: str, **fields) -> dict:
        """Queue one audit event; the events of one loop pass are written and fsynced
        together at its end, after the work (a respawn) that produced them."""
        event = make_event(kind, **fields)
        if self.audit_log is not None:
            self.audit_log.queue(event)
            if not self.audit_flush_scheduled:
                self.audit_flush_scheduled = True
                self.loop.call_soon(self.flush_audit)
        return event

    audit_flush_scheduled = False

    def flush_audit(self) -> None:
        self.audit_flush_scheduled = False
        self.audit_log.flush()

    # --- start-up --------------------------------------------------------------------

    def owner_record(self) -> dict:
        pid = os.getpid()
        return {"pid": pid, "start_ticks": proc_start_ticks(pid), "config": self.config.path,
                "manager": "relayq-supervisor"}

    def take_lock(self, key: str, path: str, what: str, why: str = "") -> None:
        """StartupError `relayq-supervisor: WHAT is owned by pid N (started ..., config ...)WHY`."""
        lock = OwnerLock(path)
        try:
            lock.acquire(self.owner_record())
        except LockHeld as e:
            self.audit("lock_conflict", path=path, owner=e.owner)
            raise StartupError(f"relayq-supervisor: {what} is owned by {describe_owner(e.owner)}{why}") from None
        self.locks[key] = lock

    def take_program_lock(self, name: str, run_dir: str) -> None:
        self.take_lock(name, os.path.join(run_dir, f"{name}.lock"), f"program {name}")

    def prepare(self) -> None:
        """Everything that can refuse to start, before any child is started."""
        sup = self.config.supervisor
        for d in (sup.run_dir, sup.log_dir, os.path.dirname(sup.audit_log), os.path.dirname(sup.control_socket)):
            os.makedirs(d, exist_ok=True)
        self.take_lock("supervisor", os.path.join(sup.run_dir, "supervisor.lock"), sup.run_dir)
        self.audit_log = AuditLog(sup.audit_log, max_bytes=sup.audit_max_bytes, keep=sup.audit_backups,
                                  on_error=lambda msg: log.error("audit: %s", msg))
        for spec in self.config.programs:
            self.take_program_lock(spec.name, sup.run_dir)
        redis = self.config.redis
        if redis is not None:
            os.makedirs(redis.redis.dir, exist_ok=True)
            self.take_lock("redis-dir", os.path.join(redis.redis.dir, "relayq.lock"),
                           f"Redis data directory {redis.redis.dir}",
                           ": two servers on one data directory would overwrite each other's dump")
            holder = redis_server.port_holder(redis_server.ping_host(redis), redis.redis.port)
            if holder:
                raise StartupError(self.port_message(redis, holder))
            self.redis_version = redis_version(redis.redis.binary)
            try:
                self.worker_redis_url = redis_server.client_url(redis)
                self.redis_admin = redis_acl.AdminCredentials.load_or_create(sup.run_dir)
                self.write_redis_acl(redis)
            except (redis_acl.AclSetupError, ValueError) as e:
                raise StartupError(f"relayq-supervisor: cannot set up the Redis command guard: {e}") from None

    @staticmethod
    def port_message(spec: ProgramSpec, holder: str) -> str:
        return (f"port {spec.redis.port} is held by {holder}: stop and disable that manager first "
                "(`relayqctl doctor` lists rival managers)")

    # --- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        try:
            self.prepare()
        except StartupError:
            if self.audit_log is not None:
                self.audit_log.close()      # the lock_conflict event is evidence too
            raise
        prctl.set_child_subreaper(True)
        self.sigfd = SignalFd(HANDLED_SIGNALS)
        self.loop.add_reader(self.sigfd.fileno(), self.on_signalfd)
        self.notify_socket = ChildNotifySocket()
        self.loop.add_reader(self.notify_socket.fileno(), self.on_notify)
        if self.control_factory is not None:
            self.control = self.control_factory(self)
            await self.control.start()
        log.info("supervisor: started pid %d with %s (%d programs)", os.getpid(), self.config.path,
                 len(self.programs))
        self.ground.warn_about_rivals()
        self.ground.start(self.loop)
        self.service.start_watchdog()
        if self.config.redis is not None:
            self.redis_health.start(self.loop)
        self.reconcile()
        self.service.publish()
        try:
            await self.shutdown_requested.wait()
            await self.shutdown()
        finally:
            self.close()

    def close(self) -> None:
        self.redis_health.close()
        self.service.close()
        self.ground.close()
        if self.control is not None:
            self.control.close()
        if self.sigfd is not None:
            self.loop.remove_reader(self.sigfd.fileno())
            self.sigfd.close()
        if self.notify_socket is not None:
            self.loop.remove_reader(self.notify_socket.fileno())
            self.notify_socket.close()
        for lock in self.locks.values():
            lock.release()
        if self.audit_log is not None:
            self.audit_log.close()

    def request_shutdown(self, why: str) -> None:
        if not self.shutdown_requested.is_set():
            log.info("supervisor: shutting down (%s)", why)
            self.shutdown_requested.set()

    # --- signals and reaping ---------------------------------------------------------

    def on_signalfd(self) -> None:
        for info in self.sigfd.read_all():
            if info.signo == signal.SIGCHLD:
                continue    # coalesced: one reap pass below covers all of them
            self.record_received_signal(info)
            if info.signo in (signal.SIGTERM, signal.SIGINT):
                self.request_shutdown(f"{signal_name(info.signo)} from pid {info.pid}")
            elif info.signo == signal.SIGHUP:
                self.on_reload_request(f"SIGHUP from pid {info.pid}")
        self.reap()

    def record_received_signal(self, info) -> None:
        name = signal_name(info.signo)
        if name in self.config.supervisor.audit_ignore:
            return
        sender = ProcessIdentity.capture(info.pid, uid_hint=info.uid, code_hint=info.code_name,
                                         seen_boottime=boottime_now()) if info.pid else None
        self.audit("signal", signal=name, signo=info.signo, code=info.code_name,
                   target={"program": "supervisor", "pid": os.getpid()},
                   sender=self.name_sender(sender), action="delivered", via="signalfd")
        log.info("supervisor: received %s from %s", name, sender.describe() if sender else "the kernel")

    def name_sender(self, identity: ProcessIdentity | None) -> dict | None:
        if identity is None:
            return None
        owner = self.by_pid.get(identity.pid)
        if owner is not None:
            identity = identity.with_program(owner.name)
        return identity.to_dict()

    def on_reload_request(self, why: str) -> None:
        async def reload_logged():
            try:
                await self.reload(why)
            except ProtocolError as e:
                log.error("supervisor: reload rejected, nothing changed: %s", e)
        self.loop.create_task(reload_logged())

    def reap(self) -> None:
        """Every waitpid() result: traced children's stops go to the tap, exits here.
        __WALL: threads of traced children report too."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | ptrace.WALL)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.tap is not None and self.tap.handle(pid, status) is None:
                continue
            self.reaped.set()
            program = self.by_pid.pop(pid, None)
            if program is not None:
                self.on_exit(program, status)
                self.kill_group_leftovers(pid)

    def kill_group_leftovers(self, pgid: int) -> None:
        """A program's main process is gone: end what it left in its process group, as
        systemd does for a service's control group. The group id stays allocated while
        the group has members, so the number still names our group; an empty group
        answers ESRCH. One syscall, whatever the number of children."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        log.info("supervisor: killed what pid %d left in its process group", pgid)

    # --- starting --------------------------------------------------------------------

    def reconcile(self, candidates=None) -> None:
        """Start whatever should run and can (its dependencies are RUNNING). An event
        passes the instances it can have made startable, so its cost does not grow with
        the number of programs."""
        if self.shutting_down:
            return
        for p in self.programs.values() if candidates is None else candidates:
            if not p.wanted:
                continue
            startable = p.state == STOPPED or (p.state == BACKOFF and p.start_due)
            if not startable:
                continue
            waiting = self.dependencies_running(p)
            if waiting:
                if p.reason != waiting:
                    p.reason = waiting
                    log.info("%s: %s", p.name, waiting)
                continue
            self.start(p)

    def child_environment(self, p: Program) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _NOT_FOR_CHILDREN}
        env["PATH"] = children_path()
        if self.worker_redis_url:
            env["RELAYQ_REDIS_URL"] = self.worker_redis_url
        env["RELAYQ_PROGRAM"] = p.name
        env["NOTIFY_SOCKET"] = self.notify_socket.address
        env.update(dict(p.spec.environment))
        return env

    def redis_preflight(self, spec: ProgramSpec) -> str | None:
        """Before each Redis start: why it must not start (FATAL), or None."""
        holder = redis_server.port_holder(redis_server.ping_host(spec), spec.redis.port)
        if holder:
            return self.port_message(spec, holder)
        try:
            self.write_redis_acl(spec)
        except (redis_acl.AclSetupError, OSError, ValueError) as e:
            return f"cannot write the Redis ACL file: {e}"
        return None

    def write_redis_acl(self, spec: ProgramSpec) -> str:
        """Checked before every Redis start, so the file and the passwords always agree."""
        return redis_acl.write_acl_file(self.config.supervisor.run_dir, spec.redis.denied_commands,
                                        redis_acl.version_tuple(self.redis_version), self.redis_admin,
                                        default_password=redis_server.default_password(spec))

    def argv(self, p: Program) -> list[str]:
        if p.spec.redis is not None:
            acl = os.path.join(self.config.supervisor.run_dir, "redis-users.acl")
            return redis_server.redis_argv(p.spec, ["--aclfile", acl])
        return list(p.spec.command)

    def redis_client(self, spec: ProgramSpec):
        """One admin client for readiness and health checks, made once: a client per
        start would cost a read of redis-py's package metadata on every restart."""
        key = (redis_server.ping_host(spec), spec.redis.port)
        if self.redis_conn is None or self.redis_conn[0] != key:
            self.redis_conn = (key, redis_server.client(spec, self.redis_admin.username, self.redis_admin.password))
        return self.redis_conn[1]

    def start(self, p: Program, why: str | None = None) -> None:
        p.cancel_timer()
        p.start_due = False
        p.next_start_at = None
        refusal = self.redis_preflight(p.spec) if p.spec.redis is not None else None
        if refusal:
            self.give_up(p, refusal)
            return
        sup = self.config.supervisor
        if p.output is None:
            p.output = open_child_output(p.name, p.spec.log, sup.log_dir, sup.log_max_bytes, sup.log_backups)
        # only our end non-blocking: O_NONBLOCK on the child's stdout would hand it EAGAIN
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(out_r, False)
        argv = self.argv(p)
        try:
            child = spawn(argv, self.child_environment(p), p.spec.directory, out_w,
                          before_exec=self.before_exec)
        except OSError as e:
            os.close(out_r)
            self.give_up(p, f"cannot start: {e.strerror}")
            return
        finally:
            os.close(out_w)
        if p.output_fd is not None:
            self.close_output(p)
        p.output_fd = out_r
        self.loop.add_reader(out_r, self.on_output, p, out_r)
        self.loop.add_reader(child.exec_result_fd, self.on_exec_result, p, child.exec_result_fd)
        p.tracker.record_start()
        p.pid, p.pidfd = child.pid, child.pidfd
        p.started_at, p.started_wall = time.monotonic(), time.time()
        p.exec_error = None
        p.starts += 1
        p.exited.clear()
        self.by_pid[child.pid] = p
        self.audit("spawn", program=p.name, pid=child.pid, argv=argv)
        p.set_state(STARTING, why or f"pid {child.pid}")
        self.begin_ready_check(p)

    def before_exec(self, pid: int) -> None:
        """Between fork and exec: the signal tap seizes the child here."""
        if self.tap is None or self.tap.unavailable:
            return
        if not self.tap.attach(pid):
            log.warning("supervisor: signal tap: %s (signals to children are not attributed)", self.tap.state)
            self.audit("tap_unavailable", reason=self.tap.unavailable)

    def on_traced_signal(self, tid: int, info: Siginfo) -> bool:
        """A signal is about to reach a traced child: record it, and say whether to deliver."""
        p = self.program_of_pid(tid)
        user_sent = is_user_sent(info.code) and info.pid > 0
        if user_sent and info.pid == os.getpid():
            return True                     # our own: recorded when sent
        name = signal_name(info.signo)
        sender = None
        if user_sent:
            # started after this moment = a recycled pid, not the sender
            sender = ProcessIdentity.capture(info.pid, uid_hint=info.uid, code_hint=info.code_name,
                                             seen_boottime=boottime_now())
        verdict = judge(info.signo, protected=p is not None and p.spec.protect, user_sent=user_sent,
                        from_program_itself=p is not None and user_sent and self.program_of_pid(info.pid) is p,
                        from_service_manager=info.pid in (1, os.getppid()), shutting_down=self.shutting_down)
        if verdict.shutdown:
            self.request_shutdown(f"SIGTERM to {p.name} from the service manager (pid {info.pid})")
        action, note = verdict.action, verdict.note
        sender_dict = self.name_sender(sender)
        if name not in self.config.supervisor.audit_ignore or not verdict.deliver:
            # SI_QUEUE and the like carry a pid the sender wrote itself; SI_USER/SI_TKILL the kernel's
            self.record_signal(p, tid, info.signo, code=info.code_name, sender=sender_dict, action=action,
                               via="ptrace", sender_verified=sender_is_verified(info.code) if user_sent else None,
                               **({"note": note} if note else {}))
        if p is None:
            return True
        who = sender.describe() if sender else f"the kernel ({info.code_name})"
        if action == "blocked":
            self.service.count_blocked()
            if note is None:
                log.warning("%s: blocked %s from %s; to stop %s use `relayqctl stop %s`", p.name, name, who,
                            p.name, p.name)
            return False
        if user_sent or info.signo not in (signal.SIGCHLD, signal.SIGWINCH):
            p.last_signal = {"signal": name, "signo": info.signo, "sender": sender_dict, "describe": who}
        return True

    def on_exec_result(self, p: Program, fd: int) -> None:
        self.loop.remove_reader(fd)
        err = read_exec_result(fd)
        if err is not None:
            p.exec_error = f"exec of {p.spec.command[0]} failed: {os.strerror(err) if err else 'unknown error'}"
            log.error("%s: %s", p.name, p.exec_error)

    def begin_ready_check(self, p: Program) -> None:
        if p.spec.redis is not None:
            p.ready_task = self.loop.create_task(self.wait_redis_ready(p, p.pid))
        else:
            p.timer = self.loop.call_later(p.spec.ready_after, self.mark_running, p, p.pid,
                                           f"alive for {p.spec.ready_after:g}s")

    async def wait_redis_ready(self, p: Program, pid: int) -> None:
        conn = self.redis_client(p.spec)
        delay = 0.01
        while p.pid == pid and p.state == STARTING:
            if await redis_server.is_ready(conn):
                self.mark_running(p, pid, "answered PING")
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    def mark_running(self, p: Program, pid: int, why: str) -> None:
        if p.pid != pid or p.state != STARTING:
            return
        p.cancel_timer()
        if asyncio.current_task() is not p.ready_task:     # never cancel ourselves mid-cleanup
            p.cancel_ready_check()
        p.ready_task = None
        p.set_state(RUNNING, why)
        self.reconcile(self.dependents(p))

    def on_notify(self) -> None:
        for pid, fields in self.notify_socket.receive():
            p = self.program_of_pid(pid)
            if p is None:
                continue
            if fields.get("READY") == "1":
                self.mark_running(p, p.pid, "sent READY=1")
            if "STATUS" in fields:
                p.notify_status = fields["STATUS"]

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

    def on_output(self, p: Program, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(fd)
            os.close(fd)
            if p.output_fd == fd:
                p.output_fd = None
            return
        p.remember_output(data)
        try:
            p.output.write(data)
        except OSError as e:
            log.error("%s: cannot write its log (%s)", p.name, e.strerror)

    def close_output(self, p: Program) -> None:
        if p.output_fd is not None:
            self.loop.remove_reader(p.output_fd)
            os.close(p.output_fd)
            p.output_fd = None

    def release_output(self, p: Program) -> None:
        """The pipe and the log file: the program is gone for good."""
        self.close_output(p)
        if p.output is not None:
            p.output.close()
            p.output = None

    # --- exits and restarts -------------------------------------------------------------

    def on_exit(self, p: Program, status: int) -> None:
        runtime = time.monotonic() - (p.started_at or time.monotonic())
        info = ExitInfo.from_wait_status(status, runtime)
        if p.exec_error:
            info = ExitInfo(info.code, info.signal, info.at, runtime, detail=p.exec_error)
        elif p.state == STOPPING and p.stop_reason:
            info = ExitInfo(info.code, info.signal, info.at, runtime, info.core_dumped, detail=p.stop_reason)
        sender = None
        if p.state != STOPPING:
            info, sender = self.attribute_exit(p, info)
        p.last_exit = info
        p.last_signal = None
        pid = p.pid
        p.forget_process()
        event = self.audit("exit", program=p.name, pid=pid, code=info.code,
                           signal=signal_name(info.signal) if info.signal else None,
                           runtime_s=round(runtime, 3), sender=sender, note=info.detail)
        p.last_stop = {"exit": event, "description": info.describe(), "sender": sender,
                       "events": list(p.recent_events), "output_tail": list(p.output_tail)}
        p.exited.set()
        if p.state == STOPPING or not p.wanted or self.shutting_down:
            p.set_state(STOPPED, info.describe())
            return
        decision = p.tracker.on_exit(runtime, info.code, info.signal)
        what = f"pid {pid} {info.describe()} after {runtime:.1f}s"
        if decision.action == DECIDE_FATAL:
            self.give_up(p, f"{decision.reason} (last: {what})")
        elif decision.action == DECIDE_EXIT:
            p.set_state(EXITED, f"{what}; {decision.reason}")
        elif decision.action == DECIDE_BACKOFF:
            p.next_start_at = time.monotonic() + decision.delay
            p.set_state(BACKOFF, f"{what}; {decision.reason}")
            self.audit("backoff", program=p.name, delay_s=round(decision.delay, 3), streak=decision.streak)
            p.timer = self.loop.call_later(decision.delay, self.backoff_over, p)
        else:
            p.set_state(BACKOFF, f"{what}; {decision.reason}")
            p.restarts += 1
            p.start_due = True
        self.reconcile([p])

    def attribute_exit(self, p: Program, info: ExitInfo) -> tuple[ExitInfo, dict | None]:
        """Who killed it: the sender of the fatal signal, when the tap saw it."""
        last = p.last_signal
        if last is not None and last["signo"] == info.signal:
            detail = f"from {last['describe']}"
            return ExitInfo(info.code, info.signal, info.at, info.runtime, info.core_dumped, detail), last["sender"]
        if last is not None and info.signal is None and last["signo"] in STOP_REQUESTS and last["sender"]:
            # it handled the signal and exited on its own: still that sender's doing
            detail = f"after {last['signal']} from {last['describe']}"
            return ExitInfo(info.code, None, info.at, info.runtime, False, detail), last["sender"]
        if info.signal == signal.SIGKILL and self.tap is not None and not self.tap.unavailable:
            return ExitInfo(info.code, info.signal, info.at, info.runtime, info.core_dumped,
                            "sender not visible to the tap"), None
        return info, None

    def backoff_over(self, p: Program) -> None:
        p.timer = None
        if p.state == BACKOFF and p.wanted:
            p.start_due = True
            p.restarts += 1
            self.reconcile([p])

    def give_up(self, p: Program, reason: str) -> None:
        p.cancel_timer()
        p.set_state(FATAL, reason)
        self.audit("gave_up", program=p.name, reason=reason)

    def on_state_change(self, p: Program) -> None:
        """After every transition: wake operators waiting for an outcome, tell systemd."""
        self.service.publish()
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

    async def wait_until(self, check) -> object:
        """Wait until check() returns something other than None, re-checked after every transition."""
        outcome = check()
        if outcome is not None:
            return outcome
        fut = self.loop.create_future()
        self.waiters.append((check, fut))
        return await fut

    # --- stopping ------------------------------------------------------------------------

    async def stop(self, p: Program, reason: str) -> None:
        """Stop one instance and wait until it has exited."""
        p.cancel_timer()
        p.start_due = False
        if p.pid is None:
            if p.state in (BACKOFF, STARTING, FATAL, EXITED):
                p.set_state(STOPPED, reason)
            return
        if p.state != STOPPING:
            p.stop_reason = reason
            p.cancel_ready_check()
            p.set_state(STOPPING, f"{reason}: {signal_name(p.spec.stop_signal)} to pid {p.pid}")
            self.send(p, p.spec.stop_signal, reason)
            p.timer = self.loop.call_later(p.spec.stop_timeout, self.stop_timed_out, p, p.pid)
        await p.exited.wait()

    def send(self, p: Program, signo: int, reason: str) -> None:
        delivered = p.send_signal(signo)
        self.record_signal(p, p.pid, signo, action="delivered" if delivered else "not-delivered", reason=reason)

    def record_signal(self, p: Program | None, pid: int, signo: int, *, code: str = "SI_USER",
                      sender: dict | None = None, via: str = "supervisor", **fields) -> None:
        """One `signal` audit event (defaults: sent by the supervisor itself)."""
        if sender is None and via == "supervisor":
            sender = {"pid": os.getpid(), "program": "supervisor"}
        event = self.audit("signal", signal=signal_name(signo), signo=signo, code=code,
                           target={"program": p.name if p else None, "pid": pid}, sender=sender, via=via, **fields)
        if p is not None:
            p.recent_events.append(event)

    def stop_timed_out(self, p: Program, pid: int) -> None:
        p.timer = None
        if p.pid != pid or p.state != STOPPING:
            return
        log.warning("%s: did not exit %gs after %s: SIGKILL to process group %d", p.name,
                    p.spec.stop_timeout, signal_name(p.spec.stop_signal), pid)
        self.record_signal(p, pid, signal.SIGKILL, action="delivered", reason="stop-timeout-kill")
        p.stop_reason = f"{p.stop_reason}; SIGKILL after stop_timeout {p.spec.stop_timeout:g}s"
        try:    # the main process is not reaped yet, so its pid (the group id) is still ours
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def stop_in_order(self, targets: list[Program], reason: str) -> None:
        """Stop `targets`, dependents before what they depend on."""
        remaining = list(targets)
        while remaining:
            layer = [p for p in remaining if not any(q in remaining for q in self.dependents(p))]
            await asyncio.gather(*(self.stop(p, reason) for p in layer))
            remaining = [p for p in remaining if p not in layer]

    async def shutdown(self) -> None:
        self.shutting_down = True
        self.service.stopping()
        for p in self.programs.values():
            p.wanted = False
        await self.stop_in_order(list(self.programs.values()), "supervisor shutdown")
        await self.end_leftovers()
        if self.redis_conn is not None:
            await self.redis_conn[1].aclose()
            self.redis_conn = None
        for p in self.programs.values():
            self.release_output(p)
        log.info("supervisor: all programs stopped, exiting")

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
            except asyncio.TimeoutError:
                pass

    # --- operators (relayqctl) ---------------------------------------------------------

    def resolve(self, names: list[str]) -> list[Program]:
        """`worker` selects all its instances, `worker:1` one; unknown names -> code 4."""
        out: list[Program] = []
        for name in names:
            found = [self.programs[name]] if name in self.programs else self.instances(name)
            if not found:
                known = ", ".join(sorted({p.base for p in self.programs.values()} | set(self.programs)))
                raise ProtocolError(f"unknown program name {name!r} (known: {known})", code=4)
            out.extend(p for p in found if p not in out)
        return out

    def with_dependencies(self, targets: list[Program]) -> list[Program]:
        out, todo = [], list(targets)
        while todo:
            p = todo.pop()
            if p in out:
                continue
            out.append(p)
            todo.extend(q for dep in p.spec.depends_on for q in self.instances(dep))
        return [p for p in self.programs.values() if p in out]      # dependency order

    def with_dependents(self, targets: list[Program]) -> list[Program]:
        out, todo = [], list(targets)
        while todo:
            p = todo.pop()
            if p not in out:
                out.append(p)
                todo.extend(self.dependents(p))
        return [p for p in self.programs.values() if p in out]

    async def operator_start(self, targets: list[Program], who: str) -> None:
        """Start them (and what they depend on); return once each runs or has failed."""
        before = {p.name: p.starts for p in targets}
        for p in self.with_dependencies(targets):
            if p.state in (RUNNING, STARTING) and p.wanted:
                continue
            p.wanted = True
            p.tracker.reset()       # an operator start forgets the failure streak and window
            if p.state in (FATAL, EXITED):
                p.set_state(STOPPED, who)
            elif p.state == BACKOFF:
                p.cancel_timer()
                p.start_due = True
            log.info("%s: start requested (%s)", p.name, who)
        self.reconcile()
        await self.wait_until(lambda: None if any(self.start_outcome(p, before[p.name]) is None for p in targets)
                              else True)

    def start_outcome(self, p: Program, starts_before: int):
        if p.state == RUNNING:
            return Outcome(p.name, p.state, True, f"running, pid {p.pid}")
        started = p.starts > starts_before
        if p.state in (FATAL, EXITED) or (p.state == BACKOFF and started) or (p.state == STOPPED and not p.wanted):
            return Outcome(p.name, p.state, False, p.reason)
        for dep in p.spec.depends_on:
            for d in self.instances(dep):
                if d.state in (FATAL, EXITED) or not d.wanted:
                    return Outcome(p.name, p.state, False, f"dependency {d.name} is {d.state}: {d.reason}")
        return None

    async def operator_stop(self, targets: list[Program], who: str) -> None:
        for p in targets:
            p.wanted = False
        await self.stop_in_order(targets, who)

    def final_outcome(self, cmd: str, p: Program) -> Outcome:
        if cmd == "stop":
            return Outcome(p.name, p.state, p.state == STOPPED, p.reason)
        ok = p.state == RUNNING
        return Outcome(p.name, p.state, ok, f"running, pid {p.pid}" if ok else p.reason)

    async def operator_restart(self, targets: list[Program], who: str) -> None:
        await self.stop_in_order(targets, who)
        await self.operator_start(targets, who)

    def why(self, p: Program) -> dict:
        return {"program": p.status(), "last_stop": p.last_stop}

    async def reload(self, who: str) -> dict:
        """Re-read the config: a broken one changes nothing; otherwise only what changed
        is stopped, started or restarted."""
        try:
            new = load_config(self.config.path)
        except ConfigError as e:
            raise ProtocolError(str(e), code=2) from None
        log.info("supervisor: reloading %s (%s)", new.path, who)
        self.service.reloading()
        try:
            changes = await self.apply_config(new)
        finally:
            self.service.reloaded()
        self.ground.config_loaded()
        log.info("supervisor: reloaded: %s", ", ".join(f"{k} {v}" for k, v in changes.items() if v) or "nothing changed")
        return {"changes": changes}

    def refuse_reload(self, new: Config) -> str | None:
        """What a reload cannot change under a running Redis (the supervisor must restart)."""
        old, fresh = self.config.redis, new.redis
        if (old is None) != (fresh is None):
            return "adding or removing [redis] needs a restart of the supervisor"
        if old is not None and (old.redis.dir, old.redis.binary) != (fresh.redis.dir, fresh.redis.binary):
            return "a new [redis] dir or binary needs a restart of the supervisor (its locks and ACL follow them)"
        return None

    async def apply_config(self, new: Config) -> dict:
        refusal = self.refuse_reload(new)
        if refusal:
            raise ProtocolError(f"{new.path}: {refusal}; nothing changed", code=1)
        old = {spec.name: spec for spec in self.config.programs}
        fresh = {spec.name: spec for spec in new.programs}
        removed = [n for n in old if n not in fresh]
        added = [n for n in fresh if n not in old]
        taken = []
        try:        # locks first: a program owned elsewhere changes nothing
            for name in added:
                self.take_program_lock(name, self.config.supervisor.run_dir)
                taken.append(name)
        except StartupError as e:
            for name in taken:
                self.locks.pop(name).release()
            raise ProtocolError(f"{e}; nothing changed", code=1) from None
        resized, changed = [], []
        for name in fresh.keys() & old.keys():
            if fresh[name] == old[name]:
                continue
            same_but_count = dataclasses.replace(old[name], numprocs=fresh[name].numprocs) == fresh[name]
            # 1 <-> N renames the instances (redis vs worker:0): that is a change, not a resize
            if same_but_count and old[name].numprocs > 1 and fresh[name].numprocs > 1:
                resized.append(name)
            else:
                changed.append(name)
        keep_names = {n for name in resized for n in fresh[name].instance_names()}
        going = [p for p in self.programs.values()
                 if p.base in removed or p.base in changed or (p.base in resized and p.name not in keep_names)]
        await self.stop_in_order(going, "reload")
        for p in going:
            self.release_output(p)
        for name in removed:
            self.locks.pop(name).release()
        programs: dict[str, Program] = {}
        for spec in new.programs:
            for name in spec.instance_names():
                p = self.programs.get(name)
                if p is None or p in going:
                    p = Program(spec, name)
                    p.listener = self.on_state_change
                p.spec = spec
                programs[name] = p
        self.programs = programs
        not_applied = [f.name for f in dataclasses.fields(new.supervisor)
                       if getattr(new.supervisor, f.name) != getattr(self.config.supervisor, f.name)]
        # [supervisor] (run_dir, log_dir, socket, ...) stays as it runs until a restart
        self.config = dataclasses.replace(new, supervisor=self.config.supervisor)
        self.index_programs()
        if new.redis is not None:
            try:
                self.worker_redis_url = redis_server.client_url(new.redis)
            except ValueError as e:
                log.error("supervisor: %s; children keep the old RELAYQ_REDIS_URL", e)
        self.reconcile()
        return {"added": added, "removed": removed, "changed": changed, "resized": resized,
                "not_applied": [f"[supervisor] {k}: restart the supervisor to apply" for k in not_applied]}

    def doctor_target(self) -> doctor.DoctorTarget:
        return doctor_target(self.config, {os.getpid(), *self.by_pid})

    # --- status ------------------------------------------------------------------------------

    def status_notes(self) -> list[str]:
        notes = []
        if self.ground.config_changed:
            notes.append("config changed on disk since load")
        if self.tap is not None and self.tap.unavailable:
            notes.append(f"signal tap: {self.tap.state}")
        return notes

    def status(self) -> dict:
        redis = self.config.redis
        return {
            "supervisor": {
                "pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started_mono, 3),
                "started_at": self.started_wall, "config": self.config.path,
                "redis_binary": redis.redis.binary if redis else None, "redis_version": self.redis_version,
                "hostname": socket.gethostname(),
                "signal_tap": self.tap.state if self.tap is not None else "off (signal_tap = false)",
                "config_changed": self.ground.config_changed,
                "notes": self.status_notes(),
            },
            "programs": [p.status() for p in self.programs.values()],
        }


def doctor_target(config: Config, own_pids) -> doctor.DoctorTarget:
    redis = config.redis
    return doctor.DoctorTarget(redis_port=redis.redis.port if redis else None,
                               redis_dir=redis.redis.dir if redis else None,
                               program_commands=tuple(s.command for s in config.programs if s.redis is None),
                               own_pids=frozenset(own_pids), own_config=config.path)


def own_children() -> list[int]:
    """Direct children of this process, from /proc (cheap: no scan of all processes)."""
    pids = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return pids
