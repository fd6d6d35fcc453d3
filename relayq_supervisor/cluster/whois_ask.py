"""Cross-node attribution, the asking side (the Redis node): who held a denied client's
address, asked of the node that publishes it; the answer believed only when Redis vouches
for its connection (whois.py says how)."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from relayq_supervisor.background import start_task
from relayq_supervisor.cluster import link
from relayq_supervisor.cluster.whois import (
    DEADLINE_S,
    LATE_S,
    NAME_PREFIX,
    POLL_S,
    REDIS_ERRORS,
    RETRY_S,
    TIMEOUT_S,
    address_claims,
    answer_channel,
    ask_channel,
    believed,
    digest,
    pubsub_client,
    split_addr,
)
from relayq_supervisor.config.model import Config
from relayq_supervisor.witness.connections import ADDRESSES_TTL_S, local_addresses

log = logging.getLogger(__name__)


@dataclass
class Question:
    id: str
    ip: str
    port: int
    owners: list[str]
    claims: dict[str, set[str]]
    asked: float
    late: Callable[[dict[str, Any] | None, str], None]
    answered: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    rejected: list[str] = field(default_factory=list)
    settled: bool = False           # an answer was believed: later ones are still checked (a forger
                                    # answering second is logged, not ignored) but change nothing


class WhoisAsker:
    """On the Redis node: `ask` a denied client's address of the node that holds it."""

    def __init__(self, config: Config, admin: Callable[[], aioredis.Redis], deadline: float = DEADLINE_S):
        assert config.cluster is not None
        self.config = config
        self.node = config.cluster.node
        self.admin = admin                  # the Redis node's admin client: CLIENT LIST
        self.deadline = deadline
        self.client = link.async_client(config, TIMEOUT_S)
        self.pending: dict[str, Question] = {}
        self.task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()
        self.asked = self.answered = self.late_answers = self.rejected = 0
        self.addresses: set[str] = set()
        self.addresses_at = -ADDRESSES_TTL_S

    def start(self) -> None:
        self.task = start_task(self.listen(), "cluster whois (answers)")

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for q in self.pending.values():
            if not q.answered.done():       # the denial is still written, saying why it is unnamed
                q.answered.set_result({"node": ", ".join(q.owners), "sender": None,
                                       "note": "not answered before this supervisor shut down"})
        await self.client.aclose()

    def is_remote(self, addr: str) -> bool:
        where = split_addr(addr)
        if where is None or ipaddress.ip_address(where[0]).is_loopback:
            return False
        now = time.monotonic()
        if now - self.addresses_at > ADDRESSES_TTL_S:
            self.addresses, self.addresses_at = local_addresses(), now
        return where[0] not in self.addresses

    async def ask(self, addr: str, redis_port: int, at: float | None,
                  late: Callable[[dict[str, Any] | None, str], None]) -> tuple[dict[str, Any] | None, str]:
        """(the sender with its `node`, None) or (None, why not), within `deadline`; a
        verified answer after it goes to `late`. Never raises."""
        where = split_addr(addr)
        if where is None:
            return None, f"client address {addr!r} is not an IP address and port"
        ip, port = where
        try:
            claims = await asyncio.wait_for(address_claims(self.client), self.deadline)
            owners = sorted(claims.get(ip, ()))
        except REDIS_ERRORS as e:
            return None, f"cluster Redis unreachable, no node asked ({e or type(e).__name__})"
        if not owners:
            return None, f"no relayq node holds {addr} (not a cluster member?)"
        if not self.subscribed.is_set():
            try:
                await asyncio.wait_for(self.subscribed.wait(), self.deadline)
            except TimeoutError:
                return None, f"node {', '.join(owners)} not asked: no answer channel yet"
        q = Question(id=uuid.uuid4().hex[:16], ip=ip, port=port, owners=owners, claims=claims, asked=time.time(),
                     late=late)
        self.pending[q.id] = q
        asyncio.get_running_loop().call_later(LATE_S, self.pending.pop, q.id, None)
        self.is_remote(addr)        # refreshes self.addresses: the ones a client may have reached us on
        redis_ips = sorted(a for a in self.addresses if not ipaddress.ip_address(a).is_loopback)
        question = json.dumps({"id": q.id, "ip": ip, "port": port, "redis_port": redis_port, "at": at,
                               "asker": self.node, "redis_ips": redis_ips}, separators=(",", ":"))
        self.asked += 1
        try:
            listeners = 0
            for owner in owners:
                listeners += await asyncio.wait_for(self.client.publish(ask_channel(owner), question), self.deadline)
        except REDIS_ERRORS as e:
            return None, f"cluster Redis unreachable, node {', '.join(owners)} not asked ({e or type(e).__name__})"
        names = ", ".join(owners)
        if not listeners:
            return None, f"node {names} did not answer (not listening)"
        try:
            answer = await asyncio.wait_for(asyncio.shield(q.answered), max(0.0, q.asked + self.deadline - time.time()))
        except TimeoutError:
            q.answered.cancel()         # from now on, an answer is a late one
            why = f"; rejected: {'; '.join(q.rejected)}" if q.rejected else ""
            return None, f"node {names} did not answer within {self.deadline:g} s{why}"
        return self.sender_of(answer)

    @staticmethod
    def sender_of(answer: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        sender = answer.get("sender") if isinstance(answer.get("sender"), dict) else None
        if sender is not None:
            sender["node"] = answer["node"]
            return sender, ""
        return None, f"node {answer['node']}: {answer.get('note') or 'no process held it'}"

    async def listen(self) -> None:
        while True:
            client = pubsub_client(self.config)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(answer_channel(self.node))
                self.subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=POLL_S)
                    if message is not None:
                        try:
                            await self.received(message["data"])
                        except Exception:       # one bad answer must not end the listening
                            log.exception("cluster whois: handling an answer failed")
            except REDIS_ERRORS as e:
                self.subscribed.clear()
                log.warning("cluster whois: answer channel lost (%s); again in %gs", e or type(e).__name__, RETRY_S)
            finally:
                await pubsub.aclose()
                await client.aclose()
            await asyncio.sleep(RETRY_S)

    async def received(self, data: bytes) -> None:
        try:
            answer = json.loads(data)
            q = self.pending.get(answer["id"])
        except (ValueError, KeyError, TypeError):
            log.warning("cluster whois: an unreadable answer ignored")
            return
        if q is None:
            return                  # later than LATE_S, or not ours
        problem = await self.verify(q, answer, data)
        if problem is not None:
            q.rejected.append(problem)
            self.rejected += 1
            log.warning("cluster whois: answer about %s:%d rejected: %s", q.ip, q.port, problem)
            return
        if q.settled:
            return                  # a second answer that checks out: the first one stands
        q.settled = True
        if not q.answered.done():
            self.answered += 1
            q.answered.set_result(answer)
        else:
            self.late_answers += 1
            q.late(*self.sender_of(answer))

    async def verify(self, q: Question, answer: dict[str, Any], data: bytes) -> str | None:
        """None when Redis shows the answer came from the node asked, from the address asked
        about, logged in as the node user; else why not."""
        node = answer.get("node")
        if node not in q.owners:
            return f"{node!r} was not asked (the address is {', '.join(q.owners)}'s)"
        name = f"{NAME_PREFIX}{node}:{q.id}:{digest(data)}"
        try:
            # that one connection (CLIENT LIST ID, Redis 6.2+): the cost does not grow with the clients
            client_id = int(answer["client_id"])
            clients = await asyncio.wait_for(self.admin().client_list(client_id=[client_id]), TIMEOUT_S)
        except (KeyError, TypeError, ValueError):
            return "the answer names no connection"
        except REDIS_ERRORS as e:
            return f"cannot check the answering connection ({e or type(e).__name__})"
        conn = next((c for c in clients if c.get("name") == name), None)
        if conn is None:
            return f"no connection of node {node} vouches for this answer"
        if conn.get("user") != link.node_user(node):
            # each node has its own user (kinds/redis/acl.py): another node's credentials cannot answer as it
            return f"the answer as {node} came from user {conn.get('user')!r}, not {node}'s own {link.node_user(node)}"
        source = split_addr(conn.get("addr", ""))
        if source is not None and believed(q.ip, node, source[0], q.claims):
            return None
        return f"node {node} answered from {conn.get('addr')}, not from {q.ip} nor another address only it holds"
