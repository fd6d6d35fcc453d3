"""How a node connects to the cluster's Redis: the URL, its credentials (its own
`relayq-node-<node>` user, `relayq-view-<node>` to read), redis-py clients. Where the view
lives in that Redis: layout.py (re-exported here), which imports no redis-py.
"""
from __future__ import annotations

import inspect
import os
import urllib.parse
from typing import TYPE_CHECKING

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider
from redis.retry import Retry

from relayq_supervisor.cluster.layout import (  # noqa: F401  (re-exported: link.node_key, ...)
    NODE_KEEP_S,
    NODE_USER_PREFIX,
    NODES_KEY,
    PREFIX,
    STALE_INTERVALS,
    STREAM_MAXLEN,
    STREAM_MIN_PER_NODE,
    STREAM_PREFIX,
    ClusterUnreachable,
    node_key,
    node_user,
    stream_key,
    stream_maxlen,
    why_key,
)
from relayq_supervisor.config.model import Config
from relayq_supervisor.config.paths import read_secret
from relayq_supervisor.kinds.redis import credentials, server

if TYPE_CHECKING:
    from typing import Any


def cluster_url(config: Config) -> str:
    """[cluster] redis_url, else this node's own Redis as its workers reach it."""
    assert config.cluster is not None
    if config.cluster.redis_url:
        return config.cluster.redis_url
    redis_spec = config.redis           # the Redis node: its own [redis]
    assert redis_spec is not None       # config/cluster.py refuses [cluster] without either
    return server.client_url(redis_spec)


def quiet_handshake() -> dict[str, Any]:
    """redis-py options for a connect that runs no command a node user may not run.
    redis-py 5+ sends CLIENT SETINFO on every connect, and redis-py 8 (RESP3 by default)
    CLIENT MAINT_NOTIFICATIONS too: neither is one of NODE_COMMANDS, so each connection from
    a worker node (its supervisor's, each relayqctl's) left denials in ACL LOG that the Redis
    node audited as `redis DENIED client`. redis-py 8 takes `driver_info=None` and deprecates
    `lib_name`/`lib_version`, 5-7's way to skip SETINFO."""
    params = inspect.signature(redis.Redis.__init__).parameters
    options: dict[str, Any] = (
        {"driver_info": None} if "driver_info" in params else {"lib_name": None, "lib_version": None})
    if "maint_notifications_config" in params:
        from redis.maint_notifications import MaintNotificationsConfig
        options["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
    return options


def display_url(url: str) -> str:
    """The URL without its password, for logs and status lines."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def connection_options(config: Config, timeout: float, reader: bool = False) -> dict[str, Any]:
    """redis-py keyword arguments: host, port, db and TLS from the URL; this node's own user
    `relayq-node-<node>` with [cluster] password_file (`relayq-view-<node>`, read-only, for a
    `reader`: on Redis 6.x a node user reads no other node's keys); on the Redis node its own
    user, whose password the Redis node keeps in run_dir (when this process may read it: the
    supervisor, relayqctl as root); else whatever credentials the URL holds (the workers')."""
    assert config.cluster is not None
    url = cluster_url(config)
    parts = urllib.parse.urlsplit(url)
    options: dict[str, Any] = {
        "host": parts.hostname, "port": parts.port or 6379,
        "db": int(parts.path.strip("/") or 0),
        "username": urllib.parse.unquote(parts.username) if parts.username else None,
        "password": urllib.parse.unquote(parts.password) if parts.password else None,
        "socket_timeout": timeout, "socket_connect_timeout": timeout, "health_check_interval": 0,
        **quiet_handshake(),
    }
    if parts.scheme == "rediss":
        options["ssl"] = True
    node = config.cluster.node
    user = credentials.view_user_name(node) if reader else node_user(node)
    if config.cluster.password_file:
        try:
            options.update(username=user, password=read_secret(config.cluster.password_file))
        except ValueError as e:
            raise ClusterUnreachable(str(e)) from None
    elif config.redis is not None and not config.cluster.redis_url:
        own = os.path.join(config.supervisor.run_dir, credentials.node_password_file(node))
        options["credential_provider"] = OwnOrWorkers(user, own, options.pop("username"), options.pop("password"))
    return options


class OwnOrWorkers(CredentialProvider):
    """The Redis node's own user, its password read at each connect (the supervisor makes
    the file in its prepare, after its clients exist), else the workers' credentials (not
    made yet, or not ours to read: relayqctl run by another user)."""

    def __init__(self, user: str, password_file: str, url_user: str | None, url_password: str | None):
        self.user, self.password_file = user, password_file
        self.url_user, self.url_password = url_user, url_password

    def get_credentials(self) -> tuple[str, ...]:     # type: ignore[override]
        try:
            return self.user, read_secret(self.password_file)
        except ValueError:
            pass
        if self.url_password is None:
            return ()           # redis-py then sends no AUTH
        return (self.url_user, self.url_password) if self.url_user else (self.url_password,)

    async def get_credentials_async(self) -> tuple[str, ...]:     # type: ignore[override]
        return self.get_credentials()


def async_client(config: Config, timeout: float, reader: bool = False,
                 max_connections: int | None = None) -> aioredis.Redis:
    """The publisher's client; a `reader` (`relayq-view-<node>`) answers `cluster-status` for
    relayqctl (node/clustering.py), with at most `max_connections` to Redis."""
    # no retries inside redis-py: the publisher retries with its own backoff, in order
    return aioredis.Redis(retry=AsyncRetry(NoBackoff(), 0), max_connections=max_connections,
                          **connection_options(config, timeout, reader))


def sync_client(config: Config, timeout: float, reader: bool = False) -> redis.Redis:
    return redis.Redis(retry=Retry(NoBackoff(), 0), **connection_options(config, timeout, reader))
