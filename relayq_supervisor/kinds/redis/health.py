"""Redis' health check: every health_interval, read ACL LOG and record each command the
guard denied (`redis_denied`), naming the client process where it can still be found.
The only periodic wake-up besides the systemd watchdog."""
from __future__ import annotations

import asyncio
import logging

from relayq_supervisor.kinds.redis import acl as redis_acl
from relayq_supervisor.witness.identity import ProcessIdentity
from relayq_supervisor.core.program import RUNNING, Program

log = logging.getLogger("relayq")


class RedisHealth:
    def __init__(self, supervisor):
        self.sup = supervisor
        self.acl_log = redis_acl.AclLogReader()
        self.task: asyncio.Task | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.task = loop.create_task(self.run())

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.sup.config.supervisor.health_interval)
            p = self.sup.programs.get("redis")
            if p is not None and p.state == RUNNING:
                await self.check(p, self.sup.redis_client(p.spec))

    async def check(self, p: Program, conn) -> None:
        try:
            denials = await self.acl_log.poll(conn)
        except Exception as e:      # redis errors, timeouts: the next round tries again
            log.warning("redis: health check failed (%s)", e)
            return
        for d in denials:
            self.record_denial(p, d)

    def record_denial(self, p: Program, d: redis_acl.Denial) -> None:
        sender, note = None, None
        pid = redis_acl.find_client_process(d.client_addr, p.spec.redis.port) if d.client_addr else None
        if pid is not None:
            identity = ProcessIdentity.capture(pid)
            # the socket check after the capture: a pid reused meanwhile is not blamed
            if identity.alive and redis_acl.process_holds_client_socket(pid, d.client_addr, p.spec.redis.port):
                sender = self.sup.name_sender(identity)
        if sender is None:
            note = "client gone before it could be found" if d.client_addr else "client address unknown"
        event = self.sup.audit("redis_denied", program=p.name, command=d.command, reason=d.reason,
                               context=d.context, user=d.user, client_addr=d.client_addr,
                               client_laddr=d.client_laddr, client_name=d.client_name, count=d.count_new,
                               count_total=d.count_total, sender=sender, **({"note": note} if note else {}))
        p.recent_events.append(event)
        who = ProcessIdentity.from_dict(sender).describe() if sender else note
        log.warning("redis: denied %s x%d by user %s from %s (%s); only the supervisor may stop Redis: "
                    "`relayqctl stop redis`", d.command, d.count_new, d.user, d.client_addr, who)
