"""RedisKind: Redis as a kind of program (the package's docstring says what each part does)."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis.exceptions

from relayq_supervisor.config.model import ProgramSpec, RedisSpec
from relayq_supervisor.config.redis import redis_version
from relayq_supervisor.errors import AclSetupError, StartupError
from relayq_supervisor.kinds import Adoptable
from relayq_supervisor.kinds.redis import acl, conf, credentials, server
from relayq_supervisor.kinds.redis.data_dir import (
    DATA_DIR_LOCK,
    Handover,
    prepare_data_dir,
    record_name,
    remove_stale_records,
    trusted_record,
)
from relayq_supervisor.kinds.redis.health import RedisHealth
from relayq_supervisor.kinds.redis.liveness import pinger
from relayq_supervisor.linux.procfs import proc_start_ticks, user_name
from relayq_supervisor.printable import escape
from relayq_supervisor.witness.identity import ProcessIdentity

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from relayq_supervisor.kinds import Cancellable, KindContext, Program, StopCalls

log = logging.getLogger(__name__)

READY_POLL_MAX_S = 0.2
# How long a refused SHUTDOWN's cause may take to reach us through Redis' output pipe.
CAUSE_WAIT_S = 1.0
# Redis log lines: `pid:role date time LEVEL message`, `#` being a warning.
_WARNING_LINE_RE = re.compile(r"^\d+:[A-Z] .*? # (.*)$")


class RedisKind:
    sign_of_life = "PONG"
    # A SIGKILL while Redis writes its final dump would lose every write since the last
    # one on disk: after stop_timeout it is reported, not killed (`stop --force` kills).
    kill_on_stop_timeout = False
    ready_by_notify = False     # RUNNING only after the CONFIG GET check, whatever Redis 7 notifies

    def __init__(self, spec: ProgramSpec, ctx: KindContext, *, admin: credentials.AdminCredentials | None = None,
                 version: str | None = None, node_users: dict[str, credentials.AdminCredentials] | None = None):
        assert spec.redis is not None
        self.spec = spec
        self.redis: RedisSpec = spec.redis
        self.ctx = ctx
        self.admin = admin
        self.node_users = node_users or {}  # [cluster]: node -> the user it publishes as
        self.version = version
        self.url: str | None = None         # RELAYQ_REDIS_URL
        self._clients: dict[float | None, aioredis.Redis] = {}
        self.health: RedisHealth | None = None
        self.previous: dict[str, Any] | None = None   # the Redis a crashed predecessor recorded
        self.flock_holder: dict[str, Any] | None = None   # who held the data dir's flock file (not a supervisor)
        if admin is not None:
            self._set_url()

    # --- start-up and each start ---------------------------------------------------

    @property
    def lock_path(self) -> str:
        """The data dir's own flock: what other tools (and supervisors in another network
        namespace) see. Redis' user may delete it; it holds no record anyone trusts."""
        return os.path.join(self.redis.dir, DATA_DIR_LOCK)

    @property
    def record_path(self) -> str:
        """The owner record of the data dir, with the Redis it runs: in run_dir, where only the
        supervisor writes, named by the data dir (data_dir.record_name)."""
        return os.path.join(self.ctx.supervisor.run_dir, record_name(self.redis.dir))

    def prepare(self) -> None:
        r = self.redis
        why = ": two servers on one data directory would overwrite each other's dump"
        # a second supervisor on this data dir is refused by its abstract name, which no file
        # operation of Redis' user can free, then by the flock of our record in run_dir
        self.ctx.locks.hold_name("redis-dir", r.dir, self.record_path, f"Redis data directory {r.dir}", why)
        # what a predecessor recorded, read before our record replaces it; kept in ours
        # while that Redis lives, so a refused start cannot erase the trail to it
        recorded = (trusted_record(self.record_path) or trusted_record(self.lock_path) or {}).get("redis")
        self.previous = recorded if isinstance(recorded, dict) and _still_running(recorded) else None
        self.ctx.locks.take("redis-dir", self.record_path, f"Redis data directory {r.dir}", why,
                            keep={"redis_dir": os.path.realpath(r.dir),
                                  **({"redis": self.previous} if self.previous else {})})
        # records of data dirs configured before (`dir` changed): not held, no Redis of theirs left
        for path in remove_stale_records(self.ctx.supervisor.run_dir, self.record_path, _still_running):
            log.info("redis: removed %s, the record of a data dir no longer configured (held by nobody, "
                     "its Redis gone)", path)
        # once ours; not given to a new user while the previous user's Redis still runs in it
        self.given(prepare_data_dir(r.dir, self.spec.privileges, give=self.previous is None))
        # the data dir's flock file is advice for other tools: Redis' user may remove, replace or
        # flock it, and that must not keep the supervisor from starting; another supervisor
        # (root, maybe in another network namespace) holding it still refuses this one
        replaced = self.ctx.locks.take("redis-dir-flock", self.lock_path, f"Redis data directory {r.dir}", why,
                                       keep={"record": self.record_path}, take_from=self.not_a_supervisor)
        if replaced:
            self.ctx.audit("tamper", path=self.lock_path, what=f"{replaced}: made anew and taken",
                           **({"sender": self.flock_holder} if self.flock_holder else {}))
            log.warning("redis: %s was %s: made anew and taken (audited as tamper; the owner record is %s)",
                        self.lock_path, escape(replaced), self.record_path)
        self.version = redis_version(r.binary)
        try:
            self._set_url()
            self.admin = credentials.AdminCredentials.load_or_create(self.ctx.supervisor.run_dir)
            # one password file per node of the cluster: the operator copies each to its node
            self.node_users = {node: credentials.AdminCredentials.load_or_create(
                self.ctx.supervisor.run_dir, credentials.node_user_name(node), credentials.node_password_file(node))
                for node in r.cluster_nodes}
            if old := credentials.remove_shared_node_password(self.ctx.supervisor.run_dir):
                log.info("cluster: deleted %s, the shared node user's password: each node has its own user "
                         "now (redis-node-<node>.pass)", old)
            if self.node_users:
                for weakness in acl.acl_weaknesses(acl.version_tuple(self.version or "")):
                    log.warning("cluster: %s", weakness)
            self.write_acl()
        except (AclSetupError, ValueError) as e:
            raise StartupError(f"relayq-supervisor: cannot set up the Redis command guard: {e}") from None

    def not_a_supervisor(self, pid: int | None) -> str | None:
        """Why the process holding the data dir's flock file is no supervisor, so that it
        does not refuse this start; None when it may be one (or is unknown: refused). A
        supervisor that gives Redis a user runs as root: a holder of another uid is not one."""
        identity = self.ctx.name_process(pid) if pid and os.geteuid() == 0 else None
        uid = identity.get("uid") if identity is not None and identity.get("alive") else None
        if identity is None or uid is None or uid == 0:
            return None
        self.flock_holder = identity
        who = ProcessIdentity.from_dict(identity).describe()
        return f"flocked by {who}, uid {uid} ({identity.get('user') or '?'}): not a supervisor"

    def given(self, handover: Handover | None) -> None:
        """A data dir given to Redis' user: audited (`redis_dir_given`) and logged."""
        if handover is None:
            return
        h, priv = handover, self.spec.privileges
        from_user = user_name(h.from_uid) or f"uid {h.from_uid}"
        self.ctx.audit("redis_dir_given", program=self.spec.name, path=h.path, user=priv.user, uid=h.uid,
                       from_user=from_user, from_uid=h.from_uid, changed=h.changed, skipped=h.skipped, why=h.why)
        skipped = f"; {h.skipped} file(s) with several links not given: chown them by hand" if h.skipped else ""
        log.warning("%s: gave %s to Redis' user %s: %d entries of %s changed owner (%s)%s", self.spec.name, h.path,
                    priv.user, h.changed, from_user, h.why, skipped)

    def kept_files(self) -> list[str]:
        return [c.path for c in (self.admin, *self.node_users.values()) if c is not None and c.path]

    def restore_files(self) -> None:
        if self.admin is not None:
            credentials.save_credentials(self.admin)
            for node_user in self.node_users.values():  # the other nodes hold a copy: the same password again
                credentials.save_credentials(node_user)
            self.write_acl()

    async def adoptable(self) -> Adoptable | None:
        """The Redis on our port is the one our crashed predecessor started (same pid and
        start time as its record in the data-dir lock, and it takes our admin password):
        adopt it, no downtime. Anything else on the port is a rival: refused."""
        holder = server.port_holder(server.ping_host(self.spec), self.redis.port)
        if not holder:
            return None
        pid = server.listener_pid(self.redis.port)
        rec = self.previous
        if rec is None or pid is None or pid != rec.get("pid"):
            raise StartupError(self.port_message(holder))
        conn = self.client(timeout=1.0)
        try:
            await conn.ping()
        except (redis.exceptions.RedisError, OSError) as e:
            raise StartupError(
                f"port {self.redis.port} is held by pid {pid}, the Redis that the previous supervisor "
                f"(pid {rec.get('supervisor_pid', '?')}) started, but it does not answer this supervisor's admin "
                f"user ({e}): was the run_dir (and its redis-admin.pass) changed? Stop that Redis "
                f"(`kill -TERM {pid}`: it saves first) and start again") from None
        log.info("port %d: pid %d is the Redis the previous supervisor started; adopting it", self.redis.port, pid)
        verified = ["pid and start time match the data-dir lock record", "answers PING as the admin user"]
        try:
            # the ACL file prepare() wrote (a node added to [cluster] nodes) applies now, not at
            # Redis' next start; ACL LOAD keeps the old users whole if the file is refused
            await conn.execute_command("ACL", "LOAD")
            verified.append("ACL file loaded again")
        except (redis.exceptions.RedisError, OSError) as e:
            log.warning("redis: adopted pid %d keeps the users it started with: ACL LOAD failed (%s)", pid, e)
        exe = _exe(pid)
        if exe is not None and exe == rec.get("exe"):
            verified.insert(1, f"executable {exe} as recorded")
        else:   # e.g. the binary was upgraded in place: still ours (pid, start time, password), said as it is
            log.warning("redis: adopted pid %d runs %s, the record says %s", pid, exe, rec.get("exe"))
        return Adoptable(pid, tuple(verified))

    def record_running(self, pid: int) -> None:
        self.ctx.locks.note("redis-dir", redis={
            # the binary it execs, resolved as /proc/PID/exe shows it: noted at STARTING, when the
            # forked child may not have exec'd yet (its /proc/PID/exe would be our Python)
            "pid": pid, "start_ticks": proc_start_ticks(pid), "exe": os.path.realpath(self.redis.binary),
            "port": self.redis.port,
            "run_dir": self.ctx.supervisor.run_dir, "supervisor_pid": os.getpid()})

    def _set_url(self) -> None:
        self.url = server.client_url(self.spec)

    def port_message(self, holder: str) -> str:
        return (f"port {self.redis.port} is held by {holder}: stop and disable that manager first "
                "(`relayqctl doctor` lists rival managers)")

    def write_acl(self) -> str:
        """Checked before every start, so the file and the passwords always agree."""
        assert self.admin is not None
        return acl.write_acl_file(self.ctx.supervisor.run_dir, self.redis.denied_commands, acl.version_tuple(self.version or ""),
                                  self.admin, default_password=server.default_password(self.spec),
                                  owner=self.spec.privileges.uid,
                                  nodes=self.node_users, redis_node=self.redis.cluster_node)

    def preflight(self) -> str | None:
        holder = server.port_holder(server.ping_host(self.spec), self.redis.port)
        if holder:
            return self.port_message(holder)
        try:
            # a reload that changed Redis' user: the data dir the supervisor made goes with it
            self.given(prepare_data_dir(self.redis.dir, self.spec.privileges))
        except (StartupError, OSError) as e:
            return str(e).removeprefix("relayq-supervisor: ")
        try:
            self.write_acl()
        except (AclSetupError, OSError, ValueError) as e:
            return f"cannot write the Redis ACL file: {e}"
        try:
            conf.write_conf(self.ctx.supervisor.run_dir, self.redis, owner=self.spec.privileges.uid)
        except OSError as e:
            return f"cannot write the Redis config file in {self.ctx.supervisor.run_dir}: {e.strerror}"
        return None

    def argv(self, p: Program) -> list[str]:
        run_dir = self.ctx.supervisor.run_dir
        return server.redis_argv(self.spec, os.path.join(run_dir, conf.CONF_FILE),
                                 os.path.join(run_dir, acl.ACL_FILE))

    def environment(self) -> dict[str, str]:
        return {"RELAYQ_REDIS_URL": self.url} if self.url else {}

    # --- readiness and health ---------------------------------------------------------

    def client(self, timeout: float | None = None) -> aioredis.Redis:
        """An admin client (one per timeout: readiness and health use the default, the
        watchdog its own), made once: a client per start would cost a read of redis-py's
        package metadata on every restart."""
        if timeout not in self._clients:
            assert self.admin is not None
            extra = {} if timeout is None else {"timeout": timeout}
            self._clients[timeout] = server.client(self.spec, self.admin.username, self.admin.password, **extra)
        return self._clients[timeout]

    def major_version(self) -> int:
        try:
            return acl.version_tuple(self.version or "")[0]
        except ValueError:
            return 0

    def watch(self, p: Program, alive: Callable[[], None]) -> Cancellable | None:
        return pinger(self, self.ctx, p, self.spec.watchdog_sec, alive)

    def begin_ready_check(self, p: Program, on_ready: Callable[[str], None],
                          on_refused: Callable[[str], None]) -> Cancellable:
        return asyncio.get_running_loop().create_task(self._wait_ready(on_ready, on_refused),
                                                      name=f"{p.name} ready check")

    async def _wait_ready(self, on_ready: Callable[[str], None], on_refused: Callable[[str], None]) -> None:
        conn = self.client()
        delay = 0.01
        while not await server.is_ready(conn):      # LOADING (reading its dump) is not ready
            await asyncio.sleep(delay)
            delay = min(delay * 2, READY_POLL_MAX_S)
        want = conf.expected_persistence(self.redis)
        while True:
            try:
                got = {key: (await conn.config_get(key)).get(key) for key in want}
                break
            except (redis.exceptions.RedisError, OSError) as e:
                log.warning("redis: CONFIG GET failed (%s); trying again", e)
                await asyncio.sleep(READY_POLL_MAX_S)
        mismatch = conf.persistence_mismatch(want, got)
        if mismatch:
            on_refused(mismatch)
        else:
            on_ready("answered PING; persistence settings as configured")

    # --- stopping ----------------------------------------------------------------------

    def stop_method(self, save: bool) -> str:
        return "SHUTDOWN SAVE" if save else "SHUTDOWN NOSAVE"

    def begin_stop(self, p: Program, calls: StopCalls) -> Cancellable | None:
        return asyncio.get_running_loop().create_task(self._shutdown(p, calls), name=f"{p.name} shutdown")

    async def _shutdown(self, p: Program, calls: StopCalls) -> None:
        """SHUTDOWN SAVE as the admin user, not SIGTERM: SAVE writes the dump even with no save
        points, and a failed save comes back as an error reply (Redis then keeps running,
        https://redis.io/commands/shutdown) where a SIGTERM's failure is only in its log."""
        assert self.admin is not None
        command = self.stop_method(calls.save)
        # no reply timeout: the reply is the save's outcome, and a large dump takes long to write
        conn = server.client(self.spec, self.admin.username, self.admin.password, timeout=None)
        try:
            try:
                await asyncio.wait_for(conn.ping(), 2.0)
            except (redis.exceptions.RedisError, OSError, TimeoutError) as e:
                # not answering (not listening yet, LOADING, hung): its signal, which in Redis runs
                # the same shutdown sequence (a save only if save points are set)
                log.warning("%s: %s not possible (%s): SIGTERM instead", p.name, command, e or "no answer")
                calls.signal(signal.SIGTERM)
                return
            self.ctx.audit("stop_command", program=p.name, pid=p.pid, command=command, user=self.admin.username)
            try:
                await conn.execute_command(*command.split())
            except redis.exceptions.ResponseError as e:
                calls.refused(await self._refusal_cause(p, str(e)))
            except (redis.exceptions.ConnectionError, OSError):
                pass        # Redis closed the connection: it is exiting after a successful save
        finally:
            await conn.aclose()

    async def _refusal_cause(self, p: Program, reply: str) -> str:
        """Why SHUTDOWN failed, from Redis' own log lines (`Write error saving DB on disk: No
        space left on device`); its reply only says `Errors trying to SHUTDOWN. Check logs.`"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CAUSE_WAIT_S
        while True:
            lines = list(p.output_tail)
            # the lines of this attempt: after Redis' last "User requested shutdown..."
            start = max((i for i, line in enumerate(lines) if "User requested shutdown" in line), default=-1)
            warnings = [m.group(1) for m in map(_WARNING_LINE_RE.match, lines[start + 1:]) if m]
            causes = [w for w in warnings if not w.startswith("Errors trying to")]
            if (start >= 0 and causes and "can't exit" in causes[-1]) or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        detail = "; ".join(causes[:3]) if causes else "see its log"
        return f"its final save failed: {detail} (SHUTDOWN SAVE: {reply})"

    def start_duties(self, running: Callable[[], Program | None]) -> None:
        self.health = RedisHealth(self, self.ctx, running)
        self.health.start()

    async def close(self) -> None:
        if self.health is not None:
            self.health.close()
            self.health = None
        for conn in self._clients.values():
            await conn.aclose()
        self._clients = {}

    def with_spec(self, spec: ProgramSpec) -> RedisKind:
        # a node added to [cluster] nodes gets its user in the ACL file written before Redis' next start
        assert spec.redis is not None
        kept = {n: c for n, c in self.node_users.items() if n in spec.redis.cluster_nodes}
        fresh = RedisKind(spec, self.ctx, admin=self.admin, version=self.version, node_users=kept)
        if self.health is not None:
            fresh.health = self.health.moved_to(fresh)
            self.health = None
        return fresh

    def describe(self) -> dict[str, Any]:
        return {"redis_binary": self.redis.binary, "redis_version": self.version}


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _still_running(rec: dict[str, Any]) -> bool:
    """The recorded process is alive and is the same process (its start time matches)."""
    pid = rec.get("pid")
    return isinstance(pid, int) and pid > 0 and proc_start_ticks(pid) == rec.get("start_ticks")


def refuse_reload(old: ProgramSpec | None, new: ProgramSpec | None) -> str | None:
    """What a reload cannot change under a running Redis (the supervisor must restart)."""
    if (old is None) != (new is None):
        return "adding or removing [redis] needs a restart of the supervisor"
    if old is not None and new is not None and old.redis is not None and new.redis is not None and \
            (old.redis.dir, old.redis.binary) != (new.redis.dir, new.redis.binary):
        return "a new [redis] dir or binary needs a restart of the supervisor (its locks and ACL follow them)"
    return None
