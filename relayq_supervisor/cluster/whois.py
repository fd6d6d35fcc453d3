"""Cross-node attribution: the Redis node asks the node owning a denied client's address
who held it, and that node answers from its own witness.

Why a question and an answer, not every node publishing its connection records: a denial
from another node is rare, connections are not. Publishing records costs Redis traffic and
memory for every connection of every node (bench/whois_cost.py: ~0.25 MB of Redis memory
and ~0.3 MB of traffic per 1,000 connections per node, all the time); a question costs
nothing until a denial, then two small messages and one short-lived connection, and is
answered within milliseconds (BENCHMARKS.md). A record published at connect time could
also not say who held the address when a process passed it on or exited.

The wire (the `relayq-node` user's channels, link.PREFIX):
- `relayq-cluster:whois:ask:<node>`: the question, JSON {id, ip, port, redis_port, at, asker};
- `relayq-cluster:whois:answer:<asker>`: the answer, JSON {id, node, found, sender, note,
  client_id}, published from a connection of its own (its CLIENT ID in the answer) named
  `relayq-whois:<node>:<id>:<digest of the answer>`, kept open ANSWER_HOLD_S.
An answer is accepted only when Redis shows that connection (CLIENT LIST ID, the Redis
node's admin user): logged in as the node user (node credentials), named with the answer's
digest (the content cannot be swapped, nor another connection borrowed), and connected from
the very address asked about (the Redis node's kernel vouches for that), or from another
address of that node when both are claimed by that node alone (IPv4 to Redis, an IPv6
client): no node can answer for another's address, and one that also claims it only
leaves its own answers held to the strict rule.
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from relayq_supervisor.background import start_task
from relayq_supervisor.cluster import link
from relayq_supervisor.config import Config
from relayq_supervisor.kinds.redis import acl
from relayq_supervisor.witness.connections import ADDRESSES_TTL_S, local_addresses

log = logging.getLogger(__name__)

ASK_PREFIX = link.PREFIX + "whois:ask:"
ANSWER_PREFIX = link.PREFIX + "whois:answer:"
NAME_PREFIX = "relayq-whois:"
DEADLINE_S = 1.0            # a denial waits this long for a named answer before it is written
LATE_S = 30.0               # a later answer still amends it (an `attribution` event)
ANSWER_HOLD_S = 5.0         # the answering connection stays open for the asker's check
TIMEOUT_S = 2.0
RETRY_S = 1.0
POLL_S = 1.0                # pub/sub read timeout: how soon a closing task notices


REDIS_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


def ask_channel(node: str) -> str:
    return ASK_PREFIX + node


def answer_channel(node: str) -> str:
    return ANSWER_PREFIX + node


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()[:16]


def canonical_ip(text: str) -> str | None:
    try:
        ip = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def split_addr(addr: str) -> tuple[str, int] | None:
    """Redis' `addr=` (`10.0.0.2:51234`, `[fd00::2]:51234`, `fd00::2:51234`) -> (ip, port)."""
    host, sep, port = (addr or "").rpartition(":")
    ip = canonical_ip(host) if sep and port.isdigit() else None
    return (ip, int(port)) if ip is not None else None


def pubsub_client(config: Config) -> aioredis.Redis:
    """A connection that may wait for messages indefinitely (no read timeout)."""
    options = link.connection_options(config, TIMEOUT_S)
    options["socket_timeout"] = None
    return aioredis.Redis(**options)


async def address_claims(client: aioredis.Redis) -> dict[str, set[str]]:
    """ip -> the nodes whose last heartbeat lists it among their addresses."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in await client.zrange(link.NODES_KEY, 0, -1)]
    if not names:
        return {}
    docs = await client.mget([link.node_key(n) for n in names])
    claims: dict[str, set[str]] = {}
    for name, raw in zip(names, docs, strict=True):
        try:
            addresses = json.loads(raw).get("addresses") or [] if raw else []
        except ValueError:
            continue
        for a in addresses:
            ip = canonical_ip(a) if isinstance(a, str) else None
            if ip is not None:
                claims.setdefault(ip, set()).add(name)
    return claims


def believed(asked_ip: str, node: str, source_ip: str, claims: dict[str, set[str]]) -> bool:
    """May `node`, whose answer came over a connection from `source_ip` (as the Redis node's
    kernel saw it), answer for `asked_ip`? From that very address, yes; from another of its
    addresses (IPv4 to Redis, an IPv6 client) only when both are claimed by it alone, so
    claiming someone else's address gains nothing."""
    if source_ip == asked_ip:
        return True
    return claims.get(asked_ip) == {node} and claims.get(source_ip) == {node}


# --- the asking side (the Redis node) ------------------------------------------------------

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
            if not q.answered.done():
                q.answered.cancel()
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
        self.pending.pop(q.id, None)
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
        if conn.get("user") != link.NODE_USER:
            return f"the answering connection is user {conn.get('user')!r}, not the node user {link.NODE_USER}"
        source = split_addr(conn.get("addr", ""))
        if source is not None and believed(q.ip, node, source[0], q.claims):
            return None
        return f"node {node} answered from {conn.get('addr')}, not from {q.ip} nor another address only it holds"


# --- the answering side (every node) -------------------------------------------------------

# (client ip, client port, Redis port, when (epoch), the Redis node's addresses) -> identity
Resolver = Callable[[str, int, int, float | None, frozenset[str]], dict[str, Any] | None]


class WhoisAnswerer:
    """On every node: answer the questions about its own addresses from `resolve`."""

    def __init__(self, config: Config, resolve: Resolver):
        assert config.cluster is not None
        self.config = config
        self.node = config.cluster.node
        self.resolve = resolve
        self.task: asyncio.Task[None] | None = None
        self.answers: set[asyncio.Task[None]] = set()
        self.subscribed = asyncio.Event()
        self.questions = 0

    def start(self) -> None:
        self.task = start_task(self.listen(), "cluster whois (questions)")

    async def close(self) -> None:
        for t in [self.task, *self.answers]:
            if t is not None:
                t.cancel()
        await asyncio.gather(*(t for t in [self.task, *self.answers] if t is not None), return_exceptions=True)

    async def listen(self) -> None:
        while True:
            client = pubsub_client(self.config)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(ask_channel(self.node))
                self.subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=POLL_S)
                    if message is not None:
                        try:
                            self.question(message["data"])
                        except Exception:       # one bad question must not end the listening
                            log.exception("cluster whois: answering a question failed")
            except REDIS_ERRORS as e:
                self.subscribed.clear()
                log.warning("cluster whois: question channel lost (%s); again in %gs", e or type(e).__name__, RETRY_S)
            finally:
                await pubsub.aclose()
                await client.aclose()
            await asyncio.sleep(RETRY_S)

    def question(self, data: bytes) -> None:
        try:
            q = json.loads(data)
            qid, ip, port, redis_port, asker = str(q["id"]), str(q["ip"]), int(q["port"]), int(q["redis_port"]), \
                str(q["asker"])
            at = float(q["at"]) if q.get("at") is not None else None
            redis_ips = frozenset(str(a) for a in q.get("redis_ips") or ())
        except (ValueError, KeyError, TypeError):
            log.warning("cluster whois: an unreadable question ignored")
            return
        self.questions += 1
        sender = self.resolve(ip, port, redis_port, at, redis_ips)
        log.info("cluster whois: %s asked who held %s:%d: %s", asker, ip, port,
                 f"pid {sender.get('pid')} ({sender.get('seen_by')})" if sender else "nobody known")
        note = None if sender is not None else \
            f"no process of {self.node} held {ip}:{port} then (gone before the witness saw it, or not ours)"
        answer = {"id": qid, "node": self.node, "found": sender is not None, "sender": sender, "note": note}
        task = start_task(self.answer(asker, qid, answer), f"cluster whois answer {qid}")
        self.answers.add(task)
        task.add_done_callback(self.answers.discard)

    async def answer(self, asker: str, qid: str, answer: dict[str, Any]) -> None:
        client = link.async_client(self.config, TIMEOUT_S)
        try:
            answer["client_id"] = await client.client_id()
            payload = json.dumps(answer, separators=(",", ":"), default=str).encode()
            await client.client_setname(f"{NAME_PREFIX}{self.node}:{qid}:{digest(payload)}")
            await client.publish(answer_channel(asker), payload)
            await asyncio.sleep(ANSWER_HOLD_S)
        except REDIS_ERRORS as e:
            log.warning("cluster whois: could not answer %s (%s)", asker, e or type(e).__name__)
        finally:
            await client.aclose()


class LocalResolver:
    """Who on this node held ip:port in a connection to the cluster's Redis at `at`: the
    live holder of the socket (pinned, its supervised instance named), else the kernel
    witness's record of a connection that has closed."""

    def __init__(self, name_process: Callable[[int], dict[str, Any] | None],
                 who_held: Callable[[str, int, float | None], dict[str, Any] | None] | None):
        self.name_process = name_process
        self.who_held = who_held

    def __call__(self, ip: str, port: int, redis_port: int, at: float | None,
                 redis_ips: frozenset[str] = frozenset()) -> dict[str, Any] | None:
        addr = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
        pid = acl.find_client_process(addr, redis_port)
        if pid is not None:
            identity = self.name_process(pid)
            # the socket check after the capture: a pid reused meanwhile is not blamed
            if identity is not None and identity.get("alive") and acl.process_holds_client_socket(pid, addr, redis_port):
                return dict(identity, seen_by="procfs")
        traced = self.who_held(ip, port, at) if self.who_held is not None else None
        to = split_addr(((traced or {}).get("connection") or {}).get("to") or "")
        if traced is not None and redis_ips and (to is None or to[0] not in redis_ips):
            return None         # that port's connection went to another server
        return traced


class Whois:
    """What node.py wires: every node answers; the Redis node also asks."""

    def __init__(self, config: Config, admin: Callable[[], aioredis.Redis],
                 name_process: Callable[[int], dict[str, Any] | None],
                 who_held: Callable[[str, int, float | None], dict[str, Any] | None] | None):
        self.config = config
        self.answerer = WhoisAnswerer(config, LocalResolver(name_process, who_held))
        self.asker = WhoisAsker(config, admin) if config.redis is not None else None

    def start(self) -> None:
        self.answerer.start()
        if self.asker is not None:
            self.asker.start()

    async def close(self) -> None:
        await self.answerer.close()
        if self.asker is not None:
            await self.asker.close()

    async def remote_redis(self) -> list[tuple[str, int]]:
        """The cluster's Redis as (ip, port) pairs, where it is another host's (a node
        without [redis]): the destinations whose connections the witness records."""
        if self.config.redis is not None:
            return []
        options = link.connection_options(self.config, TIMEOUT_S)
        host, port = options["host"], int(options["port"])
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, proto=6)
        except OSError as e:
            log.warning("cluster whois: cannot resolve %s (%s); connections to it are not recorded", host, e)
            return []
        return sorted({(str(info[4][0]), port) for info in infos})

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"questions": self.answerer.questions}
        if self.asker is not None:
            a = self.asker
            out.update(asked=a.asked, answered=a.answered, late=a.late_answers, rejected=a.rejected)
        return out
