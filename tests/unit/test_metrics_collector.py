"""Metrics in-process: the collector over fake programs, counting audit events, the
`metrics_listen` config key, and the HTTP responder's limits on a real socket."""
from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relayq_supervisor.audit.log import make_event
from relayq_supervisor.config.load import parse_config
from relayq_supervisor.config.model import ListenAddress
from relayq_supervisor.core.program import ExitInfo
from relayq_supervisor.core.states import State
from relayq_supervisor.errors import ConfigError
from relayq_supervisor.metrics import MetricsServer, SupervisorMetrics


def fake_program(name: str, state: State, *, restarts=0, started=None, exit_at=None, next_start_at=None, now=100.0):
    base = name.split(":")[0]
    last_exit = ExitInfo(1, None, exit_at, 0.5) if exit_at is not None else None
    return SimpleNamespace(name=name, base=base, state=state, restarts=restarts, started_wall=started,
                           last_exit=last_exit, next_start_at=next_start_at, clock=lambda: now)


def samples(metrics: SupervisorMetrics) -> dict[tuple[str, frozenset], float]:
    text = metrics.render().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(**kw) -> frozenset:
    return frozenset(kw.items())


def test_program_families_follow_the_programs_at_scrape_time():
    programs = [fake_program("redis", State.RUNNING, restarts=2, started=1000.0, exit_at=990.0),
                fake_program("worker:0", State.BACKOFF, next_start_at=103.5, exit_at=995.0)]
    loop = asyncio.new_event_loop()
    try:
        m = SupervisorMetrics(lambda: programs, loop)
        got = samples(m)
        assert got[("relayq_program_up", labels(program="redis", instance="redis"))] == 1
        assert got[("relayq_program_up", labels(program="worker", instance="worker:0"))] == 0
        assert got[("relayq_program_state", labels(program="worker", instance="worker:0", state="BACKOFF"))] == 1
        assert got[("relayq_program_state", labels(program="worker", instance="worker:0", state="RUNNING"))] == 0
        assert sum(v for (n, lab), v in got.items() if n == "relayq_program_state"
                   and ("instance", "redis") in lab) == 1       # exactly one state at a time
        assert got[("relayq_program_restarts_total", labels(program="redis", instance="redis"))] == 2
        assert got[("relayq_program_start_timestamp_seconds", labels(program="redis", instance="redis"))] == 1000
        assert got[("relayq_program_last_exit_timestamp_seconds", labels(program="worker", instance="worker:0"))] \
            == 995
        assert got[("relayq_program_backoff_seconds", labels(program="worker", instance="worker:0"))] == 3.5
        assert ("relayq_program_start_timestamp_seconds", labels(program="worker", instance="worker:0")) not in got
        # read again at the next scrape: no bookkeeping between transitions
        programs[1].state = State.RUNNING
        programs.append(fake_program("worker:1", State.STARTING))
        got = samples(m)
        assert got[("relayq_program_up", labels(program="worker", instance="worker:0"))] == 1
        assert got[("relayq_program_backoff_seconds", labels(program="worker", instance="worker:0"))] == 0
        assert got[("relayq_program_state", labels(program="worker", instance="worker:1", state="STARTING"))] == 1
        assert any(n == "process_cpu_seconds_total" for n, _ in got)
    finally:
        loop.close()


def test_audit_events_are_counted_by_their_fields():
    loop = asyncio.new_event_loop()
    try:
        m = SupervisorMetrics(lambda: [], loop)
        m.count_event(make_event("signal", signal="SIGTERM", action="blocked", via="ptrace"))
        m.count_event(make_event("signal", signal="SIGTERM", action="blocked", via="ptrace"))
        m.count_event(make_event("signal", signal="SIGHUP", action="delivered", via="signalfd"))
        m.count_event(make_event("redis_denied", command="shutdown", count=3))
        m.count_event(make_event("redis_denied", command="config|set"))
        m.count_event(make_event("exit", program="x", code=1))          # not counted anywhere
        m.count_event(make_event("watchdog", program="worker:1", pid=7, cause="no WATCHDOG=1 for 5s"))
        m.count_event(make_event("watchdog", program="redis", action="script_kill", cause="BUSY"))
        m.count_audit_write_error()
        got = samples(m)
        assert got[("relayq_signals_total", labels(signal="SIGTERM", action="blocked", via="ptrace"))] == 2
        assert got[("relayq_signals_total", labels(signal="SIGHUP", action="delivered", via="signalfd"))] == 1
        assert got[("relayq_redis_denied_total", labels(command="shutdown"))] == 3
        assert got[("relayq_redis_denied_total", labels(command="config|set"))] == 1
        assert got[("relayq_audit_write_errors_total", labels())] == 1
        assert got[("relayq_watchdog_fired_total", labels(program="worker", instance="worker:1"))] == 1
        assert ("relayq_watchdog_fired_total", labels(program="redis", instance="redis")) not in got
    finally:
        loop.close()


def test_loop_lag_probe_measures_how_late_its_timer_runs():
    async def main():
        m = SupervisorMetrics(lambda: [], asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        m._schedule_probe(loop.time())
        await asyncio.sleep(0)
        import time
        time.sleep(0.2)         # the loop is blocked: the probe must run at least this late
        await asyncio.sleep(0.01)
        m.close()
        return samples(m)
    got = asyncio.run(main())
    assert got[("relayq_supervisor_loop_lag_seconds_count", labels())] >= 1
    assert got[("relayq_supervisor_loop_lag_seconds_bucket", labels(le="0.1"))] == 0
    assert got[("relayq_supervisor_loop_lag_seconds_sum", labels())] >= 0.2


CONFIG = """\
[supervisor]
metrics_listen = {value}

[[program]]
name = "w"
command = ["sleep", "1"]
"""


@pytest.mark.parametrize("value,expected", [
    ('"127.0.0.1:9808"', ListenAddress(host="127.0.0.1", port=9808)),
    ('"[::1]:9808"', ListenAddress(host="::1", port=9808)),
    ('"run/metrics.sock"', ListenAddress(path="/etc/relayq/run/metrics.sock")),
    ('""', None),
])
def test_metrics_listen_forms(value, expected):
    config = parse_config(CONFIG.format(value=value).encode(), "/etc/relayq/config.toml")
    assert config.supervisor.metrics_listen == expected


@pytest.mark.parametrize("value,says", [
    ('"9808"', "'metrics_listen': '9808' is not HOST:PORT"),
    ('"localhost:70000"', "port must be between 1 and 65535, not 70000"),
    ("9808", "'metrics_listen' must be a string"),
    ('"/' + "x" * 120 + '"', "too long for a UNIX socket"),
])
def test_metrics_listen_errors_name_the_line(value, says):
    with pytest.raises(ConfigError) as e:
        parse_config(CONFIG.format(value=value).encode(), "/etc/relayq/config.toml")
    assert str(e.value).startswith("/etc/relayq/config.toml:2: ")
    assert says in str(e.value)


def test_default_is_off():
    config = parse_config(b'[[program]]\nname = "w"\ncommand = ["sleep", "1"]\n', "/etc/relayq/config.toml")
    assert config.supervisor.metrics_listen is None


# --- the responder on a real socket ------------------------------------------------------

async def exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def started(server: MetricsServer) -> int:
    await server.start()
    assert server.server is not None
    return server.server.sockets[0].getsockname()[1]


def test_only_get_and_head_of_metrics_are_answered():
    async def main():
        server = MetricsServer(ListenAddress("127.0.0.1", 0), lambda: b"x 1\n")
        port = await started(server)
        try:
            return [await exchange(port, req) for req in (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /metrics?x=1 HTTP/1.0\r\n\r\n",
                b"HEAD /metrics HTTP/1.1\r\n\r\n", b"POST /metrics HTTP/1.1\r\n\r\n",
                b"GET / HTTP/1.1\r\n\r\n", b"nonsense\r\n\r\n")]
        finally:
            server.close()
    get, query, head, post, root, bad = asyncio.run(main())
    assert get.startswith(b"HTTP/1.1 200 OK\r\n") and get.endswith(b"\r\n\r\nx 1\n")
    assert b"Content-Type: text/plain; version=" in get
    assert query.endswith(b"x 1\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n") and b"Content-Length: 4" in head
    assert post.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in post
    assert root.startswith(b"HTTP/1.1 404")
    assert bad.startswith(b"HTTP/1.1 400")


def test_silent_clients_are_dropped_and_capped():
    async def main():
        server = MetricsServer(ListenAddress("127.0.0.1", 0), lambda: b"x 1\n", max_connections=2,
                               header_timeout=0.5)
        port = await started(server)
        try:
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while len(server.connections) < 2 and loop.time() < deadline:
                await asyncio.sleep(0.01)
            try:
                over_cap = await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            except ConnectionResetError:
                over_cap = b""
            # the silent ones are dropped at the header deadline: reset, nothing sent
            dropped = []
            for r, _ in silent:
                try:
                    dropped.append(await asyncio.wait_for(r.read(), 5))
                except ConnectionResetError:
                    dropped.append(b"")
            for _, w in silent:
                w.close()
            after = await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            return over_cap, dropped, after, server.refused
        finally:
            server.close()
    over_cap, dropped, after, refused = asyncio.run(main())
    assert over_cap == b""
    assert refused == 1
    assert dropped == [b"", b""]
    assert after.startswith(b"HTTP/1.1 200")


def test_a_client_that_does_not_read_is_cut_off_at_the_write_deadline():
    body = b"y" * (8 * 1024 * 1024)     # far more than the socket buffers hold

    async def main():
        server = MetricsServer(ListenAddress("127.0.0.1", 0), lambda: body, write_timeout=0.3)
        port = await started(server)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not server.connections and loop.time() < deadline:
                await asyncio.sleep(0.01)
            had = len(server.connections)
            while server.connections and loop.time() < deadline:
                await asyncio.sleep(0.02)
            return had, len(server.connections)
        finally:
            sock.close()
            server.close()
    had, left = asyncio.run(main())
    assert (had, left) == (1, 0)


def test_unix_socket_endpoint(tmp_path):
    path = str(tmp_path / "metrics.sock")

    async def main():
        server = MetricsServer(ListenAddress(path=path), lambda: b"x 1\n")
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return data
        finally:
            server.close()
    assert asyncio.run(main()).endswith(b"x 1\n")
    assert not (tmp_path / "metrics.sock").exists()


def test_the_endpoint_answers_with_the_sliced_render():
    programs = [fake_program(f"w:{i}", State.RUNNING, restarts=i) for i in range(12)]

    async def main():
        m = SupervisorMetrics(lambda: programs, asyncio.get_running_loop())
        server = MetricsServer(ListenAddress("127.0.0.1", 0), m.render_sliced)
        port = await started(server)
        try:
            return await exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        finally:
            server.close()
            m.close()
    answer = asyncio.run(main())
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    text = answer.split(b"\r\n\r\n", 1)[1].decode()
    got = {(s.name, frozenset(s.labels.items())): s.value
           for family in text_string_to_metric_families(text) for s in family.samples}
    assert got[("relayq_program_restarts_total", labels(program="w", instance="w:11"))] == 11
    assert sum(v for (n, _), v in got.items() if n == "relayq_program_up") == 12
