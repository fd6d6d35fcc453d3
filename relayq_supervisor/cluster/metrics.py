"""The publisher's counters for GET /metrics (registered by node/assembly.py when both are on)."""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relayq_supervisor.cluster.publisher import ClusterPublisher


class ClusterCollector(Collector):
    """Read at scrape time: nothing is counted twice, nothing runs between scrapes."""

    def __init__(self, publisher: ClusterPublisher):
        self.publisher = publisher

    def collect(self) -> Iterator[Metric]:
        p = self.publisher
        yield GaugeMetricFamily("relayq_cluster_redis_up", "1 while the cluster's Redis answers the publisher",
                                value=1 if p.reachable else 0)
        yield CounterMetricFamily("relayq_cluster_events_published", "Audit events copied to the cluster stream",
                                  value=p.published)
        yield CounterMetricFamily("relayq_cluster_events_dropped", "Audit events dropped from the cluster stream "
                                  "(backlog full while its Redis was away; the local audit log has them)",
                                  value=p.dropped)
        yield GaugeMetricFamily("relayq_cluster_backlog_events", "Audit events waiting for the cluster's Redis",
                                value=len(p.backlog))
