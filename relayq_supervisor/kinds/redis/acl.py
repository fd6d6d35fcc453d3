"""The Redis command guard: an ACL file that keeps ordinary clients from stopping or
reconfiguring Redis, the supervisor's own admin credentials, and reading `ACL LOG`
so that every denied attempt is reported once, with who made it.

In the incident Redis logged `User requested shutdown...`: a client's SHUTDOWN. With
this ACL the `default` user (the workers) gets NOPERM instead, Redis keeps running,
and the ACL LOG entry names the client, which `find_client_process` turns into a pid.
"""
from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil

from relayq_supervisor.config.redis import is_command_name
from relayq_supervisor.errors import AclSetupError

log = logging.getLogger(__name__)

ADMIN_USER = "relayq-admin"
PASSWORD_FILE = "redis-admin.pass"
# One user per declared node of a cluster ([cluster] nodes), `relayq-node-<node>`: it
# writes only its own keys of the cluster view and answers only as itself; it runs only the
# commands cluster/ uses, so no stop command. Its password: <run_dir>/redis-node-<node>.pass.
NODE_USER_PREFIX = "relayq-node-"
NODE_PASSWORD_FILE = "redis-node-{node}.pass"
# Before one user per node, every node shared one user and this password file: unused now.
SHARED_NODE_PASSWORD_FILE = "redis-node.pass"
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
ACL_FILE = "redis-users.acl"
PASSWORD_BYTES = 32

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

_HEX_PASSWORD_RE = re.compile(rf"^[0-9a-f]{{{PASSWORD_BYTES * 2}}}$")

# How far two readings of one unchanged entry's last-update time may disagree: the
# estimate is `our clock at the reply - age-seconds`, so it moves with poll latency.
UPDATE_TIME_SLACK = 0.25
# ACL LOG shows 10 entries unless asked for more; Redis' default acllog-max-len is 128.
ACL_LOG_REQUEST = 1000


def version_tuple(text: str) -> tuple[int, ...]:
    """"7.0.15" -> (7, 0, 15); also takes `redis-server --version`'s "v=7.0.15" and
    suffixes like "7.2.0-rc1" (the digits of each part up to the first non-digit)."""
    m = re.search(r"(\d+(?:\.\d+)*)", text or "")
    if not m:
        raise ValueError(f"not a Redis version: {text!r}")
    return tuple(int(part) for part in m.group(1).split("."))


# --- credentials ------------------------------------------------------------------

@dataclass(frozen=True)
class AdminCredentials:
    """The supervisor's own Redis user; the password never appears in repr()."""

    username: str
    password: str = field(repr=False)
    path: str = ""

    @classmethod
    def load_or_create(cls, run_dir: str | os.PathLike, username: str = ADMIN_USER,
                       file_name: str = PASSWORD_FILE) -> AdminCredentials:
        """Reuse `<run_dir>/redis-admin.pass` (or `file_name`) when it is ours, 0600 and
        well-formed; otherwise (re)create it with a fresh random password and say why."""
        path = os.path.join(os.fspath(run_dir), file_name)
        password, problem = _read_password_file(path)
        if password is not None:
            return cls(username, password, path)
        if problem:
            log.warning("%s %s; creating a new password for %s", path, problem, username)
        password = secrets.token_hex(PASSWORD_BYTES)
        try:
            if problem:
                _write_private_file(path, password + "\n", replace=True)
            elif not _write_private_file(path, password + "\n", replace=False):
                # Another process created it between our read and our link: use theirs.
                theirs, problem = _read_password_file(path)
                if theirs is None:
                    raise AclSetupError(f"{path}: {problem or 'vanished while being created'}")
                password = theirs
        except OSError as e:
            label = "admin" if username == ADMIN_USER else username
            raise AclSetupError(f"cannot write the Redis {label} password file {path}: "
                                f"{e.strerror}") from None
        return cls(username, password, path)


def remove_shared_node_password(run_dir: str) -> str | None:
    """Delete `<run_dir>/redis-node.pass`, the shared node user's password that nothing
    reads any more; its path when there was one."""
    path = os.path.join(run_dir, SHARED_NODE_PASSWORD_FILE)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("%s: the shared node user's password, unused since each node has its own user; "
                    "cannot delete it (%s): delete it by hand", path, e.strerror)
        return None
    return path


def save_credentials(admin: AdminCredentials) -> None:
    """Write the password we run with back to its file (its directory was deleted under us)."""
    _write_private_file(admin.path, admin.password + "\n", replace=True)


def _read_password_file(path: str) -> tuple[str | None, str | None]:
    """(password, None) when usable; (None, why not) when it must be replaced;
    (None, None) when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "is a symbolic link"
        raise AclSetupError(f"cannot read the Redis password file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "is not a regular file"
        if st.st_uid != os.geteuid():
            return None, f"is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"
        if st.st_mode & 0o077:
            return None, f"has mode {stat.S_IMODE(st.st_mode):04o}, looser than 0600"
        text = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not _HEX_PASSWORD_RE.match(text):
        return None, f"does not hold a {PASSWORD_BYTES * 2}-digit hex password"
    return text, None


def _holds(path: str, text: str, owner: int | None = None) -> bool:
    """True when `path` is a 0600 regular file of `owner` (default: us) with exactly `text`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o777 != 0o600 or \
                st.st_uid != (os.getuid() if owner is None else owner):
            return False
        return os.read(fd, len(text.encode()) + 1) == text.encode()
    finally:
        os.close(fd)


def _write_private_file(path: str, text: str, replace: bool, owner: int | None = None) -> bool:
    """Write `text` to `path` with mode 0600, complete or not at all: a temporary file
    in the same directory, then rename (replace) or link (create only if absent).
    `owner`: the uid it is given (Redis' user, the only one who may read it).
    Returns False when `replace` is False and `path` already existed."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)        # the umask could only narrow it; make it exact anyway
            if owner is not None:
                os.fchown(fd, owner, -1)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, path)
            return True
        try:
            os.link(tmp, path)          # fails with EEXIST instead of replacing
        except FileExistsError:
            return False
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


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


def node_user_name(node: str) -> str:
    return NODE_USER_PREFIX + node


def node_password_file(node: str) -> str:
    return NODE_PASSWORD_FILE.format(node=node)


def node_user_line(node: str, creds: AdminCredentials, version: tuple[int, ...]) -> str:
    """`user relayq-node-<node> ...`: what node `node` publishes (its status, its `why`, its
    audit stream), read access to the rest of the cluster view (the index of names too: the
    Redis node writes the declared members there, cluster/publisher.py),
    its own question channel and the answer channels, only the commands cluster/ uses.
    Everything else (SHUTDOWN, CONFIG, ACL, FLUSHALL, the workers' keys, another node's
    keys) is NOPERM, and ACL LOG names the user that tried it.

    Redis 7.0 has read-only key patterns (`%R~`, "Key permissions" in the ACL docs); 6.x
    grants read and write with one pattern, so there every node user may also write the
    other nodes' keys (acl_weaknesses says so at start)."""
    own = [f"~{CLUSTER_PREFIX}{kind}:{node}" for kind in ("node", "why", "audit")]
    keys = [*own, f"%R~{CLUSTER_PREFIX}*"] if tuple(version[:2]) >= READ_ONLY_KEYS_SINCE \
        else [f"~{CLUSTER_PREFIX}*"]
    # a channel pattern allows both PUBLISH and SUBSCRIBE: what ties an answer to its node
    # is the answering connection's user, checked by the asker (cluster/whois_ask.py)
    channels = ["resetchannels", f"&{CLUSTER_PREFIX}whois:ask:{node}", f"&{CLUSTER_PREFIX}whois:answer:*"] \
        if tuple(version[:2]) >= CHANNEL_RULES_SINCE else []
    words = ["user", node_user_name(node), "on", _password_rule(creds.password), "resetkeys", *keys,
             *channels, "-@all", *(f"+{c}" for c in NODE_COMMANDS)]
    return " ".join(words)


def acl_weaknesses(version: tuple[int, ...]) -> list[str]:
    """What the node users cannot be kept from on this Redis version (logged at start)."""
    v = ".".join(map(str, version))
    found = []
    if tuple(version[:2]) < READ_ONLY_KEYS_SINCE:
        found.append(f"Redis {v} has no read-only key patterns (7.0): each node user may also overwrite "
                     "the other nodes' status and audit stream")
    if tuple(version[:2]) < CHANNEL_RULES_SINCE:
        found.append(f"Redis {v} has no channel permissions (6.2): each node user may read every "
                     "node's whois questions")
    return found


def acl_file_text(denied: tuple[str, ...], version: tuple[int, ...], creds: AdminCredentials,
                  default_password: str | None = None, nodes: dict[str, AdminCredentials] | None = None) -> str:
    """The content of the ACL file (two `user` lines, then one per node of the cluster)."""
    channels = ["&*"] if tuple(version[:2]) >= CHANNEL_RULES_SINCE else []
    auth = _password_rule(default_password) if default_password else "nopass"
    default = ["user", "default", "on", auth, "~*", *channels, *acl_rules(denied, version)]
    admin = ["user", creds.username, "on", _password_rule(creds.password), "~*", *channels, "+@all"]
    lines = [" ".join(default), " ".join(admin)]
    for name, node in sorted((nodes or {}).items()):
        lines.append(node_user_line(name, node, version))
    return "\n".join(lines) + "\n"


def write_acl_file(run_dir: str | os.PathLike, denied: tuple[str, ...], version: tuple[int, ...],
                   creds: AdminCredentials, default_password: str | None = None, owner: int | None = None,
                   nodes: dict[str, AdminCredentials] | None = None) -> str:
    """Write `<run_dir>/redis-users.acl` (mode 0600, atomically; owned by `owner`, Redis'
    user, when it has one) and return its path; redis-server then gets `--aclfile PATH`."""
    path = os.path.join(os.fspath(run_dir), ACL_FILE)
    text = acl_file_text(denied, version, creds, default_password, nodes)
    if _holds(path, text, owner):
        return path         # a restart: skip the write and its fsync on the way to Redis
    try:
        _write_private_file(path, text, replace=True, owner=owner)
    except OSError as e:
        raise AclSetupError(f"cannot write the Redis ACL file {path}: {e.strerror}") from None
    return path


# --- ACL LOG ----------------------------------------------------------------------

def parse_client_info(text: str | bytes) -> dict[str, str]:
    """"id=5 addr=127.0.0.1:51234 name=worker ..." -> {"id": "5", "addr": ..., ...}.

    Values stay strings. A client name may itself contain '=' (Redis allows it), so
    each field splits at its first '=' only."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    info: dict[str, str] = {}
    for word in (text or "").split():
        key, sep, value = word.partition("=")
        if sep:
            info[key] = value
    return info


@dataclass(frozen=True)
class Denial:
    """Attempts Redis refused to one client user since the last poll (one ACL LOG entry)."""

    command: str                 # the entry's object: "shutdown", "config|set" (7.0), a key, "AUTH"
    reason: str                  # command | key | channel | auth
    context: str                 # toplevel | multi | lua | script | module
    user: str
    client_addr: str | None
    client_laddr: str | None
    client_name: str | None
    count_new: int               # attempts not reported before
    count_total: int             # the entry's count (Redis folds repeats into one entry)
    age_s: float                 # since the entry's last update (the latest attempt)
    client_info: dict[str, str]  # of the latest client of the entry
    created_epoch: float | None = None  # the entry's timestamp-created (Redis 7.2+), seconds
    # its last attempt, wall clock: timestamp-last-updated (7.2+), else the reply's arrival
    # minus age-seconds (later than the truth by however long the reply waited for the loop)
    updated_epoch: float | None = None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _normalise_entry(entry: Any) -> dict[str, Any]:
    """One ACL LOG entry as redis-py returns it (a dict, str or bytes keys, maybe with
    client-info already parsed) or raw (a flat [key, value, ...] list) -> str keys."""
    pairs: Iterable[tuple[Any, Any]]
    if isinstance(entry, dict):
        pairs = entry.items()
    else:
        items = list(entry)
        pairs = zip(items[0::2], items[1::2], strict=False)
    out: dict[str, Any] = {}
    for key, value in pairs:
        key = _text(key)
        if key == "client-info":
            out[key] = ({_text(k): _text(v) for k, v in value.items()} if isinstance(value, dict)
                        else parse_client_info(value))
        elif key in ("count", "entry-id", "timestamp-created", "timestamp-last-updated"):
            out[key] = int(_text(value))
        elif key == "age-seconds":
            out[key] = float(_text(value))
        else:
            out[key] = _text(value)
    return out


@dataclass
class _Seen:
    """What the last poll saw of one ACL LOG entry."""

    count: int
    updated_at: float            # our clock at the reply minus age-seconds


class AclLogReader:
    """Turns successive `ACL LOG` replies into each denied attempt, reported once.

    Redis folds attempts of one (reason, context, object, username) made less than 60 s
    apart into one entry, bumping its count, replacing its client-info with the latest
    client's and moving it to the head. So among entries of one key (listed newest
    first) only the first can grow; older ones are frozen until evicted from the tail.
    Each poll lines the new entries of a key up against the old ones from the tail:
    entries in front of the alignment are new, the old head may have grown, the
    rest must be unchanged. An entry whose count went down, or that kept its count but
    was updated later than seen, was re-created (ACL LOG RESET): reported in full.
    Redis 7.2's entry-id + timestamp-created name an entry exactly and join the key.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple, list[_Seen]] = {}

    def new_denials(self, entries: list[Any], now: float | None = None, wall: float | None = None) -> list[Denial]:
        """The attempts in `entries` (the reply of ACL LOG, newest first) not reported
        before, oldest first. `now` is time.monotonic() when the reply arrived, `wall`
        time.time() then."""
        if now is None:
            now = time.monotonic()
        groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
        for order, raw in enumerate(entries or ()):
            entry = _normalise_entry(raw)
            key = (entry.get("reason", ""), entry.get("context", ""), entry.get("object", ""),
                   entry.get("username", ""), entry.get("entry-id"), entry.get("timestamp-created"))
            groups.setdefault(key, []).append((order, entry))

        found: list[tuple[float, int, Denial]] = []
        seen: dict[tuple, list[_Seen]] = {}
        for key, group in groups.items():
            current = [_Seen(e.get("count", 1), now - e.get("age-seconds", 0.0)) for _, e in group]
            previous = self._seen.get(key, [])
            grown = self._align(previous, current, exact=key[4] is not None)
            for i, ((order, entry), entry_seen) in enumerate(zip(group, current, strict=False)):
                if grown is None or i < grown:
                    count_new = entry_seen.count                    # a new entry
                elif i == grown:
                    count_new = entry_seen.count - previous[0].count
                else:
                    count_new = 0                                   # frozen, already reported
                if count_new > 0:
                    found.append((entry_seen.updated_at, -order, _denial(entry, count_new, wall)))
            seen[key] = current
        self._seen = seen
        found.sort(key=lambda t: (t[0], t[1]))
        return [d for _, _, d in found]

    @staticmethod
    def _align(previous: list[_Seen], current: list[_Seen], exact: bool) -> int | None:
        """Index in `current` of the entry that was `previous[0]` (the rest of
        `current` after it being previous[1:], unchanged), or None if no old entry
        survived. Eviction only takes from the tail; new entries only come in front."""
        for m in range(min(len(previous), len(current)), 0, -1):
            start = len(current) - m
            head_old, head_new = previous[0], current[start]
            if not _same_entry(head_old, head_new, exact, may_grow=True):
                continue
            if all(_same_entry(previous[j], current[start + j], exact, may_grow=False)
                   for j in range(1, m)):
                return start
        return None

    async def poll(self, conn) -> list[Denial]:
        """Run ACL LOG on `conn` (a redis.asyncio client logged in as the admin user)
        and return what is new. Redis errors (NOPERM, timeouts) propagate."""
        # The raw command, not conn.acl_log(): redis-py's parser of the reply splits
        # client-info at every '=', and a client name may contain one, so any client
        # could make the parsing (and thus this health check) fail.
        reply = await conn.execute_command("ACL", "LOG", str(ACL_LOG_REQUEST))
        return self.new_denials(reply, now=time.monotonic(), wall=time.time())


def _same_entry(old: _Seen, new: _Seen, exact: bool, may_grow: bool) -> bool:
    if new.count < old.count:
        return False                                    # re-created after a reset
    if exact:
        return may_grow or new.count == old.count
    if new.count > old.count:
        return may_grow
    # Same count: unchanged only if not updated after we saw it.
    return new.updated_at <= old.updated_at + UPDATE_TIME_SLACK


def _denial(entry: dict[str, Any], count_new: int, wall: float | None = None) -> Denial:
    info = entry.get("client-info") or {}
    return Denial(
        command=entry.get("object", ""), reason=entry.get("reason", ""),
        context=entry.get("context", ""), user=entry.get("username", ""),
        client_addr=info.get("addr") or None, client_laddr=info.get("laddr") or None,
        client_name=info.get("name") or None, count_new=count_new,
        count_total=entry.get("count", 1), age_s=entry.get("age-seconds", 0.0),
        client_info=dict(info),
        created_epoch=entry["timestamp-created"] / 1000 if "timestamp-created" in entry else None,
        updated_epoch=(entry["timestamp-last-updated"] / 1000 if "timestamp-last-updated" in entry
                       else wall - entry.get("age-seconds", 0.0) if wall is not None else None),
    )


# --- who the client is ------------------------------------------------------------

def _split_addr(addr: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """"127.0.0.1:5123" / "[::1]:5123" -> (ip, port); None for a unix socket ("/path:0")."""
    host, sep, port = (addr or "").rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return _unmapped(ip), int(port)


def _unmapped(ip):
    # An IPv4 client of a dual-stack socket shows up as ::ffff:a.b.c.d on one side.
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


def _is_client_socket(conn, want_ip, want_port: int, redis_port: int) -> bool:
    if not conn.laddr or not conn.raddr or conn.laddr.port != want_port or conn.raddr.port != redis_port:
        return False
    try:
        return _unmapped(ipaddress.ip_address(conn.laddr.ip)) == want_ip
    except ValueError:
        return False


@dataclass(frozen=True)
class _HeldConnection:
    """A TCP socket and the pid holding it (per-process psutil results carry no pid)."""

    pid: int
    laddr: Any
    raddr: Any


def _tcp_connections(pid: int | None = None) -> list[_HeldConnection]:
    if pid is not None:
        return [_HeldConnection(pid, c.laddr, c.raddr)
                for c in psutil.Process(pid).net_connections(kind="tcp")]
    try:
        return [_HeldConnection(c.pid, c.laddr, c.raddr)
                for c in psutil.net_connections(kind="tcp") if c.pid]
    except psutil.AccessDenied:
        pass
    # Unprivileged: what the processes we may inspect hold.
    held: list[_HeldConnection] = []
    for proc in psutil.process_iter():
        try:
            held.extend(_HeldConnection(proc.pid, c.laddr, c.raddr)
                        for c in proc.net_connections(kind="tcp"))
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return held


def _start_order(pid: int) -> tuple[float, int]:
    try:
        return psutil.Process(pid).create_time(), pid
    except psutil.Error:
        return float("inf"), pid


def find_client_process(addr: str, redis_port: int) -> int | None:
    """The local pid holding the TCP socket a Redis client connected from (`addr` is the
    client's address as Redis reports it; redis_port the port it connected to), or None
    when no local process holds it (the client exited, is remote, or is hidden)."""
    want = _split_addr(addr)
    if want is None:
        return None
    pids = {c.pid for c in _tcp_connections() if _is_client_socket(c, want[0], want[1], redis_port)}
    # A socket inherited across fork() is held by several processes; which of them
    # wrote the command is unknowable, so the oldest holder (the forking parent) is named.
    return min(pids, key=_start_order) if pids else None


def process_holds_client_socket(pid: int, addr: str, redis_port: int) -> bool:
    """Whether `pid` (still) holds the client socket `addr` -> redis_port. Call it after
    pinning the pid (ProcessIdentity.capture) to rule out a pid reused in between."""
    want = _split_addr(addr)
    if want is None:
        return False
    try:
        conns = _tcp_connections(pid)
    except (psutil.Error, OSError):
        return False
    return any(_is_client_socket(c, want[0], want[1], redis_port) for c in conns)
