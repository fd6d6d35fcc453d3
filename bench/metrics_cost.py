"""9. Metrics cost: rendering /metrics in-process for 1, 20 and 200 instances; scraping a
real supervisor with 20 children over HTTP (latency, and the supervisor's CPU per scrape);
the idle cost of having metrics on (the loop lag probe wakes the loop twice a second)."""
from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from relayq_supervisor.core.states import State
from relayq_supervisor.metrics import SupervisorMetrics

from .contenders import RelayqSupervisor, Supervised, child_argv
from .context import BenchContext
from .processes import cpu_seconds, free_port, poll_until, voluntary_switches
from .records import record_file, wait_first_start
from .report import Samples, Section, Table, Target

NAME = "metrics"
TITLE = "Metrics cost (render, scrape, idle)"
CHILDREN = 20


class MetricsSupervisor(RelayqSupervisor):
    """relayq-supervisor with `metrics_listen` on a free loopback port (None: off)."""

    def __init__(self, workdir: Path, port: int | None):
        super().__init__(workdir)
        self.port = port
        self.label = f"relayq-supervisor (metrics {'on' if port else 'off'})"

    def config_text(self, programs: list[Supervised]) -> str:
        text = super().config_text(programs)
        if self.port is None:
            return text
        return text.replace("[supervisor]\n", f'[supervisor]\nmetrics_listen = "127.0.0.1:{self.port}"\n', 1)


def render_cost(instances: int, rounds: int) -> tuple[Samples, int]:
    programs = [SimpleNamespace(name=f"w:{i}", base="w", state=State.RUNNING, restarts=i, started_wall=1.0,
                                last_exit=None, next_start_at=None, clock=time.monotonic) for i in range(instances)]
    loop = asyncio.new_event_loop()
    try:
        m = SupervisorMetrics(lambda: programs, loop)
        size = len(m.render())
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            m.render()
            times.append(time.perf_counter() - began)
    finally:
        loop.close()
    return Samples.of(times), size


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read()


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.0f} µs"


def run(ctx: BenchContext) -> Section:
    rounds = 50 if ctx.quick else 300
    render_rows = []
    render_200 = None
    for n in (1, 20, 200):
        samples, size = render_cost(n, rounds)
        render_rows.append((str(n), us(samples.median), us(samples.max), f"{size / 1024:.1f} KiB"))
        if n == 200:
            render_200 = samples.median

    base = ctx.dir(NAME)
    port = free_port()
    on, off = MetricsSupervisor(base / "on", port), MetricsSupervisor(base / "off", None)
    for c in (on, off):
        c.launch(ctx.launcher, [Supervised("idle", child_argv(record_file(c.workdir)), CHILDREN)])
    for c in (on, off):
        wait_first_start(record_file(c.workdir), timeout=60, count=CHILDREN, proc=c.proc)

    def answered():
        try:
            return scrape(port)
        except OSError:
            return None
    poll_until(answered, 30, "the metrics endpoint")
    scrapes = 50 if ctx.quick else 300
    cpu0 = cpu_seconds(on.pid)
    latencies = []
    for _ in range(scrapes):
        began = time.perf_counter()
        scrape(port)
        latencies.append(time.perf_counter() - began)
    cpu_per_scrape = (cpu_seconds(on.pid) - cpu0) / scrapes
    lat = Samples.of(latencies)
    p95 = sorted(latencies)[int(len(latencies) * 0.95) - 1]

    window = 10.0 if ctx.quick else 30.0
    time.sleep(2.0)
    before = {c.label: (cpu_seconds(c.pid), voluntary_switches(c.pid)) for c in (on, off)}
    time.sleep(window)
    idle_rows = []
    for c in (on, off):
        cpu0, sw0 = before[c.label]
        idle_rows.append((c.label, f"{(cpu_seconds(c.pid) - cpu0) / window * 1000:.2f} ms/s",
                          f"{(voluntary_switches(c.pid) - sw0) / window:.1f}"))

    return Section(
        NAME, TITLE,
        method=(f"Render: `SupervisorMetrics.render()` in this process, {rounds} rounds, instances RUNNING "
                f"with the process collector included. Scrape: {scrapes} sequential `GET /metrics` with urllib "
                f"against a real supervisor with {CHILDREN} sleeping children; CPU from /proc/PID/stat. Idle: "
                f"the same supervisor and one without metrics side by side for {window:g} s, not scraped."),
        tables=(
            Table("Rendering /metrics", ("instances", "median", "max", "size"), tuple(render_rows)),
            Table(f"Scraping a supervisor with {CHILDREN} children",
                  ("median latency", "p95 latency", "supervisor CPU per scrape"),
                  ((f"{lat.median * 1000:.2f} ms", f"{p95 * 1000:.2f} ms", us(cpu_per_scrape)),)),
            Table("Idle, not scraped", ("supervisor", "CPU", "wake-ups/s"), tuple(idle_rows)),
        ),
        targets=(
            Target("rendering 200 instances takes under 10 ms of the loop",
                   us(render_200 or 0.0), (render_200 or 1.0) < 0.010,
                   why="prometheus_client formats each sample in Python (~10 µs each); 200 instances are "
                       "~2,400 samples, 1,400 of them relayq_program_state's one-per-state series"),
        ),
        notes=("A scrape's render runs on the loop, so it delays whatever is due meanwhile by the render "
               "time above (once per scrape interval); a restart waits at most that long.",
               "The loop lag probe adds about two wake-ups a second when metrics are on; with metrics off "
               "(the default) nothing of this runs.",),
    )
