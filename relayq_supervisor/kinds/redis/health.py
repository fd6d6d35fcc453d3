"""Redis' health check: every health_interval, read ACL LOG and record each command the
guard denied (`redis_denied`), naming the client process where it can still be found.
The only periodic wake-up besides the systemd watchdog."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from relayq_supervisor.kinds.redis import acl as redis_acl
from relayq_supervisor.witness.identity import ProcessIdentity

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from relayq_supervisor.kinds import KindContext, Program
    from relayq_supervisor.kinds.redis import RedisKind

log = logging.getLogger(__name__)


class RedisHealth:
    def __init__(self, kind: RedisKind, ctx: KindContext, running: Callable[[], Program | None]):
        self.kind = kind
        self.ctx = ctx
        self.running = running              # the Redis instance while RUNNING, else None
        self.acl_log = redis_acl.AclLogReader()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run(), name="redis health")

    def moved_to(self, kind: RedisKind) -> RedisHealth:
        """After a reload: keep the ACL LOG position, check the new spec's Redis."""
        self.kind = kind
        return self

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.supervisor.health_interval)
            p = self.running()
            if p is not None:
                await self.check(p, self.kind.client())

    async def check(self, p: Program, conn: aioredis.Redis) -> None:
        try:
            denials = await self.acl_log.poll(conn)
        except Exception as e:      # redis errors, timeouts: the next round tries again
            log.warning("%s: health check failed (%s)", p.name, e)
            return
        for d in denials:
            self.record_denial(p, d)

    def record_denial(self, p: Program, d: redis_acl.Denial) -> None:
        sender, note = None, None
        port = self.kind.redis.port
        pid = redis_acl.find_client_process(d.client_addr, port) if d.client_addr else None
        if pid is not None and d.client_addr:
            identity = self.ctx.name_process(pid)
            # the socket check after the capture: a pid reused meanwhile is not blamed
            if identity is not None and identity.get("alive") and \
                    redis_acl.process_holds_client_socket(pid, d.client_addr, port):
                sender = identity
        if sender is None:
            note = "client gone before it could be found" if d.client_addr else "client address unknown"
        event = self.ctx.audit("redis_denied", program=p.name, command=d.command, reason=d.reason,
                               context=d.context, user=d.user, client_addr=d.client_addr,
                               client_laddr=d.client_laddr, client_name=d.client_name, count=d.count_new,
                               count_total=d.count_total, sender=sender, **({"note": note} if note else {}))
        p.remember(event)
        who = ProcessIdentity.from_dict(sender).describe() if sender else note
        log.warning("%s: denied %s x%d by user %s from %s (%s); only the supervisor may stop Redis: "
                    "`relayqctl stop redis`", p.name, d.command, d.count_new, d.user, d.client_addr, who)
