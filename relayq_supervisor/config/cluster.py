"""The [cluster] table: this node's name, the Redis URL it publishes to, the members."""
from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path

from relayq_supervisor.config.model import ClusterSpec
from relayq_supervisor.config.paths import _resolve, read_secret
from relayq_supervisor.config.source import _Locator
from relayq_supervisor.config.values import _NAME_RE, _check_table, _str_list

_CLUSTER_KEYS = {"node": str, "redis_url": str, "password_file": str, "heartbeat_interval": (int, float),
                 "nodes": list}


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
