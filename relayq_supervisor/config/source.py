"""The TOML text itself: decoding and parsing it with `PATH:LINE:` errors, finding the line of
a key path (_Locator) for every later error, refusing NUL bytes in any string."""
from __future__ import annotations

import os
import re
import tomllib

from relayq_supervisor.errors import ConfigError, ConfigSyntaxError


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


def read_config(path: str | os.PathLike) -> tuple[str, bytes]:
    """(the config's absolute path, its bytes), or ConfigError naming why it cannot be read."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            return path, f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
