"""Cross-node attribution, the answering side (every node): who on this node held an
address and port at a moment, from the kernel witness's records and from /proc while the
socket lives (witness/socket_holder.py: never holding the loop for the whole scan; whois.py says how
the answer is believed); and `Whois`, what node/clustering.py wires."""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from relayq_supervisor.background import start_task
from relayq_supervisor.cluster import link
from relayq_supervisor.cluster.whois import (
    ANSWER_HOLD_S,
    MAX_ANSWERS_IN_FLIGHT,
    NAME_PREFIX,
    POLL_S,
    REDIS_ERRORS,
    RETRY_S,
    TIMEOUT_S,
    answer_channel,
    ask_channel,
    digest,
    pubsub_client,
    split_addr,
)
from relayq_supervisor.cluster.whois_ask import WhoisAsker
from relayq_supervisor.config.model import Config
from relayq_supervisor.witness.socket_holder import ScanStats, live_holder, still_holds

log = logging.getLogger(__name__)


# (client ip, client port, Redis port, when (epoch), the Redis node's addresses) -> identity
Resolver = Callable[[str, int, int, float | None, frozenset[str]], Awaitable[dict[str, Any] | None]]


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
        if len(self.answers) >= MAX_ANSWERS_IN_FLIGHT:
            # each answer holds a connection for ANSWER_HOLD_S: a flood of questions must not
            # become a flood of connections (nor of /proc scans); the asker says this node did not answer
            log.warning("cluster whois: %d answers in flight; %s's question about %s:%d not answered",
                        len(self.answers), asker, ip, port)
            return
        task = start_task(self.answer(asker, qid, ip, port, redis_port, at, redis_ips), f"cluster whois answer {qid}")
        self.answers.add(task)
        task.add_done_callback(self.answers.discard)

    async def answer(self, asker: str, qid: str, ip: str, port: int, redis_port: int, at: float | None,
                     redis_ips: frozenset[str]) -> None:
        # resolving may scan /proc, a slice per loop pass (witness/socket_holder.py): the loop goes on
        # meanwhile, and an answer after the asker's deadline amends its event
        sender = await self.resolve(ip, port, redis_port, at, redis_ips)
        log.info("cluster whois: %s asked who held %s:%d: %s", asker, ip, port,
                 f"pid {sender.get('pid')} ({sender.get('seen_by')})" if sender else "nobody known")
        note = None if sender is not None else \
            f"no process of {self.node} held {ip}:{port} then (gone before the witness saw it, or not ours)"
        answer = {"id": qid, "node": self.node, "found": sender is not None, "sender": sender, "note": note}
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
    kernel witness's record first (a closed connection needs nothing else; an open one, its
    holder checked in /proc), else the live holder of the socket (a connection opened before
    the witness looked), found by witness/socket_holder.py a slice per loop pass."""

    def __init__(self, name_process: Callable[[int], dict[str, Any] | None],
                 who_held: Callable[[str, int, float | None], dict[str, Any] | None] | None):
        self.name_process = name_process
        self.who_held = who_held
        self.scans = ScanStats()

    async def __call__(self, ip: str, port: int, redis_port: int, at: float | None,
                       redis_ips: frozenset[str] = frozenset()) -> dict[str, Any] | None:
        traced = self.who_held(ip, port, at) if self.who_held is not None else None
        if traced is not None:
            to = split_addr((traced.get("connection") or {}).get("to") or "")
            if redis_ips and (to is None or to[0] not in redis_ips):
                traced = None       # that port's connection went to another server
            elif not traced.get("alive") or (traced.get("connection") or {}).get("closed") is not None:
                return traced
            elif await still_holds(traced["pid"], ip, port, redis_port, redis_ips, self.scans):
                return traced       # still open, still its (pinned by the capture before the check)
        return await live_holder(ip, port, redis_port, redis_ips, self.name_process, self.scans)


class Whois:
    """What node/clustering.py wires: every node answers; the Redis node also asks."""

    def __init__(self, config: Config, admin: Callable[[], aioredis.Redis],
                 name_process: Callable[[int], dict[str, Any] | None],
                 who_held: Callable[[str, int, float | None], dict[str, Any] | None] | None):
        self.config = config
        self.resolver = LocalResolver(name_process, who_held)
        self.answerer = WhoisAnswerer(config, self.resolver)
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
        scans = self.resolver.scans
        out: dict[str, Any] = {"questions": self.answerer.questions, "proc_scans": scans.scans,
                               "longest_scan_slice_ms": round(scans.longest_slice_s * 1000, 3)}
        if self.asker is not None:
            a = self.asker
            out.update(asked=a.asked, answered=a.answered, late=a.late_answers, rejected=a.rejected)
        return out
