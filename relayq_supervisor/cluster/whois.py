"""Cross-node attribution: the Redis node asks the node owning a denied client's address
who held it, and that node answers from its own witness.

Why a question and an answer, not every node publishing its connection records: a denial
from another node is rare, connections are not. Publishing records costs Redis traffic and
memory for every connection of every node (bench/whois_cost.py: ~0.9 MiB of Redis memory
and ~1.5 MiB of traffic per 1,000 connections per node, all the time); a question costs
nothing until a denial, then ~3 KiB (two messages, one short-lived connection, one CLIENT
LIST ID), and is answered within milliseconds (BENCHMARKS.md). A record published at connect time could
also not say who held the address when a process passed it on or exited.

This module: the wire and the rules both sides share; whois_ask.py asks (the Redis node),
whois_answer.py answers (every node) and wires both (`Whois`).

The wire (channels under link.PREFIX; node N's user `relayq-node-N` may use its own question
channel and the answer channels):
- `relayq-cluster:whois:ask:<node>`: the question, JSON {id, ip, port, redis_port, at, asker,
  redis_ips (the asker's addresses: which connections of the answering node count)};
- `relayq-cluster:whois:answer:<asker>`: the answer, JSON {id, node, found, sender, note,
  client_id}, published from a connection of its own (its CLIENT ID in the answer) named
  `relayq-whois:<node>:<id>:<digest of the answer>`, kept open ANSWER_HOLD_S.
An answer is accepted only when Redis shows that connection (CLIENT LIST ID, the Redis
node's admin user): logged in as the answering node's own user `relayq-node-<node>` (a
node's credentials answer only as that node), named with the answer's
digest (the content cannot be swapped, nor another connection borrowed), and connected from
the very address asked about (the Redis node's kernel vouches for that), or from another
address of that node when both are claimed by that node alone (IPv4 to Redis, an IPv6
client): no node can answer for another's address, and one that also claims it only
leaves its own answers held to the strict rule.
"""
from __future__ import annotations

import hashlib
import json

import redis.asyncio as aioredis
import redis.exceptions

from relayq_supervisor.cluster import link
from relayq_supervisor.config.model import Config
from relayq_supervisor.witness.socket_holder import canonical_ip, split_addr  # noqa: F401 (split_addr: the wire's too)

ASK_PREFIX = link.PREFIX + "whois:ask:"
ANSWER_PREFIX = link.PREFIX + "whois:answer:"
NAME_PREFIX = "relayq-whois:"
DEADLINE_S = 1.0            # a denial waits this long for a named answer before it is written
LATE_S = 30.0               # a later answer still amends it (an `attribution` event)
ANSWER_HOLD_S = 5.0         # the answering connection stays open for the asker's check
MAX_ANSWERS_IN_FLIGHT = 64  # answering connections open at once
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
