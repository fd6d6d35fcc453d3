"""The redis.conf the supervisor writes, and the check that Redis took it.

Redis reads its settings from `<run_dir>/redis.conf` (0600, owned by Redis' user when
`[redis] user` is set: it may hold secrets such as masterauth), generated before every
start from `[redis] args` and `[redis.config]`, with the operator's own files included last.
Only what must win goes on argv. After each start, `CONFIG GET` as the admin user shows
what Redis actually took: a persistence setting that differs from what the config asks
keeps Redis from being called RUNNING.
"""
from __future__ import annotations

import os
from typing import Any

from relayq_supervisor.config.model import RedisSpec

CONF_FILE = "redis.conf"
# What decides whether an acknowledged write survives a restart.
PERSISTENCE = ("appendonly", "appendfsync", "save", "dir", "dbfilename", "appendfilename")


def _quoted(word: str) -> str:
    # config/redis.py admits no quote, backslash or control character, so quoting needs no escapes;
    # an empty word ("") is how redis.conf writes an empty value.
    return f'"{word}"'


def conf_text(r: RedisSpec) -> str:
    lines = ["# Written by relayq-supervisor before each start of Redis, from [redis] args and [redis.config].",
             "# Do not edit: it is rewritten. port, bind, dir, daemonize, aclfile and supervised are on argv."]
    lines += [" ".join([name, *(_quoted(w) for w in words)]) for name, words in r.directives]
    # last: the operator's files may override what is above, and the check after start says so
    lines += [f"include {_quoted(path)}" for path in r.include]
    return "\n".join(lines) + "\n"


def write_conf(run_dir: str, r: RedisSpec, owner: int | None = None) -> str:
    """Write the file (0600, replaced atomically so a starting Redis never reads half of it);
    `owner`: Redis' user when it runs as one, the only user besides root that may read it."""
    path = os.path.join(run_dir, CONF_FILE)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)        # O_CREAT's mode does not apply to a file that existed
        if owner is not None:
            os.fchown(fd, owner, -1)
        os.write(fd, conf_text(r).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def expected_persistence(r: RedisSpec) -> dict[str, str]:
    """What the config asks of each persistence setting it names, as CONFIG GET words it."""
    want: dict[str, str] = {"dir": os.path.realpath(r.dir)}
    saves: list[str] = []
    for name, words in r.directives:
        if name == "save":
            saves += [w for w in words if w]
        elif name in PERSISTENCE:
            want[name] = " ".join(words)
    if any(name == "save" for name, _ in r.directives):
        want["save"] = " ".join(saves)
    return want


def _same(key: str, want: str, got: str) -> bool:
    if key == "dir":
        return os.path.realpath(got) == want
    if key in ("appendonly", "appendfsync"):
        return want.lower() == got.lower()
    return want == got


def persistence_mismatch(want: dict[str, str], got: dict[str, Any]) -> str | None:
    """The first setting Redis did not take as asked, worded for people; None if all match."""
    for key, value in want.items():
        actual = got.get(key)
        if isinstance(actual, bytes):
            actual = actual.decode("utf-8", "replace")
        if actual is None:
            return f"Redis does not report persistence setting '{key}' (CONFIG GET {key} is empty); " \
                   f"the config asks {value!r}"
        if not _same(key, value, actual):
            return f"persistence setting '{key}' is {actual!r} in Redis but the config asks {value!r} " \
                   "(an included file or a Redis version that reads it differently?)"
    return None
