"""Redis' health check: every health_interval, read ACL LOG and record each command the
guard denied (`redis_denied`), naming the client process where it can still be found.
The only periodic wake-up besides the systemd watchdog.

With the kernel witness (`ctx.clients`), a client is named even after it exited, and
ACL LOG is also read PROMPT_READ_S after a client connection closes (one read for a
burst of closes), so that a denial is reported within ~0.1 s instead of up to 5 s."""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from relayq_supervisor.background import start_task
from relayq_supervisor.kinds.redis.acl_log import AclLogReader, Denial
from relayq_supervisor.kinds.redis.credentials import NODE_USER_PREFIX
from relayq_supervisor.witness.identity import ProcessIdentity
from relayq_supervisor.witness.socket_holder import ScanStats, canonical_ip, live_holder, split_addr

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from relayq_supervisor.config.model import RedisSpec
    from relayq_supervisor.kinds import Cancellable, KindContext, Program, RemoteClients


class RedisKind(Protocol):
    """What the health check needs of kind.RedisKind."""
    redis: RedisSpec
    def client(self, timeout: float | None = None) -> aioredis.Redis: ...

log = logging.getLogger(__name__)

# After a client connection closes: Redis logs a denial before replying NOPERM, so the entry
# exists by the close; the delay only gathers a burst of closes into one read.
PROMPT_READ_S = 0.075


class RedisHealth:
    def __init__(self, kind: RedisKind, ctx: KindContext, running: Callable[[], Program | None]):
        self.kind = kind
        self.ctx = ctx
        self.running = running              # the Redis instance while RUNNING, else None
        self.acl_log = AclLogReader()
        self.task: asyncio.Task[None] | None = None
        # one ACL LOG read at a time: two concurrent replies handled out of order would make
        # an entry look shrunk (re-created) and report its attempts twice
        self.reading = asyncio.Lock()
        self.prompt: Cancellable | None = None
        self.prompt_task: asyncio.Task[None] | None = None
        self.prompt_reads = 0
        self.last_read_epoch = time.time()     # when the previous ACL LOG read was sent
        self.scans = ScanStats()               # the /proc scans for denied clients (a slice per loop pass)

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run(), name="redis health")
        if self.ctx.clients is not None:
            self.ctx.clients.on_client_closed(self.client_closed)

    def client_closed(self) -> None:
        """A client connection closed: read ACL LOG shortly, once for a burst of closes."""
        if self.prompt is None and self.task is not None:
            self.prompt = self.ctx.call_later(PROMPT_READ_S, self.prompt_read)

    def prompt_read(self) -> None:
        self.prompt = None
        p = self.running()
        if p is None:
            return
        if self.prompt_task is not None and not self.prompt_task.done():
            # a read is under way and may have been sent before this close: read again after it
            self.client_closed()
            return
        self.prompt_reads += 1
        self.prompt_task = asyncio.get_running_loop().create_task(self.check(p, self.kind.client()),
                                                                  name="redis acl log (a client closed)")

    def moved_to(self, kind: RedisKind) -> RedisHealth:
        """After a reload: keep the ACL LOG position, check the new spec's Redis."""
        self.kind = kind
        return self

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.prompt is not None:
            self.prompt.cancel()
            self.prompt = None
        if self.prompt_task is not None:
            self.prompt_task.cancel()
            self.prompt_task = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.supervisor.health_interval)
            p = self.running()
            if p is not None:
                await self.check(p, self.kind.client())

    async def check(self, p: Program, conn: aioredis.Redis) -> None:
        try:
            async with self.reading:
                sent = time.time()
                denials = await self.acl_log.poll(conn)
                replied = time.time()
                since, self.last_read_epoch = self.last_read_epoch, sent
        except Exception as e:      # redis errors, timeouts: the next round tries again
            log.warning("%s: health check failed (%s)", p.name, e)
            return
        for d in denials:
            await self.record_denial(p, d, since, replied)

    async def record_denial(self, p: Program, d: Denial, since: float | None = None,
                            replied: float | None = None) -> None:
        """`since`: when the previous ACL LOG read was sent; attempts new in `d` came after it
        and before `replied` (when its reply came: the client lookup may take loop passes)."""
        remote = self.ctx.remote_clients
        if remote is not None and d.client_addr and remote.is_remote(d.client_addr):
            # another node's client: ask that node, without holding up anything else
            start_task(self.record_remote_denial(p, d, remote), f"{p.name}: who held {d.client_addr}")
            return
        await self.record_local_denial(p, d, since, replied)

    async def record_remote_denial(self, p: Program, d: Denial, remote: RemoteClients) -> None:
        """The denial, written once the node owning the address answered (or the deadline
        passed: then an answer that comes later is a follow-up `attribution` event)."""
        denial_id = uuid.uuid4().hex[:16]
        written: list[dict[str, Any]] = []

        def late(sender: dict[str, Any] | None, note: str) -> None:
            attribution = self.ctx.audit("attribution", program=p.name, denial=denial_id, client_addr=d.client_addr,
                                         command=d.command, sender=sender, **({"note": note} if note else {}))
            for event in written:           # `why` shows the amended denial
                event["sender"], event["note"] = sender, note or None
                event["amended_by"] = attribution.get("ts")
            who = self.describe_remote(sender) if sender else note
            log.warning("%s: the denied %s from %s was by %s (a late answer)", p.name, d.command, d.client_addr, who)

        sender, note = await remote.ask(d.client_addr or "", self.kind.redis.port, d.updated_epoch, late)
        event = self.ctx.audit("redis_denied", id=denial_id, program=p.name, command=d.command, reason=d.reason,
                               context=d.context, user=d.user, client_addr=d.client_addr,
                               client_laddr=d.client_laddr, client_name=d.client_name, count=d.count_new,
                               count_total=d.count_total, sender=sender, **({"note": note} if note else {}))
        written.append(event)
        p.remember(event)
        log.warning("%s: denied %s x%d by user %s from %s (%s)%s", p.name, d.command, d.count_new, d.user,
                    d.client_addr, self.describe_remote(sender) if sender else note, denial_hint(d))

    @staticmethod
    def describe_remote(sender: dict[str, Any]) -> str:
        return f"node {sender.get('node')} {ProcessIdentity.from_dict(sender).describe()}"

    def redis_ips(self, d: Denial) -> frozenset[str]:
        """Where the client connected to, for sock_diag's lookup by 4-tuple: Redis' side of the
        connection (ACL LOG's `laddr`, Redis 7), else the addresses Redis binds; none (the
        socket tables are read instead) when one of them is a wildcard."""
        here = split_addr(d.client_laddr or "")
        if here is not None:
            return frozenset({here[0]})
        ips = {canonical_ip(b.lstrip("-")) for b in self.kind.redis.bind}
        if None in ips or ips & {"0.0.0.0", "::"}:
            return frozenset()
        return frozenset(ip for ip in ips if ip is not None)

    async def record_local_denial(self, p: Program, d: Denial, since: float | None = None,
                                  replied: float | None = None) -> None:
        sender, note = None, None
        where = split_addr(d.client_addr or "")
        if where is not None:
            # the live holder, a slice of the /proc scan per loop pass (witness/socket_holder.py):
            # the one path the cross-node answers take too
            sender = await live_holder(where[0], where[1], self.kind.redis.port, self.redis_ips(d),
                                       self.ctx.name_process, self.scans)
        clients = self.ctx.clients
        if sender is None and d.client_addr and clients is not None:
            # gone: who connected from there, in a connection open at the entry's last attempt
            sender = clients.client_of(d.client_addr, at=d.updated_epoch)
        if sender is None:
            note = "client gone before it could be found" if d.client_addr else "client address unknown"
        folded = self.folded_clients(d, sender, since, replied) if d.count_new > 1 else None
        event = self.ctx.audit("redis_denied", program=p.name, command=d.command, reason=d.reason,
                               context=d.context, user=d.user, client_addr=d.client_addr,
                               client_laddr=d.client_laddr, client_name=d.client_name, count=d.count_new,
                               count_total=d.count_total, sender=sender, **({"note": note} if note else {}),
                               **({"folded": folded} if folded else {}))
        p.remember(event)
        who = ProcessIdentity.from_dict(sender).describe() if sender else note
        if folded:
            pids = ", ".join(str(c["pid"]) for c in folded["clients"])
            who = (f"x{d.count_new}: pids {pids}; Redis recorded the last: {who}" if folded["exact"] else
                   f"x{d.count_new} among pids {pids} (closed since the previous read); "
                   f"Redis recorded the last: {who}")
        log.warning("%s: denied %s x%d by user %s from %s (%s)%s", p.name, d.command, d.count_new, d.user,
                    d.client_addr, who, denial_hint(d))

    def folded_clients(self, d: Denial, last: dict[str, Any] | None,
                       since: float | None, until: float | None = None) -> dict[str, Any] | None:
        """Redis folds repeated denials into one entry and keeps only the last client. An
        attempt comes before its client's close, and the attempts new in `d` came after our
        previous read was sent (`since`; or the entry's creation, if later): every client
        that made one closed in [since, until] (until: the reply, now when not given) or is
        `last`. Those that closed then are named, the recorded one last; `exact` says whether
        their number is the entry's new count
        (else some of them made no denied attempt, and Redis cannot tell which)."""
        clients = self.ctx.clients
        starts = [t for t in (d.created_epoch, since) if t is not None]
        if clients is None or not starts:
            return None
        # no slack before `since`: a client that closed before the previous read was sent
        # made its attempts before it, and they were reported then
        gone = clients.clients_closed_between(max(starts), until if until is not None else time.time())
        last_addr = (last.get("connection") or {}).get("addr") if last else None
        named = [c for c in gone if (c.get("connection") or {}).get("addr") != last_addr
                 and c.get("pid") != os.getpid()]      # the supervisor's own connections
        if last is not None:
            named.append(last)
        if len(named) < 2:
            return None
        exact = len(named) == d.count_new
        return {"clients": [{"pid": c.get("pid"), "comm": c.get("comm"), "program": c.get("program"),
                             "seen_by": c.get("seen_by"), "addr": (c.get("connection") or {}).get("addr")}
                            for c in named],
                "exact": exact,
                "note": (f"Redis kept only the last of {d.count_new} clients" if exact else
                         f"{d.count_new} attempts among these {len(named)} clients (every connection "
                         "closed since the previous read); Redis kept only the last")}


def denial_hint(d: Denial) -> str:
    """What the operator is told with a denial: a refused command is one of the stop commands
    (only the supervisor may run them); a refused key or channel is a user outside its own."""
    if d.reason == "command" and d.user.startswith(NODE_USER_PREFIX):
        return f"; user {d.user} may run only the cluster view's commands"
    if d.reason == "command":
        return "; only the supervisor may stop Redis: `relayqctl stop redis`"
    if d.reason in ("key", "channel"):
        return f"; user {d.user} may not touch that {d.reason}"
    return ""
