"""The Redis command guard: the ACL file that keeps ordinary clients from stopping or
reconfiguring Redis and from writing the cluster view, the supervisor's admin user, and
one user per cluster node that writes only its own node's keys.

In the incident Redis logged `User requested shutdown...`: a client's SHUTDOWN. With
this ACL the `default` user (the workers) gets NOPERM instead, Redis keeps running,
and the ACL LOG entry (acl_log.py) names the client, which witness/socket_holder.py turns into a pid.

Split by concern: `credentials` (password files), `acl` (this: the rules and the file),
`acl_log` (reading ACL LOG). The
names of the other two are re-exported here for the callers that knew one module.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re

from relayq_supervisor.config.redis import is_command_name
from relayq_supervisor.errors import AclSetupError
from relayq_supervisor.kinds.redis.acl_log import AclLogReader, Denial, parse_client_info
from relayq_supervisor.kinds.redis.credentials import (
    ADMIN_USER,
    NODE_USER_PREFIX,
    PASSWORD_FILE,
    AdminCredentials,
    holds_exactly,
    node_password_file,
    node_user_name,
    remove_shared_node_password,
    save_credentials,
    view_user_name,
    write_private_file,
)

__all__ = [
    "ADMIN_USER", "NODE_USER_PREFIX", "PASSWORD_FILE", "AclLogReader", "AdminCredentials", "Denial",
    "node_password_file", "node_user_name", "parse_client_info",
    "remove_shared_node_password", "save_credentials",
]

log = logging.getLogger(__name__)

CLUSTER_PREFIX = "relayq-cluster:"      # cluster/link.py's key layout
NODE_COMMANDS = (
    "ping", "hello", "client|setname", "client|getname", "client|id", "select", "echo", "time",
    "get", "set", "mget", "del", "exists", "expire", "ttl", "pttl", "type",
    "hset", "hget", "hgetall", "hdel",
    "zadd", "zrange", "zrangebyscore", "zremrangebyscore", "zrem", "zcard",
    "xadd", "xrange", "xrevrange", "xread", "xlen", "xtrim",
    "eval",         # the publisher's batch of XADDs in one round trip (the ACL applies inside)
    "publish", "subscribe", "unsubscribe",
)
# What relayq-view-<node> may run: the reads of cluster/view.py, nothing that writes.
VIEW_COMMANDS = (
    "ping", "hello", "client|setname", "client|getname", "client|id", "select", "echo", "time",
    "get", "mget", "exists", "ttl", "pttl", "type", "hget", "hgetall",
    "zrange", "zrangebyscore", "zcard", "xrange", "xrevrange", "xread", "xlen",
)
ACL_FILE = "redis-users.acl"

CHANNEL_RULES_SINCE = (6, 2)      # `&pattern` (pub/sub channel permissions)
READ_ONLY_KEYS_SINCE = (7, 0)     # `%R~pattern` (read-only key permissions)
SUBCOMMAND_DENY_SINCE = (7, 0)    # `-command|subcommand`
ACL_SINCE = (6, 0)
# Commands of the default deny list that not every ACL-capable Redis has: `-name` of
# an unknown command makes Redis refuse the whole ACL file (and so refuse to start).
COMMAND_SINCE = {"failover": (6, 2)}

# Before 7.0 a single subcommand cannot be removed: the whole command is denied and
# its other subcommands re-allowed. These are the subcommands Redis 6.x knows.
SUBCOMMANDS_6 = {
    "acl": ("cat", "deluser", "genpass", "getuser", "help", "list", "load", "log", "save",
            "setuser", "users", "whoami"),
    "client": ("caching", "getname", "getredir", "help", "id", "info", "kill", "list",
               "no-evict", "pause", "reply", "setname", "tracking", "trackinginfo",
               "unblock", "unpause"),
    "config": ("get", "help", "resetstat", "rewrite", "set"),
    "latency": ("doctor", "graph", "help", "history", "latest", "reset"),
    "memory": ("doctor", "help", "malloc-stats", "purge", "stats", "usage"),
    "module": ("help", "list", "load", "unload"),
    "object": ("encoding", "freq", "help", "idletime", "refcount"),
    "pubsub": ("channels", "help", "numpat", "numsub"),
    "script": ("debug", "exists", "flush", "help", "kill", "load"),
    "slowlog": ("get", "help", "len", "reset"),
}


def version_tuple(text: str) -> tuple[int, ...]:
    """"7.0.15" -> (7, 0, 15); also takes `redis-server --version`'s "v=7.0.15" and
    suffixes like "7.2.0-rc1" (the digits of each part up to the first non-digit)."""
    m = re.search(r"(\d+(?:\.\d+)*)", text or "")
    if not m:
        raise ValueError(f"not a Redis version: {text!r}")
    return tuple(int(part) for part in m.group(1).split("."))

# --- the ACL file -----------------------------------------------------------------

def acl_rules(denied: tuple[str, ...], version: tuple[int, ...]) -> list[str]:
    """The rule tokens that follow `user default on nopass|>pw ~* &*` ... for `version`.

    7.0+: `+@all -shutdown -config|set ...`. 6.x cannot remove one subcommand, so a
    command with denied subcommands is denied whole and its other subcommands re-allowed
    (`-config +config|get +config|help +config|resetstat`)."""
    if tuple(version[:2]) < ACL_SINCE:
        raise AclSetupError(f"Redis {'.'.join(map(str, version))} has no ACLs "
                            "(the command guard needs Redis 6.0 or newer)")
    whole: list[str] = []
    subs: dict[str, list[str]] = {}
    for item in denied:
        token = item.strip().lower()
        # config/redis.py checked the configured list; this guards every other caller.
        if not is_command_name(token):
            raise AclSetupError(f"denied command {item!r} is not a command name "
                                "(write e.g. \"shutdown\" or \"config|set\")")
        command, _, sub = token.partition("|")
        since = COMMAND_SINCE.get(command)
        if since and tuple(version[:2]) < since:
            log.info("%s does not exist before Redis %s; nothing to deny",
                     command, ".".join(map(str, since)))
            continue
        if sub:
            subs.setdefault(command, [])
            if sub not in subs[command]:
                subs[command].append(sub)
        elif command not in whole:
            whole.append(command)

    rules = ["+@all"]
    for command in whole:
        rules.append(f"-{command}")
    for command, denied_subs in subs.items():
        if command in whole:
            continue
        if tuple(version[:2]) >= SUBCOMMAND_DENY_SINCE:
            rules.extend(f"-{command}|{sub}" for sub in denied_subs)
            continue
        known = SUBCOMMANDS_6.get(command)
        rules.append(f"-{command}")
        if known is None:
            log.warning("Redis %s cannot deny %s without denying all of %s "
                        "(subcommand rules need 7.0); denying all of %s",
                        ".".join(map(str, version)),
                        ", ".join(f"{command}|{s}" for s in denied_subs), command, command)
            continue
        rules.extend(f"+{command}|{sub}" for sub in known if sub not in denied_subs)
    return rules


def _password_rule(password: str) -> str:
    # `#<sha256>` rather than `>password`: Redis accepts either, and this way the ACL
    # file (and ACL LIST) never holds the password itself.
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def keys_outside(prefix: str) -> list[str]:
    """Glob patterns that match every name except those starting with `prefix`: an ACL
    pattern can only allow, so "all but the cluster view" is spelt as the names that differ
    from `prefix` at some position i (`prefix[:i][^c]*`) or are a proper prefix of it. The
    empty name matches none of them. Checked by Redis 6.2 and 7.0 alike (stringmatchlen)."""
    assert not set(prefix) & set("*?[]\\^"), prefix
    return [f"{prefix[:i]}[^{c}]*" for i, c in enumerate(prefix)] + [prefix[:i] for i in range(1, len(prefix))]


def node_user_line(node: str, creds: AdminCredentials, version: tuple[int, ...], redis_node: bool = False) -> str:
    """`user relayq-node-<node> ...`: what node `node` publishes (its status, its `why`, its
    audit stream), on 7.0+ read access to the rest of the cluster view (the index of names too:
    the Redis node writes the declared members there, cluster/publisher.py),
    its own question channel and the answer channels, only the commands cluster/ uses.
    Everything else (SHUTDOWN, CONFIG, ACL, FLUSHALL, the workers' keys, another node's
    keys) is NOPERM, and ACL LOG names the user that tried it.

    Redis 7.0 has read-only key patterns (`%R~`, "Key permissions" in the ACL docs); 6.x
    grants read and write with one pattern, so there a node user gets its own keys and the
    index (read by the publisher's ZCARD) and no other node's: it reads the view as
    `relayq-view-<node>` (view_user_line). The Redis node's own user (`redis_node`) writes
    the index and asks the other nodes (cluster/whois_ask.py): all of the view; its password
    never leaves the Redis node, whose supervisor holds the admin user anyway."""
    v = tuple(version[:2])
    if redis_node:
        keys = [f"~{CLUSTER_PREFIX}*"]
    else:
        keys = [f"~{CLUSTER_PREFIX}{kind}:{node}" for kind in ("node", "why", "audit")]
        keys.append(f"%R~{CLUSTER_PREFIX}*" if v >= READ_ONLY_KEYS_SINCE else f"~{CLUSTER_PREFIX}nodes")
    # a channel pattern allows both PUBLISH and SUBSCRIBE: what ties an answer to its node
    # is the answering connection's user, checked by the asker (cluster/whois_ask.py)
    channels = [f"&{CLUSTER_PREFIX}*"] if redis_node else \
        [f"&{CLUSTER_PREFIX}whois:ask:{node}", f"&{CLUSTER_PREFIX}whois:answer:*"]
    words = ["user", node_user_name(node), "on", _password_rule(creds.password), "resetkeys", *keys,
             *(["resetchannels", *channels] if v >= CHANNEL_RULES_SINCE else []),
             "-@all", *(f"+{c}" for c in NODE_COMMANDS)]
    return " ".join(words)


def view_user_line(node: str, creds: AdminCredentials, version: tuple[int, ...]) -> str:
    """`user relayq-view-<node> ...`, with node `node`'s password: the cluster view read-only
    (relayqctl status/audit/why --cluster, cluster/view.py), by its commands (all versions)
    and, on 7.0+, by its key pattern too."""
    v = tuple(version[:2])
    keys = [f"%R~{CLUSTER_PREFIX}*" if v >= READ_ONLY_KEYS_SINCE else f"~{CLUSTER_PREFIX}*"]
    words = ["user", view_user_name(node), "on", _password_rule(creds.password), "resetkeys", *keys,
             *(["resetchannels"] if v >= CHANNEL_RULES_SINCE else []),
             "-@all", *(f"+{c}" for c in VIEW_COMMANDS)]
    return " ".join(words)


def acl_weaknesses(version: tuple[int, ...]) -> list[str]:
    """What the node users cannot be kept from on this Redis version (logged at start)."""
    v = ".".join(map(str, version))
    found = []
    if tuple(version[:2]) < READ_ONLY_KEYS_SINCE:
        found.append(f"Redis {v} has no read-only key patterns (7.0): each node user may also rewrite the "
                     f"index of node names ({CLUSTER_PREFIX}nodes, written again by the Redis node at each "
                     "heartbeat), not another node's status, why or audit stream")
    if tuple(version[:2]) < CHANNEL_RULES_SINCE:
        found.append(f"Redis {v} has no channel permissions (6.2): each node user may read every "
                     "node's whois questions, and the workers' user may ask them")
    return found


def default_keys(version: tuple[int, ...], guard_cluster: bool) -> list[str]:
    """The `default` user's (the workers') keys and channels: all of them; with
    `guard_cluster` (the nodes publish as their own users) none of the cluster view's to
    write, nor its channels; on 7.0+ still readable (`%R~*`)."""
    v = tuple(version[:2])
    channels = (["resetchannels", *(f"&{p}" for p in keys_outside(CLUSTER_PREFIX))] if guard_cluster else ["&*"]) \
        if v >= CHANNEL_RULES_SINCE else []
    if not guard_cluster:
        return ["~*", *channels]
    outside = [f"~{p}" for p in keys_outside(CLUSTER_PREFIX)]
    return [*(["%R~*"] if v >= READ_ONLY_KEYS_SINCE else []), *outside, *channels]


def acl_file_text(denied: tuple[str, ...], version: tuple[int, ...], creds: AdminCredentials,
                  default_password: str | None = None, nodes: dict[str, AdminCredentials] | None = None,
                  redis_node: str = "") -> str:
    """The content of the ACL file: `default` (the workers), the admin, then two users per
    node of the cluster (`relayq-node-<node>`, `relayq-view-<node>`). `redis_node`: the name
    of the node Redis runs on (its user has all of the view). Once another node has its
    own user, the workers' `default` user may not write the cluster view (default_keys)."""
    nodes = nodes or {}
    channels = ["&*"] if tuple(version[:2]) >= CHANNEL_RULES_SINCE else []
    auth = _password_rule(default_password) if default_password else "nopass"
    guard = bool(set(nodes) - {redis_node})
    default = ["user", "default", "on", auth, *default_keys(version, guard), *acl_rules(denied, version)]
    admin = ["user", creds.username, "on", _password_rule(creds.password), "~*", *channels, "+@all"]
    lines = [" ".join(default), " ".join(admin)]
    for name, node in sorted(nodes.items()):
        lines.append(node_user_line(name, node, version, redis_node=name == redis_node))
        lines.append(view_user_line(name, node, version))
    return "\n".join(lines) + "\n"


def write_acl_file(run_dir: str | os.PathLike, denied: tuple[str, ...], version: tuple[int, ...],
                   creds: AdminCredentials, default_password: str | None = None, owner: int | None = None,
                   nodes: dict[str, AdminCredentials] | None = None, redis_node: str = "") -> str:
    """Write `<run_dir>/redis-users.acl` (mode 0600, atomically; owned by `owner`, Redis'
    user, when it has one) and return its path; redis-server then gets `--aclfile PATH`."""
    path = os.path.join(os.fspath(run_dir), ACL_FILE)
    text = acl_file_text(denied, version, creds, default_password, nodes, redis_node)
    if holds_exactly(path, text, owner):
        return path         # a restart: skip the write and its fsync on the way to Redis
    try:
        write_private_file(path, text, replace=True, owner=owner)
    except OSError as e:
        raise AclSetupError(f"cannot write the Redis ACL file {path}: {e.strerror}") from None
    return path
