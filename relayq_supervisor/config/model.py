"""The frozen dataclasses a config file becomes (Config, ProgramSpec, RedisSpec, ...), and
the names and constants they share. No validation here: the other modules of the package do it."""
from __future__ import annotations

import signal
from dataclasses import dataclass

REDIS_NAME = "redis"
REDIS_WATCHDOG_SEC = 15.0           # no PONG for this long: Redis is stuck
SUPERVISOR_NAME = "supervisor"      # `relayqctl logs supervisor`: the supervisor's own log


@dataclass(frozen=True)
class RestartPolicy:
    policy: str = "always"              # always | on-failure | never
    backoff_initial: float = 0.5
    backoff_factor: float = 2.0
    backoff_max: float = 60.0
    jitter: float = 0.1
    stable_after: float = 10.0
    start_limit_burst: int = 5          # 0 = no start limit: never FATAL for restarting too often
    start_limit_interval: float = 60.0


@dataclass(frozen=True)
class RedisSpec:
    binary: str                         # resolved absolute path
    port: int = 6379
    bind: tuple[str, ...] = ("127.0.0.1",)
    dir: str = ""
    args: tuple[str, ...] = ()          # as written, for the warnings about what argv overrides
    # redis.conf directives in file order, each (name, words): `[redis] args` translated, then
    # `[redis.config]`. The supervisor writes them to a file; only what must win goes on argv.
    directives: tuple[tuple[str, tuple[str, ...]], ...] = ()
    include: tuple[str, ...] = ()       # the operator's own redis.conf files, read after ours
    supervised: str = "systemd"
    password_file: str = ""             # the `default` user's password (0600 file); "" = none
    # [cluster] nodes on the Redis node: one ACL user `relayq-node-<node>` each
    cluster_nodes: tuple[str, ...] = ()
    cluster_node: str = ""              # [cluster] node on the Redis node: its own name
    # Commands the `default` user may not run (the Redis command guard).
    denied_commands: tuple[str, ...] = (
        "shutdown", "debug", "config|set", "config|rewrite", "replicaof", "slaveof",
        "failover", "module", "acl",
    )


# [redis] and [[program]] `limits`: rlimit names as systemd's Limit*= and setrlimit(2) call them.
RLIMITS = {"nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "core": "RLIMIT_CORE",
           "memlock": "RLIMIT_MEMLOCK", "as": "RLIMIT_AS"}
RLIM_INFINITY = -1                      # resource.RLIM_INFINITY on Linux


@dataclass(frozen=True)
class Privileges:
    """Who a program runs as, and its limits: applied in the child before exec
    (linux/credentials.py). Names were resolved here, at load, so the child makes
    plain syscalls only (no NSS lookup after fork)."""
    user: str | None = None             # None: the supervisor's own user
    uid: int | None = None              # set only when the child must change user (the supervisor is root)
    gid: int | None = None
    groups: tuple[int, ...] = ()        # supplementary groups (with uid)
    home: str = ""                      # HOME, USER, LOGNAME, SHELL for the child, as systemd's User= does
    shell: str = ""
    umask: int | None = None
    nice: int | None = None
    limits: tuple[tuple[str, int, int], ...] = ()     # (name, soft, hard); RLIM_INFINITY = unlimited
    no_new_privileges: bool = False

    @property
    def in_child(self) -> bool:
        """Whether anything must be done in the child before exec."""
        return (self.uid is not None or self.umask is not None or self.nice is not None
                or bool(self.limits) or self.no_new_privileges)


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    command: tuple[str, ...]
    numprocs: int = 1
    depends_on: tuple[str, ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    directory: str = ""
    stop_signal: int = int(signal.SIGTERM)
    stop_timeout: float = 10.0
    ready_after: float = 1.0
    autostart: bool = True
    # file | journal | both | inherit | auto (unset: file, and the journal too when the
    # supervisor's own lines go there: core/journal.py)
    log: str = "auto"
    protect: bool = False
    restart: RestartPolicy = RestartPolicy()
    redis: RedisSpec | None = None      # set only for the Redis program
    watchdog_sec: float = 0.0           # silence allowed after READY (0 = off)
    watchdog_signal: int = int(signal.SIGABRT)
    max_rss: int = 0                    # bytes, whole process group (0 = off)
    max_rss_interval: float = 5.0       # seconds between two RSS checks
    privileges: Privileges = Privileges()

    @property
    def watched(self) -> bool:
        return self.watchdog_sec > 0 or self.max_rss > 0

    def instance_names(self) -> list[str]:
        if self.numprocs == 1:
            return [self.name]
        return [f"{self.name}:{i}" for i in range(self.numprocs)]


@dataclass(frozen=True)
class ListenAddress:
    """Where the metrics endpoint listens: a TCP host and port, or a UNIX socket path."""
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.path:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


KERNEL_TRACE_AUTO = "auto"


@dataclass(frozen=True)
class SupervisorSpec:
    run_dir: str
    log_dir: str
    audit_log: str
    control_socket: str
    control_group: str | None = None
    audit_ignore: tuple[str, ...] = ("SIGCHLD", "SIGWINCH")
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    audit_max_bytes: int = 10 * 1024 * 1024
    audit_backups: int = 10
    health_interval: float = 5.0
    signal_tap: bool = True
    # the kernel witness (tracefs): "auto" where the kernel allows, "true" required, "false" off
    kernel_trace: str = "auto"
    # how long after the first trace event of a burst the witness reads (node/witnessing.py):
    # an exec'd program that lives longer is named with its argv, uid and unit
    kernel_trace_read_delay: float = 0.05
    doctor_root: str = "/"          # the file system whose units/cron the rival checks read
    metrics_listen: ListenAddress | None = None     # GET /metrics; None = off
    cgroups: bool = True            # each program run in a cgroup of its own where we may make one
    log_target: str = "auto"        # auto | journal | stderr: where our own lines go (core/journal.py)


@dataclass(frozen=True)
class ClusterSpec:
    """[cluster]: where this node publishes its status and audit events (cluster/)."""
    node: str                           # this node's name (default: the host name)
    redis_url: str = ""                 # "" = this node's own [redis]
    password_file: str = ""             # this node's `relayq-node-<node>` password; "" = the workers' credentials
    heartbeat_interval: float = 2.0     # seconds; silent for 3 intervals = stale
    nodes: tuple[str, ...] = ()         # on the Redis node: the members (this node always one of them)


@dataclass(frozen=True)
class Config:
    path: str
    supervisor: SupervisorSpec
    programs: tuple[ProgramSpec, ...]   # in dependency order: dependencies first
    cluster: ClusterSpec | None = None

    @property
    def remote_dependencies(self) -> tuple[str, ...]:
        """Names in depends_on met by another node: `redis` on a worker-only node of a cluster."""
        return (REDIS_NAME,) if self.cluster is not None and self.redis is None else ()

    @property
    def redis(self) -> ProgramSpec | None:
        return next((p for p in self.programs if p.redis is not None), None)

    def program(self, name: str) -> ProgramSpec | None:
        return next((p for p in self.programs if p.name == name), None)
