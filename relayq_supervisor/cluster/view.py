"""Reading the cluster view back, for relayqctl: every node's status, the merged audit
timeline, one node's `why`. Straight from the cluster's Redis with the node credentials
([cluster] in the local config), so it works on every node, with any supervisor down.
The supervisor reads the same status and why for relayqctl (`cluster-status`,
`cluster-why`: read_status, read_why, on its own asyncio client); the audit timeline is
read in relayqctl only.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.exceptions

from relayq_supervisor.audit.filtering import parse_timestamp
from relayq_supervisor.audit.reading import parse_line
from relayq_supervisor.cluster import link
from relayq_supervisor.config.model import Config
from relayq_supervisor.errors import RelayqError, UnknownProgram

TIMEOUT_S = 2.0
READ_CHUNK = 10_000             # stream entries per XRANGE
CLOCK_SKEW_S = 300              # --since starts reading this much earlier: nodes' clocks differ
FOLLOW_BLOCK_MS = 1000


class UnknownNode(UnknownProgram):
    """No node of that name published to the cluster (exit status 4)."""


class ClusterUnreadable(RelayqError):
    """What a node published cannot be read (exit status 1)."""


class ClusterView:
    def __init__(self, config: Config, timeout: float = TIMEOUT_S):
        if config.cluster is None:
            raise RelayqError(f"{config.path} has no [cluster] table: this node is not part of a cluster view")
        self.url = link.display_url(link.cluster_url(config))
        self.node = config.cluster.node
        self.client = link.sync_client(config, timeout, reader=True)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.AuthenticationError as e:
            raise link.ClusterUnreachable(
                f"cluster Redis {self.url}: {e} (is [cluster] password_file a copy of the Redis node's "
                f"<run_dir>/redis-node-{self.node}.pass, and {self.node} in its [cluster] nodes?)") from None
        except redis.exceptions.NoPermissionError as e:
            raise link.ClusterUnreachable(f"cluster Redis {self.url}: {what}: {e}") from None
        except (redis.exceptions.RedisError, OSError) as e:
            raise link.ClusterUnreachable(f"cluster Redis {self.url} does not answer: {e}") from None

    # --- status ---------------------------------------------------------------------------

    def nodes(self) -> list[dict[str, Any]]:
        """`{"node", "seen_s_ago", "stale", "shut_down", "supervisor", "programs", ...}` per node,
        by name (node_entries)."""
        names = self.names()
        pipe = self.client.pipeline(transaction=False)
        queue_node_reads(pipe, names)
        return node_entries(names, self._call("GET", pipe.execute) if names else [])

    def status(self) -> dict[str, Any]:
        return {"redis": self.url, "nodes": self.nodes()}

    # --- why ------------------------------------------------------------------------------

    def why(self, node: str, name: str) -> dict[str, Any]:
        """The same reply as the supervisor's `why`, from what `node` published."""
        pipe = self.client.pipeline(transaction=False)
        queue_why_reads(pipe, node, name)
        raw, stop = self._call("GET", pipe.execute)
        if raw is None:
            raise unknown_node(node, self.nodes())
        return why_result(node, name, raw, stop)

    # --- audit ----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [n.decode() for n in self._call("ZRANGE", self.client.zrange, link.NODES_KEY, 0, -1)]

    def last_id(self) -> dict[str, str]:
        """Where each node's stream ends now: node -> its newest entry's id."""
        names = self.names()
        pipe = self.client.pipeline(transaction=False)
        pipe.time()
        for name in names:
            pipe.xrevrange(link.stream_key(name), count=1)
        replies = self._call("XREVRANGE", pipe.execute)
        seconds, micros = replies[0]
        self.started_ms = int(seconds) * 1000 + int(micros) // 1000     # Redis' clock: a stream id
        return {name: newest[0][0].decode() if newest else "0-0" for name, newest in zip(names, replies[1:],
                                                                                          strict=True)}

    def history(self, since: datetime | None, until_id: dict[str, str]) -> list[dict[str, Any]]:
        """Every event of every node's stream up to `until_id`, oldest first by event time (a
        node's backlog sent after an outage joins the timeline where it happened), repeats dropped."""
        first = "-"
        if since is not None:     # stream ids are Redis' clock at arrival, never before the event
            first = str(int((since - timedelta(seconds=CLOCK_SKEW_S)).timestamp() * 1000))
        seen: set[tuple[str, str]] = set()
        events: list[dict[str, Any]] = []
        for node, last in until_id.items():
            start = first
            while last != "0-0":
                chunk = self._call("XRANGE", self.client.xrange, link.stream_key(node), start, last, count=READ_CHUNK)
                for _entry_id, fields in chunk:
                    event = entry_event(fields, seen, node)
                    if event is not None:
                        events.append(event)
                if len(chunk) < READ_CHUNK:
                    break
                start = "(" + chunk[-1][0].decode()
        events.sort(key=lambda e: parse_timestamp(e.get("ts") or "") or datetime.min.replace(tzinfo=UTC))
        return events

    def follow(self, after_id: dict[str, str]) -> Iterator[dict[str, Any]]:
        """New events as they arrive (until interrupted): one XREAD BLOCK over every node's
        stream; a node that joins meanwhile is read from when the history was."""
        seen: set[tuple[str, str]] = set()
        last = {link.stream_key(node): entry for node, entry in after_id.items()}
        joined_from = f"{getattr(self, 'started_ms', 0)}-0"
        while True:
            for node in self.names():
                last.setdefault(link.stream_key(node), joined_from)
            if not last:
                time.sleep(FOLLOW_BLOCK_MS / 1000)
                continue
            reply = self._call("XREAD", self.client.xread, dict(last), count=READ_CHUNK, block=FOLLOW_BLOCK_MS)
            for stream, entries in reply or ():
                key = stream.decode()
                for entry_id, fields in entries:
                    last[key] = entry_id.decode()
                    event = entry_event(fields, seen, key[len(link.STREAM_PREFIX):])
                    if event is not None:
                        yield event


def queue_node_reads(pipe, names: list[str]) -> None:
    """Each node's status and the TTL of its key, on a pipeline (sync or asyncio)."""
    for name in names:
        pipe.get(link.node_key(name))
        pipe.pttl(link.node_key(name))


def node_entries(names: list[str], replies: list[Any]) -> list[dict[str, Any]]:
    """The pipeline's replies -> one entry per node. The age comes from the TTL Redis keeps
    on each node's key: no clock of any node is compared with another's."""
    out = []
    for i, name in enumerate(names):
        raw, ttl_ms = replies[2 * i], replies[2 * i + 1]
        if raw is None or ttl_ms is None or ttl_ms < 0:
            continue                # expired between the two reads
        try:
            doc = json.loads(raw)
        except ValueError:
            continue
        age = max(0.0, link.NODE_KEEP_S - ttl_ms / 1000)
        interval = doc.get("heartbeat_interval") or 2.0
        doc.pop("node", None)
        out.append({"node": name, "seen_s_ago": round(age, 3),
                    "stale": age > link.STALE_INTERVALS * interval, **doc})
    return out


def queue_why_reads(pipe, node: str, name: str) -> None:
    pipe.get(link.node_key(node))
    pipe.hget(link.why_key(node), name)


def unknown_node(node: str, nodes: list[dict[str, Any]]) -> UnknownNode:
    known = ", ".join(n["node"] for n in nodes) or "none"
    return UnknownNode(f"no node named {node!r} in the cluster view (known: {known})")


def why_result(node: str, name: str, raw: bytes, stop: bytes | None) -> dict[str, Any]:
    """`why`'s reply from `node`'s published status and its program's last stop. What a node
    published is read, not trusted: a document that is not its JSON is a ClusterUnreadable."""
    try:
        doc = json.loads(raw)
        programs = [p for p in (doc.get("programs") or []) if isinstance(p, dict)]
        last_stop = json.loads(stop) if stop else None
    except (ValueError, AttributeError, TypeError):
        raise ClusterUnreadable(f"node {node}'s published status is not readable JSON: "
                                f"it is rewritten at its next heartbeat") from None
    program = next((p for p in programs if p.get("name") == name), None)
    if program is None:
        known = ", ".join(str(p.get("name", "?")) for p in programs)
        raise UnknownProgram(f"node {node} has no program named {name!r} (known: {known})")
    return {"node": node, "program": program, "last_stop": last_stop}


async def read_why(client: aioredis.Redis, node: str, name: str) -> dict[str, Any]:
    """`ClusterView.why()` on an asyncio client: the supervisor's answer to `cluster-why`."""
    pipe = client.pipeline(transaction=False)
    queue_why_reads(pipe, node, name)
    raw, stop = await pipe.execute()
    if raw is None:
        raise unknown_node(node, (await read_status(client, ""))["nodes"])
    return why_result(node, name, raw, stop)


async def read_status(client: aioredis.Redis, url: str) -> dict[str, Any]:
    """`ClusterView.status()` on an asyncio client: the supervisor's answer to `cluster-status`
    (node/clustering.py). Two round trips, as the sync view; redis-py errors are the caller's."""
    members: list[Any] = await client.zrange(link.NODES_KEY, 0, -1)
    names = [n.decode() for n in members]
    replies: list[Any] = []
    if names:
        pipe = client.pipeline(transaction=False)
        queue_node_reads(pipe, names)
        replies = await pipe.execute()
    return {"redis": url, "nodes": node_entries(names, replies)}


def entry_event(fields: dict[bytes, bytes], seen: set[tuple[str, str]], node: str) -> dict[str, Any] | None:
    """One entry of `node`'s stream -> its audit event with `node` (the stream's, which only
    that node's user may write: not the entry's own field); None for a repeat (a batch the
    publisher sent again after a lost reply) or an entry that is not one of ours."""
    key = (node, fields.get(b"id", b"").decode("utf-8", "replace"))
    if key in seen:
        return None
    seen.add(key)
    event = parse_line(fields.get(b"event", b""))
    if event is None:
        return None
    event["node"] = node
    return event
