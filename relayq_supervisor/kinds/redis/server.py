"""Redis specifics: its argv, its readiness, who holds its port."""
from __future__ import annotations

import errno
import logging
import socket
import urllib.parse

import psutil
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from relayq_supervisor.config.model import ProgramSpec, RedisSpec
from relayq_supervisor.config.paths import read_secret
from relayq_supervisor.linux.procfs import cgroup_unit, listeners

log = logging.getLogger(__name__)


def settings(spec: ProgramSpec) -> RedisSpec:
    """The [redis] settings of the Redis program (config/redis.py sets them on it alone)."""
    if spec.redis is None:
        raise ValueError(f"program {spec.name} is not Redis")
    return spec.redis


def redis_argv(spec: ProgramSpec, conf_path: str, acl_path: str) -> list[str]:
    """The config file, then only what must win over it (Redis applies command-line options
    after its config file): the supervisor owns the process in the foreground, its port,
    address, data directory and users. No secret is ever on it."""
    r = settings(spec)
    _warn_overridden(r.args)
    return [r.binary, conf_path, "--daemonize", "no", "--port", str(r.port), "--bind", *r.bind,
            "--dir", r.dir, "--aclfile", acl_path, "--supervised", r.supervised]


def _warn_overridden(args: tuple[str, ...]) -> None:
    for i, arg in enumerate(args):
        name = arg[2:].lower() if arg.startswith("--") else ""
        if name == "daemonize" and i + 1 < len(args) and args[i + 1].lower() == "yes":
            log.warning("'--daemonize yes' in [redis] args is overridden with 'no' "
                        "(a daemonized Redis would escape supervision)")
        elif name in ("port", "bind", "dir", "aclfile"):
            log.warning("'%s' in [redis] args is overridden by the supervisor's [redis] settings", arg)


def ping_host(spec: ProgramSpec) -> str:
    addr = settings(spec).bind[0].lstrip("-")
    if addr in ("0.0.0.0", "*"):
        return "127.0.0.1"
    if addr in ("::", "::*"):
        return "::1"
    return addr


def client_url(spec: ProgramSpec) -> str:
    """The URL the workers (the `default` user) use: RELAYQ_REDIS_URL."""
    r = settings(spec)
    auth = ""
    if r.password_file:
        auth = ":" + urllib.parse.quote(read_secret(r.password_file), safe="") + "@"
    host = ping_host(spec)
    host = f"[{host}]" if ":" in host else host
    return f"redis://{auth}{host}:{r.port}/0"


def default_password(spec: ProgramSpec) -> str | None:
    r = settings(spec)
    return read_secret(r.password_file) if r.password_file else None


def client(spec: ProgramSpec, username: str | None = None, password: str | None = None,
           timeout: float | None = 0.5) -> aioredis.Redis:
    # no retries: a slow answer must show as one, not be hidden (or repeated) by redis-py
    return aioredis.Redis(host=ping_host(spec), port=settings(spec).port, username=username,
                          password=password, socket_timeout=timeout, socket_connect_timeout=timeout,
                          retry=Retry(NoBackoff(), 0), health_check_interval=0)


async def is_ready(conn: aioredis.Redis) -> bool:
    """PONG = ready; LOADING (still reading its dump) or no answer = not yet."""
    try:
        return bool(await conn.ping())
    except (redis.exceptions.RedisError, OSError):
        return False


def port_holder(host: str, port: int) -> str | None:
    """None if `port` is free on `host`; else a description of who holds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a TIME_WAIT left by our own previous Redis is not a holder
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return None
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                return None
    return describe_listener(port) or "an unknown process (not visible from here)"


def listener_pid(port: int) -> int | None:
    """The pid listening on `port` (any address), None when none is visible."""
    return next((pid for pid in listeners(port) if pid), None)


def describe_listener(port: int) -> str | None:
    pid = listener_pid(port)
    return describe_pid(pid) if pid is not None else None


def command_text(cmdline: list[str]) -> str:
    """argv as one line, without the padding a rewritten process title leaves: Redis
    writes `redis-server 127.0.0.1:6379` over its argv area and pads it with spaces."""
    return " ".join(cmdline).rstrip() or "?"


def describe_pid(pid: int) -> str:
    try:
        cmdline = command_text(psutil.Process(pid).cmdline())
    except psutil.Error:
        cmdline = "?"
    text = f"pid {pid} ({cmdline})"
    unit = cgroup_unit(pid)
    return f"{text} of {unit.name}" if unit else text
