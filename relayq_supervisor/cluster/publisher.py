"""Publishing this node to the cluster's Redis: its status at each state change and every
heartbeat_interval, and a copy of every audit event in its own capped stream.

It must never block or slow supervision, and never lose the local record:
- the local JSONL audit log stays the record of truth; the stream is a copy for review;
- events wait in a bounded queue (MAX_BACKLOG); past it the oldest are dropped and counted
  (status header, metrics), never the supervisor's memory;
- one background task on the supervisor's own loop does all the talking, with redis-py's
  asyncio client and short timeouts. Not a thread: the loop already waits on sockets for
  Redis' health checks; a thread would need locks around the queue and the status it
  reads, and the GIL would share the CPU all the same. What the loop pays per event (one
  XADD packed into a pipeline) is measured in bench/cluster.py;
- when Redis does not answer: retries with a doubling delay (RETRY_MIN_S up to
  RETRY_MAX_S); the backlog is sent in order once it answers. A batch cut short by a
  lost connection is sent again whole: each entry carries its node and an id (this
  supervisor's run and the event's sequence number), and readers drop repeats.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import psutil
import redis.exceptions

from relayq_supervisor import __version__
from relayq_supervisor.background import start_task
from relayq_supervisor.cluster import link
from relayq_supervisor.config.model import Config

log = logging.getLogger(__name__)

MAX_BACKLOG = 100_000       # events held while Redis is away (about 50 MB at 500 bytes each)
# Events per round trip: one EVAL whose script XADDs each (one command to pack and parse on
# the loop, ~4 µs an event; a pipeline of XADDs costs redis-py ~40 µs an event), so a
# batch holds a due restart back by ~2 ms at most (bench/cluster_view.py)
BATCH = 500
# KEYS[1] the stream; ARGV: maxlen, node, then (id, event) pairs. Redis applies the caller's
# ACL to each call in a script, so the node user still reaches only its own keys.
XADD_EACH = """
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'node', ARGV[2], 'id', ARGV[i], 'event', ARGV[i + 1])
end
return (#ARGV - 2) / 2
"""
TIMEOUT_S = 2.0             # connect and reply timeout of each call
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0
CLOSE_FLUSH_S = 1.0         # at shutdown: how long the last events may take to leave
# State changes come in bursts (1000 instances starting): one status document per this
# much time at most, the last change always included.
STATUS_MIN_GAP_S = 0.1


class Published(Protocol):
    """A program as the publisher sees it (core.program.Program is one)."""

    @property
    def name(self) -> str: ...

    @property
    def last_stop(self) -> dict[str, Any] | None: ...


def node_addresses() -> list[str]:
    """This node's own IP addresses (not loopback nor link-local): who it is, seen from others."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = a.address.split("%", 1)[0]
            if ip.startswith(("127.", "fe80:")) or ip == "::1":
                continue
            found.append(ip)
    return sorted(set(found))


class ClusterPublisher:
    def __init__(self, config: Config, status: Callable[[], dict[str, Any]],
                 programs: Callable[[], Iterable[Published]],
                 on_reachable: Callable[[bool], None] | None = None, max_backlog: int = MAX_BACKLOG):
        assert config.cluster is not None
        self.spec = config.cluster
        self.url = link.display_url(link.cluster_url(config))
        self.own_redis = not config.cluster.redis_url and config.redis is not None      # the Redis node
        self.client = link.async_client(config, TIMEOUT_S)
        self.status = status
        self.programs = programs
        self.on_reachable = on_reachable
        self.max_backlog = max_backlog
        self.run_id = f"{os.getpid()}.{int(time.time() * 1000)}"    # this supervisor's run
        self.backlog: collections.deque[tuple[int, bytes]] = collections.deque()
        self.seq = 0
        self.published = 0
        self.dropped = 0
        self.reachable: bool | None = None      # None: not tried yet
        self.problem: str | None = None
        self.down_since: float | None = None
        self.closing = False
        self.status_due = True
        # program -> the last_stop published (held, so that `is` cannot match a new dict at its address)
        self.why_sent: dict[str, dict[str, Any]] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.host = socket.gethostname()
        self.key = link.node_key(self.spec.node)
        self.stream = link.stream_key(self.spec.node)
        self.maxlen = link.STREAM_MAXLEN     # shared with the other nodes: learnt at each status (ZCARD)
        self.name_checked = False
        self.name_clash: str | None = None      # another host publishes under our node name
        self.refused: str | None = None         # the cluster's Redis answers but denies our writes (NOPERM)

    # --- what the supervisor calls (never blocks) ---------------------------------------

    def audit_written(self, event: dict[str, Any], line: bytes) -> None:
        """AuditLog listener: queue the event's line for the stream."""
        self.seq += 1
        if len(self.backlog) >= self.max_backlog:
            self.backlog.popleft()
            self.dropped += 1
        self.backlog.append((self.seq, line.rstrip(b"\n")))
        self.wake.set()

    def status_changed(self) -> None:
        self.status_due = True
        self.wake.set()

    def start(self) -> None:
        self.task = start_task(self.run(), "cluster publisher")

    def describe(self) -> dict[str, Any]:
        """For the status header (and metrics)."""
        return {"node": self.spec.node, "redis": self.url, "reachable": self.reachable,
                "published": self.published, "backlog": len(self.backlog), "dropped": self.dropped,
                "problem": self.problem}

    def note(self) -> str | None:
        """The status header's line when something is wrong, else None."""
        parts = []
        if self.reachable is False:
            since = time.strftime("%H:%M:%S", time.localtime(self.down_since)) if self.down_since else "?"
            parts.append(f"cluster Redis {self.url} unreachable since {since} ({self.problem}); "
                         f"{len(self.backlog)} events waiting")
        if self.refused:
            parts.append(self.refused)
        if self.name_clash:
            parts.append(self.name_clash)
        if self.dropped:
            parts.append(f"{self.dropped} audit events dropped from the cluster stream (backlog over "
                         f"{self.max_backlog}; the local audit log has them)")
        return "; ".join(parts) or None

    # --- the task -------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = RETRY_MIN_S
        next_beat = 0.0
        last_status = -STATUS_MIN_GAP_S
        while not self.closing:
            due = min(next_beat, last_status + STATUS_MIN_GAP_S) if self.status_due else next_beat
            wait = due - loop.time()
            if not self.backlog and wait > 0:
                try:
                    await asyncio.wait_for(self.wake.wait(), wait)
                except TimeoutError:
                    pass
            self.wake.clear()
            try:
                await self.send_events()
                now = loop.time()
                if now >= next_beat or (self.status_due and now >= last_status + STATUS_MIN_GAP_S):
                    self.status_due = False
                    last_status = now
                    await self.send_status()
                    next_beat = loop.time() + self.spec.heartbeat_interval
                self.set_reachable(True, None)
                self.refused = None
                delay = RETRY_MIN_S
            except redis.exceptions.NoPermissionError as e:
                # Redis answers (a remote `redis` dependency is met: the workers run), but this
                # node may not write there: the view lacks it, which status says
                self.set_reachable(True, None)
                self.status_due = True
                if self.refused is None:
                    log.error("cluster: %s", self.refusal(e))
                self.refused = self.refusal(e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except (redis.exceptions.RedisError, OSError, TimeoutError) as e:
                self.status_due = True
                self.set_reachable(False, str(e) or type(e).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(RETRY_MIN_S, min(RETRY_MAX_S, self.spec.heartbeat_interval)))
            except Exception:       # a bug here must end neither supervision nor, for good, the view
                log.exception("cluster: publishing failed; trying again in %gs", RETRY_MAX_S)
                self.status_due = True
                await asyncio.sleep(RETRY_MAX_S)

    def refusal(self, e: Exception) -> str:
        hint = "" if self.spec.password_file else (
            ": this node publishes with the workers' credentials, which may not write the cluster view once "
            f"the Redis node declares [cluster] nodes: add {self.spec.node!r} there, copy its "
            f"<run_dir>/redis-node-{self.spec.node}.pass here and set [cluster] password_file")
        return f"the cluster's Redis refuses this node's writes ({e}){hint}"

    def set_reachable(self, up: bool, problem: str | None) -> None:
        if up == self.reachable:
            self.problem = problem if not up else None
            return
        was = self.reachable
        self.reachable, self.problem = up, problem
        if up:
            self.down_since = None
            if was is False:
                log.info("cluster: %s answers again; sending %d held events in order", self.url, len(self.backlog))
        else:
            self.down_since = time.time()
            # not yet answering at start is usual on the Redis node itself (its Redis starts after us):
            # no warning for that
            log.log(logging.ERROR if was else logging.INFO if was is None and self.own_redis else logging.WARNING,
                    "cluster: %s does not answer (%s); events are held (at most %d) and sent when it does; "
                    "programs keep running", self.url, problem, self.max_backlog)
        if self.on_reachable is not None:
            self.on_reachable(up)

    async def send_events(self) -> None:
        while self.backlog:
            batch = list(itertools.islice(self.backlog, BATCH))
            args: list[bytes | str | int] = [self.maxlen, self.spec.node]
            for seq, line in batch:
                args += [f"{self.run_id}:{seq}", line]
            await self.client.execute_command("EVAL", XADD_EACH, 1, self.stream, *args)
            # what arrived while we waited went to the back: the batch is still in front
            for _ in batch:
                if self.backlog and self.backlog[0][0] <= batch[-1][0]:
                    self.backlog.popleft()
            self.published += len(batch)
            await asyncio.sleep(0)      # what else is due (a restart) goes before the next batch

    def document(self, final: bool = False) -> dict[str, Any]:
        """`status --json`'s shape, plus who and when."""
        doc = self.status()
        doc.update(node=self.spec.node, host=self.host, pid=os.getpid(), version=__version__,
                   seen=time.time(), heartbeat_interval=self.spec.heartbeat_interval,
                   addresses=node_addresses(), shut_down=final)
        return doc

    async def check_name(self) -> None:
        """Before our first publication: is another host live under our node name (a cloned
        machine keeps its host name, the default node name)? Said in status, not refused:
        the cluster view of that name is wrong, supervision is not."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.key)
        pipe.pttl(self.key)
        raw, ttl_ms = await pipe.execute()
        self.name_checked = True
        try:
            other = json.loads(raw) if raw else None
        except ValueError:
            other = None
        if not isinstance(other, dict) or other.get("shut_down") or other.get("host") == self.host:
            return          # nobody, a clean stop, or this host's own previous supervisor
        age = link.NODE_KEEP_S - (ttl_ms or 0) / 1000
        interval = other.get("heartbeat_interval") or self.spec.heartbeat_interval
        if age <= link.STALE_INTERVALS * interval:
            self.name_clash = (f"node name {self.spec.node!r} is also published by host {other.get('host')} "
                               f"(pid {other.get('pid')}): give each node its own [cluster] node")
            log.error("cluster: %s", self.name_clash)

    async def send_status(self, final: bool = False) -> None:
        if not self.name_checked:
            await self.check_name()
        doc = json.dumps(self.document(final), separators=(",", ":"), default=str)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.key, doc, ex=link.NODE_KEEP_S)
        pipe.zcard(link.NODES_KEY)
        if not self.spec.password_file:
            # The index of names: the Redis node writes its declared members ([cluster] nodes),
            # a node on the workers' credentials itself; a node's own user may only read it
            # (kinds/redis/acl.py), so that no node can fill or empty it.
            now = time.time()
            pipe.zadd(link.NODES_KEY, {name: now for name in (self.spec.node, *self.spec.nodes)})
            pipe.zremrangebyscore(link.NODES_KEY, "-inf", now - link.NODE_KEEP_S)
        changed = {}
        for p in self.programs():
            stop = p.last_stop
            if stop is not None and self.why_sent.get(p.name) is not stop:
                changed[p.name] = (stop, json.dumps(stop, separators=(",", ":"), default=str))
        if changed:
            pipe.hset(link.why_key(self.spec.node), mapping={name: text for name, (_, text) in changed.items()})
            pipe.expire(link.why_key(self.spec.node), link.NODE_KEEP_S)
        replies = await pipe.execute()
        self.maxlen = link.stream_maxlen(replies[1])
        for name, (stop, _) in changed.items():
            self.why_sent[name] = stop

    async def close(self) -> None:
        """At shutdown: the last events and a final status (all stopped), within CLOSE_FLUSH_S."""
        self.closing = True
        self.wake.set()
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self.reachable:
            try:
                await asyncio.wait_for(self._last_words(), CLOSE_FLUSH_S)
            except (redis.exceptions.RedisError, OSError, TimeoutError) as e:
                log.warning("cluster: %d events not sent at shutdown (%s); the local audit log has them",
                            len(self.backlog), e)
        await self.client.aclose()

    async def _last_words(self) -> None:
        await self.send_events()
        await self.send_status(final=True)
