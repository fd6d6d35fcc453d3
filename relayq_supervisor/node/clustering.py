"""[cluster] on one node: its status and audit events in the cluster's Redis (the
publisher), and whois (every node answers who held an address; the Redis node asks).
Without [cluster], every method here does nothing."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.exceptions
from redis.asyncio import Redis

from relayq_supervisor.background import start_task
from relayq_supervisor.cluster import link, view
from relayq_supervisor.cluster.metrics import ClusterCollector
from relayq_supervisor.cluster.publisher import ClusterPublisher, Published
from relayq_supervisor.cluster.whois_answer import Whois
from relayq_supervisor.cluster.whois_ask import WhoisAsker
from relayq_supervisor.config import Config
from relayq_supervisor.errors import RelayqError

log = logging.getLogger(__package__)     # "relayq_supervisor.node": its lines read "node: ..." as before the split

# `cluster-status` (relayqctl status --cluster asking this supervisor): each Redis reply
# within READ_TIMEOUT_S, the whole answer within ANSWER_TIMEOUT_S (relayqctl waits a little
# longer, then reads Redis itself); at most READER_CONNECTIONS requests reach Redis at once
READ_TIMEOUT_S = 1.0
ANSWER_TIMEOUT_S = 1.5
READER_CONNECTIONS = 2

WhoHeld = Callable[[str, int, float | None], dict[str, Any] | None]


class Clustering:
    def __init__(self, config: Config, *, status: Callable[[], dict[str, Any]],
                 programs: Callable[[], Iterable[Published]], reconcile: Callable[[], object],
                 redis_admin: Callable[[], Any], name_process: Callable[[int], dict[str, Any] | None],
                 who_held: WhoHeld | None):
        self.config = config
        self.reconcile = reconcile
        self.reader: Redis | None = None    # cluster-status' client, made at its first request
        self.redis_node = config.redis is not None      # this node runs the cluster's Redis
        # the Redis node asks the node owning a denied client's address; every node answers
        self.whois = Whois(config, redis_admin, name_process, who_held) if config.cluster is not None else None
        # this node's status and audit events in the cluster's Redis
        self.publisher = ClusterPublisher(config, status, programs, self.reachable_changed) \
            if config.cluster is not None else None

    @property
    def asker(self) -> WhoisAsker | None:
        """For the kinds (Redis' denials): who held a remote client's address."""
        return self.whois.asker if self.whois is not None else None

    def audit_listener(self) -> Callable[[dict[str, Any], bytes], None] | None:
        return self.publisher.audit_written if self.publisher is not None else None

    def collector(self) -> ClusterCollector | None:
        """The publisher's counters for GET /metrics."""
        return ClusterCollector(self.publisher) if self.publisher is not None else None

    def status_changed(self) -> None:
        if self.publisher is not None:
            self.publisher.status_changed()

    def remote_ready(self, name: str) -> bool:
        """A dependency on another node (`redis` on a worker-only node) is met: its Redis answers."""
        return self.publisher is not None and self.publisher.reachable is True

    def reachable_changed(self, up: bool) -> None:
        """Programs waiting on the cluster's Redis may start; a lost Redis stops nothing (the
        workers reconnect by themselves): it is shown in status."""
        if up:
            self.reconcile()

    def start(self, watch_connections: Callable[[list[tuple[str, int]]], bool] | None) -> None:
        """`watch_connections`: the kernel witness records this node's connections to the
        cluster's Redis (None: no witness)."""
        if self.publisher is not None:
            self.publisher.start()
        if self.whois is not None:
            self.whois.start()
            if watch_connections is not None:
                start_task(self.watch_cluster_connections(watch_connections), "witness: the cluster's Redis")

    async def watch_cluster_connections(self, watch: Callable[[list[tuple[str, int]]], bool]) -> None:
        """A worker node's witness records its processes' connections to the cluster's Redis."""
        assert self.whois is not None
        destinations = await self.whois.remote_redis()
        if destinations and watch(destinations):
            log.info("kernel witness: recording connections to the cluster's Redis (%s)",
                     ", ".join(f"{ip}:{port}" for ip, port in destinations))

    async def close_before_programs(self) -> None:
        """The Redis node's own Redis is about to stop: its last words go first."""
        if self.publisher is not None and self.redis_node:
            await self.publisher.close()

    async def cluster_status(self) -> dict[str, Any]:
        """Every node's published status, as `relayqctl status --cluster` shows it, read on
        this loop by this node's read-only user (`relayq-view-<node>`): relayqctl then needs
        no redis-py of its own (its import is most of a new interpreter's time)."""
        return await self.read_view(lambda client, url: view.read_status(client, url))

    async def cluster_why(self, node: str, name: str) -> dict[str, Any]:
        """`relayqctl why NAME --node N`: what node N published of NAME, read as above."""
        return await self.read_view(lambda client, url: view.read_why(client, node, name))

    async def read_view(self, read: Callable[[Redis, str], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        if self.config.cluster is None:
            raise RelayqError("this supervisor has no [cluster] table")
        if self.reader is None:
            self.reader = link.async_client(self.config, READ_TIMEOUT_S, reader=True,
                                            max_connections=READER_CONNECTIONS)
        url = link.display_url(link.cluster_url(self.config))
        try:
            return await asyncio.wait_for(read(self.reader, url), ANSWER_TIMEOUT_S)
        except TimeoutError:
            raise link.ClusterUnreachable(f"cluster Redis {url}: no answer within {ANSWER_TIMEOUT_S:g}s") from None
        except (redis.exceptions.RedisError, OSError) as e:
            raise link.ClusterUnreachable(f"cluster Redis {url}: {e}") from None

    async def close_after_programs(self) -> None:
        """A worker node's last words (all stopped); whois ends on every node."""
        if self.publisher is not None and not self.redis_node:
            await self.publisher.close()
        if self.reader is not None:
            await self.reader.aclose()
            self.reader = None
        if self.whois is not None:
            await self.whois.close()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.publisher is not None:
            out["cluster"] = self.publisher.describe()
        if self.whois is not None:
            out["whois"] = self.whois.describe()
        return out

    def note(self) -> str | None:
        return self.publisher.note() if self.publisher is not None else None
