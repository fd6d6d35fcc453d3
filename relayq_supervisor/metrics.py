"""Prometheus metrics: `[supervisor] metrics_listen` serves `GET /metrics` on the loop.

What programs are doing is read from the arbiter's programs at scrape time
(metrics_programs.py, which keeps each instance's lines while it does not change and
formats the others a slice at a time), so no transition does any bookkeeping for
metrics. What happened (signals, denied Redis commands, failed audit writes) is counted
where the audit event is made (`Node.audit` sees every event). The text is rendered by
`prometheus_client`.

The endpoint runs on the supervisor's own loop, never in a thread of its own
(prometheus_client's HTTP server would add one): every step is non-blocking, each
connection has deadlines and their number is capped, so a stuck or slow scraper
costs a few buffered kilobytes, never a delayed restart. It is read-only and answers
only GET/HEAD /metrics.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from relayq_supervisor import __version__
from relayq_supervisor.config.model import ListenAddress
from relayq_supervisor.metrics_programs import ProgramText, Shown

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 0.5        # how often the lag probe asks to run; two wake-ups a second
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
MAX_CONNECTIONS = 4         # scrapers at once; Prometheus uses one per target
HEADER_TIMEOUT_S = 5.0      # to send the request line and headers
WRITE_TIMEOUT_S = 10.0      # to take the whole answer; then the connection is dropped
MAX_HEADER_BYTES = 16 * 1024


class JournalCollector:
    """Programs' output lines sent to the journal, and dropped (core/journal.py), read at
    scrape time; absent while no program's output goes to the journal."""

    def __init__(self, counts: Callable[[], tuple[int, int] | None]):
        self.counts = counts

    def describe(self) -> Iterator[Metric]:
        return iter([self._family()])

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        if counts is None:
            return iter([])
        family = self._family()
        family.add_metric(["sent"], float(counts[0]))
        family.add_metric(["dropped"], float(counts[1]))
        return iter([family])

    @staticmethod
    def _family() -> CounterMetricFamily:
        return CounterMetricFamily("relayq_journal_lines", "Programs' output lines sent to the journal, or dropped "
                                   "(journald missing, or not keeping up beyond a 4 MiB backlog)", labels=["result"])


class SupervisorMetrics:
    """The supervisor's registry (never prometheus_client's global one, so nothing else
    in the process can add to it), the counters fed by audit events, the loop lag probe
    and the endpoint."""

    def __init__(self, programs: Callable[[], Iterable[Shown]], loop: asyncio.AbstractEventLoop,
                 journal_counts: Callable[[], tuple[int, int] | None] | None = None):
        self.loop = loop
        self.registry = CollectorRegistry()
        r = self.registry
        self.signals = Counter("relayq_signals", "Signals recorded in the audit log: to a program or to the "
                               "supervisor; action is delivered, blocked or not-delivered; via is who saw it "
                               "(supervisor, ptrace, signalfd)", ["signal", "action", "via"], registry=r)
        self.redis_denied = Counter("relayq_redis_denied", "Redis commands the command guard refused (ACL log)",
                                    ["command"], registry=r)
        self.watchdog_fired = Counter("relayq_watchdog_fired", "Times the watchdog found an instance stuck or "
                                      "too big and sent it its watchdog signal", ["program", "instance"], registry=r)
        self.audit_write_errors = Counter("relayq_audit_write_errors", "Failed attempts to write the audit log "
                                          "(the events wait in memory and are retried)", registry=r)
        self.loop_lag = Histogram("relayq_supervisor_loop_lag_seconds", "How late the supervisor's loop ran a "
                                  f"timer due every {LAG_INTERVAL_S:g}s (a blocked loop delays restarts)",
                                  buckets=LAG_BUCKETS, registry=r)
        self.render_hold = Histogram("relayq_metrics_render_hold_seconds", "The longest time one scrape's "
                                     "render held the supervisor's loop at once (what it delayed everything "
                                     "else by; the lag probe sees it only when its timer falls due meanwhile)",
                                     buckets=LAG_BUCKETS, registry=r)
        Info("relayq_supervisor", "The supervisor's version and host", registry=r).info(
            {"version": __version__, "hostname": socket.gethostname()})
        ProcessCollector(registry=r)
        self.program_text = ProgramText(programs)      # exposed after the registry's families
        if journal_counts is not None:
            r.register(JournalCollector(journal_counts))
        self._lag_timer: asyncio.TimerHandle | None = None
        self._rendering: asyncio.Task[bytes] | None = None
        self.server: MetricsServer | None = None

    # --- counted where the audit events are made ----------------------------------

    def count_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "signal":
            self.signals.labels(str(event.get("signal") or "unknown"), str(event.get("action") or "unknown"),
                                str(event.get("via") or "unknown")).inc()
        elif kind == "watchdog" and event.get("action") is None:
            # a firing; `action` marks the other watchdog events (SCRIPT KILL tried first)
            instance = str(event.get("program") or "unknown")
            self.watchdog_fired.labels(instance.split(":")[0], instance).inc()
        elif kind == "redis_denied":
            # one event reports every new ACL log entry of one command since the last check
            count = event.get("count")
            self.redis_denied.labels(str(event.get("command") or "unknown")).inc(
                count if isinstance(count, int) and count > 0 else 1)

    def count_audit_write_error(self) -> None:
        self.audit_write_errors.inc()

    # --- loop lag -------------------------------------------------------------------

    def _probe_lag(self, due: float) -> None:
        # the gap between when the timer was due and when the loop got to it is time
        # the loop spent on something else: a restart waiting that long would be late too
        now = self.loop.time()
        self.loop_lag.observe(max(0.0, now - due))
        self._schedule_probe(now + LAG_INTERVAL_S)

    def _schedule_probe(self, due: float) -> None:
        self._lag_timer = self.loop.call_at(due, self._probe_lag, due)

    # --- serving ----------------------------------------------------------------------

    def render(self) -> bytes:
        """The whole text at once (tests, benchmarks)."""
        return generate_latest(self.registry) + self.program_text.render()

    async def render_sliced(self) -> bytes:
        """What a scrape answers: the program families a slice at a time (see
        metrics_programs.py), then the registry's (a few dozen samples) at once. Scrapes
        arriving while one renders share its text."""
        if self._rendering is None or self._rendering.done():
            self._rendering = self.loop.create_task(self._render_sliced())
        # shielded: a scraper dropped mid-render does not cancel the others' text
        return await asyncio.shield(self._rendering)

    async def _render_sliced(self) -> bytes:
        programs = await self.program_text.render_sliced()
        await asyncio.sleep(0)
        began = time.perf_counter()
        registry = generate_latest(self.registry)       # shows the holds of the scrapes before this one
        self.render_hold.observe(max(self.program_text.longest_step, time.perf_counter() - began))
        return registry + programs

    async def start(self, address: ListenAddress, group_gid: int | None = None) -> None:
        """Listen (OSError if the address cannot be bound) and start the lag probe."""
        self.server = MetricsServer(address, self.render_sliced, group_gid=group_gid)
        await self.server.start()
        self._schedule_probe(self.loop.time() + LAG_INTERVAL_S)

    def close(self) -> None:
        if self._rendering is not None:
            self._rendering.cancel()
            self._rendering = None
        if self._lag_timer is not None:
            self._lag_timer.cancel()
            self._lag_timer = None
        if self.server is not None:
            self.server.close()
            self.server = None


class MetricsServer:
    """A minimal HTTP/1.1 responder for GET /metrics: one answer per connection."""

    def __init__(self, address: ListenAddress, render: Callable[[], bytes | Awaitable[bytes]], *,
                 group_gid: int | None = None, max_connections: int = MAX_CONNECTIONS, header_timeout: float = HEADER_TIMEOUT_S,
                 write_timeout: float = WRITE_TIMEOUT_S):
        self.address = address
        self.render = render
        self.group_gid = group_gid
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[Any]] = set()
        self.refused = 0            # connections turned away at the cap

    async def start(self) -> None:
        a = self.address
        if a.path:
            # the supervisor lock is held: a socket file here belongs to a dead supervisor
            try:
                os.unlink(a.path)
            except FileNotFoundError:
                pass
            old = os.umask(0o117)
            try:
                self.server = await asyncio.start_unix_server(self.handle, path=a.path, limit=MAX_HEADER_BYTES)
            finally:
                os.umask(old)
            if self.group_gid is not None:
                os.chown(a.path, -1, self.group_gid)
        else:
            self.server = await asyncio.start_server(self.handle, host=a.host, port=a.port, limit=MAX_HEADER_BYTES,
                                                     reuse_address=True)

    @property
    def bound(self) -> list[str]:
        """Where it listens (the port when 0 was asked is known only after bind)."""
        if self.server is None:
            return []
        return [str(s.getsockname()) for s in self.server.sockets]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            if self.address.path:
                try:
                    os.unlink(self.address.path)
                except FileNotFoundError:
                    pass
        for task in list(self.connections):
            task.cancel()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self.connections) >= self.max_connections:
            # dropped at once: answering politely would mean reading its request first
            # (closing with unread input resets the connection anyway), which is the very
            # work the cap refuses
            self.refused += 1
            writer.transport.abort()
            return
        assert task is not None
        self.connections.add(task)
        try:
            await self._answer(reader, writer)
            writer.close()      # everything is in the kernel's socket buffer by now
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError):
            writer.transport.abort()    # too slow, gone or speaking nonsense: drop it and what it did not take
        except asyncio.CancelledError:
            # the endpoint is closing. Not re-raised: asyncio 3.11's stream server calls
            # task.exception() on its handler and would log the cancellation as an error
            writer.transport.abort()
        finally:
            self.connections.discard(task)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # drain() below then waits until every byte is in the kernel, not just under 64 KiB
        writer.transport.set_write_buffer_limits(high=0)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            writer.write(_response(400, b"bad request\n"))
        elif parts[0] not in (b"GET", b"HEAD"):
            writer.write(_response(405, b"read-only: GET /metrics\n", extra=b"Allow: GET, HEAD\r\n"))
        elif parts[1].split(b"?", 1)[0] != b"/metrics":
            writer.write(_response(404, b"not found: the metrics are at /metrics\n"))
        else:
            body = self.render()
            if not isinstance(body, bytes):
                body = await body
            writer.write(_response(200, body, content_type=CONTENT_TYPE_LATEST.encode(),
                                   head_only=parts[0] == b"HEAD"))
        await asyncio.wait_for(writer.drain(), self.write_timeout)


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


def _response(status: int, body: bytes, *, content_type: bytes = b"text/plain; charset=utf-8",
              extra: bytes = b"", head_only: bool = False) -> bytes:
    head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n"
            % (status, _REASONS[status], content_type, len(body), extra))
    return head if head_only else head + body
