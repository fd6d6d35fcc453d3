"""Typed and bounded values: the schema check of a table (types, NaN/inf, upper bounds),
lists of strings, environments, signals, sizes."""
from __future__ import annotations

import math
import re
import signal

from relayq_supervisor.config.source import _Locator

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

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
