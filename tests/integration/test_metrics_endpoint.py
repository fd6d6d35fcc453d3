"""GET /metrics from a real supervisor: scraped with a real HTTP client, parsed with
prometheus_client's parser; counters move when real processes die; slow scrapers do not
hold up a restart."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import PYTHON, REDIS_SERVER, find_redis_tool, free_port, redis_config, wait_for

SLEEPER = f"""
[[program]]
name = "worker"
command = ["{PYTHON}", "-c", "import time; time.sleep(3600)"]
numprocs = 2
ready_after = 0.2
"""


def metrics_config(port: int) -> str:
    return textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"
        metrics_listen = "127.0.0.1:{port}"
        """) + SLEEPER


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_when_up(port: int, sup) -> dict:
    def attempt():
        if sup.proc.poll() is not None:
            raise AssertionError(f"supervisor exited {sup.proc.returncode}:\n{sup.log()}")
        try:
            return scrape(port)
        except OSError:
            return None
    return wait_for(attempt, 20, 0.05, "the metrics endpoint")


def new_pid_running(sup, name: str, old_pid: int):
    def check():
        p = sup.program(name)
        return p if p["state"] == "RUNNING" and p["pid"] not in (None, old_pid) else None
    return wait_for(check, 20, 0.05, f"{name} restarted")


def test_scrape_reports_programs_and_counters_move_after_kill_9(make_supervisor):
    mport = free_port()
    sup = make_supervisor(metrics_config(mport)).start()
    sup.wait_all_running()
    first = scrape_when_up(mport, sup)
    for inst in ("worker:0", "worker:1"):
        assert value(first, "relayq_program_up", program="worker", instance=inst) == 1
        assert value(first, "relayq_program_state", program="worker", instance=inst, state="RUNNING") == 1
        assert value(first, "relayq_program_restarts_total", program="worker", instance=inst) == 0
    assert value(first, "relayq_program_last_exit_timestamp_seconds", program="worker", instance="worker:0") is None
    assert value(first, "process_resident_memory_bytes") > 0

    victim = sup.program("worker:0")
    killed_at = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    new_pid_running(sup, "worker:0", victim["pid"])
    after = scrape(mport)
    assert value(after, "relayq_program_restarts_total", program="worker", instance="worker:0") == 1
    assert value(after, "relayq_program_restarts_total", program="worker", instance="worker:1") == 0
    assert value(after, "relayq_program_last_exit_timestamp_seconds", program="worker",
                 instance="worker:0") >= killed_at - 1
    assert value(after, "relayq_program_start_timestamp_seconds", program="worker", instance="worker:0") \
        >= killed_at - 1

    # the supervisor's own stop signal is a `signal` audit event: counted with its labels
    before = value(after, "relayq_signals_total", signal="SIGTERM", action="delivered", via="supervisor") or 0
    sup.ctl("restart", "worker:1", check=True)
    moved = scrape(mport)
    assert value(moved, "relayq_signals_total", signal="SIGTERM", action="delivered", via="supervisor") \
        == before + 1
    assert value(moved, "relayq_supervisor_loop_lag_seconds_count") > 0
    # every scrape before this one measured its hold of the loop
    assert value(moved, "relayq_metrics_render_hold_seconds_count") >= 2
    assert value(moved, "relayq_audit_write_errors_total") == 0


class SlowScraper(threading.Thread):
    """Holds one of the endpoint's connections: sends its request, or reads the answer,
    one byte a second."""

    def __init__(self, port: int, slow_request: bool):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        # a tiny receive window, so the server cannot hand the whole answer to the kernel
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.slow_request = slow_request
        self.received = b""
        self.done = threading.Event()
        self.stop = threading.Event()

    def run(self):
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        try:
            if self.slow_request:
                for byte in request:
                    if self.stop.wait(1.0):
                        return
                    self.sock.send(bytes([byte]))
            else:
                self.sock.sendall(request)
            while not self.stop.wait(1.0):
                chunk = self.sock.recv(1)
                if not chunk:
                    return
                self.received += chunk
        except OSError:
            return
        finally:
            self.done.set()


def test_slow_scrapers_do_not_delay_a_restart(make_supervisor):
    mport = free_port()
    sup = make_supervisor(metrics_config(mport)).start()
    sup.wait_all_running()
    scrape_when_up(mport, sup)
    slow = [SlowScraper(mport, slow_request=i % 2 == 0) for i in range(4)]     # the connection cap
    for s in slow:
        s.start()
    try:
        wait_for(lambda: any(s.received for s in slow if not s.slow_request), 10, 0.05, "a slow read to begin")
        victim = sup.program("worker:1")
        os.kill(victim["pid"], signal.SIGKILL)
        restarted = new_pid_running(sup, "worker:1", victim["pid"])
        assert restarted["restarts"] == 1
        # the scrapers were still there, mid-request or mid-answer, while it restarted
        assert not any(s.done.is_set() for s in slow)
        assert all(len(s.received) < 200 for s in slow)
    finally:
        for s in slow:
            s.stop.set()
            s.sock.close()
    # and once they are gone the endpoint answers again
    def answered():
        try:
            return scrape(mport)
        except OSError:
            return None
    wait_for(answered, 20, 0.1, "a scrape after the slow scrapers left")


@pytest.mark.skipif(REDIS_SERVER is None or find_redis_tool("redis-cli") is None, reason="no redis-server/redis-cli")
def test_denied_redis_command_is_counted(make_supervisor, port):
    mport = free_port()
    sup = make_supervisor(redis_config(None, port, supervisor_extra=f'metrics_listen = "127.0.0.1:{mport}"\n'
                                       "health_interval = 0.2")).start()
    sup.wait_all_running()
    assert value(scrape_when_up(mport, sup), "relayq_redis_denied_total", command="shutdown") is None
    for _ in range(2):
        subprocess.run([find_redis_tool("redis-cli"), "-p", str(port), "shutdown"], capture_output=True, timeout=10)

    def counted():
        v = value(scrape(mport), "relayq_redis_denied_total", command="shutdown")
        return v if v == 2 else None
    wait_for(counted, 20, 0.1, "relayq_redis_denied_total{command=shutdown} == 2")
    assert sup.program("redis")["state"] == "RUNNING"


def test_unbindable_address_is_reported_and_supervision_goes_on(make_supervisor):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        mport = holder.getsockname()[1]
        sup = make_supervisor(metrics_config(mport)).start()
        st = sup.wait_all_running()
        note = f"metrics: cannot listen on 127.0.0.1:{mport} (Address already in use); serving none"
        assert note in st["supervisor"]["notes"]
        assert note in sup.ctl("status").stdout
    finally:
        holder.close()
