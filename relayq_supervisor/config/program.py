"""[[program]] tables: name, command, restart policy, watchdog, log choice; the dependency
order of all programs; the $VARs their commands use."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from relayq_supervisor.command_vars import referenced
from relayq_supervisor.config.model import REDIS_NAME, SUPERVISOR_NAME, Config, ProgramSpec, RestartPolicy
from relayq_supervisor.config.paths import NAME_MAX, _check_directory, _resolve
from relayq_supervisor.config.privileges import _PRIVILEGE_KEYS, _privileges
from relayq_supervisor.config.source import _Locator
from relayq_supervisor.config.values import _NAME_RE, _check_table, _environment, _stop_signal, _str_list, parse_size

# Names a program may not take: `redis` is the [redis] table's, `supervisor` would
# share <run_dir>/supervisor.lock and <log_dir>/supervisor.log with the supervisor itself.
RESERVED_NAMES = {REDIS_NAME: "the [redis] table", SUPERVISOR_NAME: "the supervisor's own lock file"}

_RESTART_KEYS = {
    "policy": str, "backoff_initial": (int, float), "backoff_factor": (int, float),
    "backoff_max": (int, float), "jitter": (int, float), "stable_after": (int, float),
    "start_limit_burst": int, "start_limit_interval": (int, float),
}
_PROGRAM_KEYS = {
    "name": str, "command": list, "numprocs": int, "depends_on": list, "environment": dict,
    "directory": str, "stop_signal": (str, int), "stop_timeout": (int, float),
    "ready_after": (int, float), "autostart": bool, "log": str, "protect": bool, "restart": dict,
    "watchdog_sec": (int, float), "watchdog_signal": (str, int), "max_rss": (str, int), "max_rss_interval": (int, float),
}
_PROGRAM_KEYS.update(_PRIVILEGE_KEYS)


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


def _watchdog_settings(loc: _Locator, where: tuple, table: dict) -> dict:
    watchdog_sec = table.get("watchdog_sec", 0)
    if watchdog_sec < 0 or watchdog_sec != watchdog_sec or watchdog_sec == float("inf"):
        raise loc.error(where + ("watchdog_sec",), "'watchdog_sec' must be a finite number of seconds, 0 = off")
    try:
        max_rss = parse_size(table.get("max_rss", 0))
    except ValueError as e:
        raise loc.error(where + ("max_rss",), f"'max_rss': {e}") from None
    out = {"watchdog_sec": float(watchdog_sec), "max_rss": max_rss}
    if "max_rss_interval" in table:
        interval = table["max_rss_interval"]
        if not 0.1 <= interval <= 3600:         # NaN fails both comparisons
            raise loc.error(where + ("max_rss_interval",),
                            "'max_rss_interval' must be 0.1 to 3600 seconds between two RSS checks")
        out["max_rss_interval"] = float(interval)
    if "watchdog_signal" in table:
        out["watchdog_signal"] = _stop_signal(loc, where + ("watchdog_signal",), table["watchdog_signal"])
    return out


LOG_CHOICES = ("file", "journal", "both", "inherit", "auto")


def _log_choice(loc, where: tuple, table: dict) -> str:
    log = table.get("log", "auto")
    if log not in LOG_CHOICES:
        raise loc.error(where + ("log",), f"'log' must be \"file\", \"journal\", \"both\", \"inherit\" or \"auto\" "
                                          f"(the file, and the journal under systemd), not {log!r}")
    return log


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


# What the supervisor adds to every child's environment (core/launching.environment), besides
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
