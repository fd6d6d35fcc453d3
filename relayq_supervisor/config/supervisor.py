"""The [supervisor] table: directories, sockets, logs, audit, metrics; and reading that table
alone for relayqctl (load_supervisor_section, salvage_supervisor_section)."""
from __future__ import annotations

import os
import re
import signal
import tomllib
from pathlib import Path
from typing import Any

from relayq_supervisor.config.model import KERNEL_TRACE_AUTO, ListenAddress, SupervisorSpec
from relayq_supervisor.config.paths import _resolve
from relayq_supervisor.config.source import _Locator, _toml, read_config
from relayq_supervisor.config.values import _check_table, _signal_number, _str_list
from relayq_supervisor.errors import ConfigError

_SUPERVISOR_KEYS: dict[str, type | tuple[type, ...]] = {
    "run_dir": str, "log_dir": str, "audit_log": str, "control_socket": str,
    "control_group": str, "audit_ignore": list, "log_max_bytes": int, "log_backups": int,
    "audit_max_bytes": int, "audit_backups": int, "health_interval": (int, float),
    "signal_tap": bool, "kernel_trace": (str, bool), "doctor_root": str, "metrics_listen": str,
    "cgroups": bool, "kernel_trace_read_delay": (int, float),
    "log_target": str,
}

LOG_TARGETS = ("auto", "journal", "stderr")
READ_DELAY_RANGE = (0.01, 1.0)      # kernel_trace_read_delay, seconds


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
    delay = sup.get("kernel_trace_read_delay", 0.05)
    if not READ_DELAY_RANGE[0] <= delay <= READ_DELAY_RANGE[1]:
        raise loc.error(("supervisor", "kernel_trace_read_delay"),
                        f"'kernel_trace_read_delay' must be between {READ_DELAY_RANGE[0]:g} and "
                        f"{READ_DELAY_RANGE[1]:g} (seconds), not {delay!r}")
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
        kernel_trace_read_delay=float(delay),
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


def load_supervisor_section(path: str | os.PathLike) -> SupervisorSpec:
    """Only [supervisor] (socket, logs): what relayqctl needs to reach a supervisor even
    when the rest of the file on disk is broken (a reload will say what is wrong).
    ConfigError when the file is not TOML at all: see salvage_supervisor_section."""
    absolute, raw = read_config(path)
    data, text = _toml(raw, absolute)
    sup = data.get("supervisor", {})
    if not isinstance(sup, dict):
        raise ConfigError(f"{absolute}: supervisor: must be a table")
    return _parse_supervisor(_Locator(absolute, text), sup, Path(absolute).parent)


def salvage_supervisor_section(path: str | os.PathLike) -> SupervisorSpec:
    """Best effort for a file that is not valid TOML (someone is editing it while a
    supervisor runs on the version it loaded): the [supervisor] table's lines alone,
    each `key = value` line that parses on its own, defaults for the rest. Never raises
    for a syntax error; a key it could not read keeps its default."""
    path, raw = read_config(path)
    text = raw.decode("utf-8", "replace")
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
