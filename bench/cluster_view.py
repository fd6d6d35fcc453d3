"""11. The cluster view: heartbeat traffic of 3, 10 and 50 nodes against one Redis, the
stream's memory, `status --cluster` at 50 nodes, audit publishing throughput and what it
costs the supervisor's loop, and how soon an event reaches another node."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from relayq_supervisor.audit.log import encode_event, make_event
from relayq_supervisor.cluster import link
from relayq_supervisor.cluster.publisher import ClusterPublisher
from relayq_supervisor.cluster.view import ClusterView
from relayq_supervisor.config import Config, parse_config
from relayq_supervisor.ctl.client import call

from .contenders import RelayqSupervisor, Supervised, child_argv
from .context import BenchContext
from .processes import BenchError, free_port, poll_until
from .records import kill_and_time_restart, record_file, wait_first_start
from .report import Section, Table, Target, mib, ms

NAME = "cluster"
TITLE = "Cluster view (heartbeats, stream memory, status --cluster, audit publishing)"
NODE_COUNTS = (3, 10, 50)
HEARTBEAT_S = 2.0
TARGET_RATE = 5000          # audit events per second from one node


def node_config(workdir: Path, port: int, node: str, interval: float = HEARTBEAT_S) -> Config:
    text = (f'[supervisor]\nrun_dir = "run"\nlog_dir = "log"\n[cluster]\nnode = "{node}"\n'
            f'redis_url = "redis://127.0.0.1:{port}/0"\nheartbeat_interval = {interval}\n'
            '[[program]]\nname = "worker"\ncommand = ["true"]\nnumprocs = 4\ndepends_on = ["redis"]\n')
    path = workdir / "config.toml"
    path.write_text(text)
    return parse_config(text.encode(), str(path))


def node_status(node: str, programs: int = 4) -> dict[str, Any]:
    """A status document of the size a worker node publishes (4 workers, one with a last exit)."""
    header = {"pid": 4242, "uptime_s": 3600.0, "started_at": time.time() - 3600, "config": "/etc/relayq/config.toml",
              "redis_binary": None, "redis_version": None, "hostname": node, "signal_tap": "active",
              "kernel_trace": "watching", "kernel_trace_stats": {"events": 1234, "lost": 0},
              "config_changed": False, "notes": []}
    progs = [{"name": f"worker:{i}", "state": "RUNNING", "pid": 5000 + i, "uptime_s": 3500.0, "restarts": i,
              "reason": "sent READY=1", "next_start_in_s": None,
              "last_exit": {"description": "killed by SIGTERM from pid 4412 python3 monitor.py", "signal": "SIGTERM",
                            "code": None} if i == 0 else None} for i in range(programs)]
    return {"supervisor": header, "programs": progs}


def sample_events() -> list[bytes]:
    """Audit lines as a node writes them: a spawn, an exit, a signal with its sender's identity."""
    sender = {"pid": 4412, "alive": True, "uid": 0, "user": "root", "comm": "python3", "exe": "/usr/bin/python3.11",
              "cmdline": ["python3", "/opt/relayq/monitor.py", "--check"], "start_time": 1795690000.12,
              "unit": "relayq-redis-monitor.service", "loginuid": None, "session": None, "tty": None,
              "ancestry": [{"pid": 1, "comm": "systemd", "cmdline": ["/sbin/init"]}]}
    return [
        encode_event(make_event("spawn", program="worker:1", pid=51234,
                                argv=["/opt/relayq/bin/python3", "-m", "relayq.worker", "--queue", "jobs"])),
        encode_event(make_event("exit", program="worker:1", pid=51234, code=None, signal="SIGTERM", sender=sender)),
        encode_event(make_event("signal", target={"program": "worker:1", "pid": 51234}, signal="SIGTERM", signo=15,
                                code="SI_USER", sender=sender, seen_by="tap", action="delivered")),
    ]


def info(r: redis.Redis) -> dict[str, Any]:
    return r.info("all")


async def heartbeats(ctx: BenchContext, port: int, nodes: int, window: float) -> tuple[float, float, float]:
    """`nodes` publishers in this process, heartbeats only: Redis commands/s, bytes in/s, Redis CPU."""
    pubs = []
    for i in range(nodes):
        d = ctx.dir(NAME, f"n{nodes}-{i}")
        config = node_config(d, port, f"sim{i}")
        doc = node_status(f"sim{i}")
        pubs.append(ClusterPublisher(config, lambda doc=doc: dict(doc), lambda: []))
    for p in pubs:
        p.start()
    r = redis.Redis(port=port)
    await asyncio.sleep(HEARTBEAT_S)            # every node has connected and published once
    a = info(r)
    await asyncio.sleep(window)
    b = info(r)
    for p in pubs:
        await p.close()
    r.close()
    commands = (b["total_commands_processed"] - a["total_commands_processed"]) / window
    net_in = (b["total_net_input_bytes"] - a["total_net_input_bytes"]) / window
    cpu = (b["used_cpu_sys"] + b["used_cpu_user"] - a["used_cpu_sys"] - a["used_cpu_user"]) / window
    return commands, net_in, cpu


def stream_memory(port: int, entries: int) -> tuple[float, float]:
    """Bytes per stream entry (MEMORY USAGE of the key, every node sampled), and Redis' used_memory growth per entry."""
    r = redis.Redis(port=port)
    key = link.stream_key("sim")
    r.delete(key)
    before = r.info("memory")["used_memory"]
    lines = sample_events()
    pipe = r.pipeline(transaction=False)
    for i in range(entries):
        pipe.xadd(key, {"node": "sim", "id": f"4242.1795690000000:{i}",
                        "event": lines[i % len(lines)].rstrip(b"\n")},
                  maxlen=link.STREAM_MAXLEN, approximate=True)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    usage = r.memory_usage(key, samples=0) or 0
    after = r.info("memory")["used_memory"]
    r.close()
    return usage / entries, (after - before) / entries


async def loop_lag(duration: float, publisher: ClusterPublisher | None, rate: int) -> tuple[list[float], int]:
    """How late a 10 ms timer fires (what a due restart waits) while `rate` events/s are
    written and, with a publisher, sent. Each tick is timed on its own, so one stall of the
    machine counts once. Returns the lags and the events made."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    lines = sample_events()
    made = 0
    began = loop.time()
    tick = 0.01
    while loop.time() - began < duration:
        due = loop.time() + tick
        await asyncio.sleep(tick)
        lags.append(max(0.0, loop.time() - due))
        want = int((loop.time() - began) * rate)
        while made < want:
            line = lines[made % len(lines)]
            if publisher is not None:
                publisher.audit_written({}, line)
            else:
                json.loads(line)      # stand-in for the work the event costs anyway
            made += 1
    return lags, made


def stream_layout(port: int, config: Config, entries: int, layouts: tuple[int, ...] = (1, 3, 50)) -> list[tuple[str, ...]]:
    """One stream per node against what one shared stream would cost: the same `entries`
    spread over N per-node streams, read back whole by ClusterView.history (XRANGE each,
    merged), its memory (MEMORY USAGE of every stream), and how soon `--follow` (one XREAD
    BLOCK over every node's stream) wakes for a new entry."""
    r = redis.Redis(port=port)
    lines = sample_events()
    rows = []
    for count in layouts:
        names = [f"lay{n}" for n in range(count)]
        r.delete(link.NODES_KEY, *(link.stream_key(n) for n in names))
        r.zadd(link.NODES_KEY, {n: time.time() for n in names})
        pipe = r.pipeline(transaction=False)
        for i in range(entries):
            pipe.xadd(link.stream_key(names[i % count]), {"node": names[i % count], "id": f"4242.1:{i}",
                                                          "event": lines[i % len(lines)].rstrip(b"\n")})
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        memory = sum(r.memory_usage(link.stream_key(n), samples=0) or 0 for n in names)
        view = ClusterView(config)
        reads = []
        for _ in range(3):
            t0 = time.perf_counter()
            got = view.history(None, view.last_id())
            reads.append(time.perf_counter() - t0)
        if len(got) != entries:
            raise BenchError(f"read {len(got)} of {entries} events back from {count} streams")
        wakes = []
        for k in range(10):
            after = view.last_id()
            follower = view.follow(after)
            r.xadd(link.stream_key(names[k % count]), {"node": "x", "id": f"wake:{k}", "event": lines[0]})
            t0 = time.perf_counter()
            next(follower)
            wakes.append(time.perf_counter() - t0)
        view.client.close()
        r.delete(link.NODES_KEY, *(link.stream_key(n) for n in names))
        rows.append((f"{count}" + (" (as one shared stream)" if count == 1 else ""), ms(statistics.median(reads)),
                     mib(memory), ms(statistics.median(wakes))))
    r.close()
    return rows


async def throughput(config: Config, events: int) -> tuple[float, float]:
    """Drain rate of a backlog of `events` (events/s), and the time for one event to show up on
    another connection (XREAD BLOCK) when the publisher is idle."""
    pub = ClusterPublisher(config, lambda: node_status("bench"), lambda: [], max_backlog=events + 1)
    lines = sample_events()
    for i in range(events):
        pub.audit_written({}, lines[i % len(lines)])
    began = time.perf_counter()
    pub.start()
    while pub.backlog or pub.published < events:
        await asyncio.sleep(0.005)
    rate = events / (time.perf_counter() - began)
    reader = redis.asyncio.Redis(port=config_port(config))
    latencies = []
    for _ in range(20):
        last = (await reader.xrevrange(pub.stream, count=1))[0][0]
        waiting = asyncio.ensure_future(reader.xread({pub.stream: last}, block=5000))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        pub.audit_written({}, lines[0])
        await waiting
        latencies.append(time.perf_counter() - t0)
    await reader.aclose()
    await pub.close()
    return rate, statistics.median(latencies)


def config_port(config: Config) -> int:
    assert config.cluster is not None
    return int(config.cluster.redis_url.rsplit(":", 1)[1].split("/")[0])


async def publishing(config: Config, duration: float) -> dict[str, Any]:
    """Alternating one-second rounds with and without publishing (the publisher runs in both,
    idle in the rounds without), so that the machine's noise falls on both alike."""
    pub = ClusterPublisher(config, lambda: node_status("bench"), lambda: [])
    pub.start()
    base: list[float] = []
    lags: list[float] = []
    made = 0
    cpu = base_cpu = 0.0
    for _ in range(int(duration)):
        t0 = time.process_time()
        b, _ = await loop_lag(1.0, None, TARGET_RATE)
        base_cpu += time.process_time() - t0
        base += b
        t0 = time.process_time()
        lag, n = await loop_lag(1.0, pub, TARGET_RATE)
        cpu += time.process_time() - t0
        lags += lag
        made += n
    poll = 0
    while pub.backlog and poll < 2000:
        await asyncio.sleep(0.005)
        poll += 1
    await pub.close()
    rounds = int(duration)
    return {"base": base, "lags": lags, "made": made, "published": pub.published, "dropped": pub.dropped,
            "cpu": cpu / rounds, "base_cpu": base_cpu / rounds}


class ClusterSupervisor(RelayqSupervisor):
    """relayq-supervisor as a worker-only node publishing to the bench Redis (None: no [cluster])."""

    def __init__(self, workdir: Path, port: int | None, node: str = "restart-bench"):
        super().__init__(workdir)
        self.port = port
        self.node = node
        self.label = f"relayq-supervisor ({'[cluster] publishing' if port else 'no [cluster]'})"

    def config_text(self, programs: list[Supervised]) -> str:
        text = super().config_text(programs)
        if self.port is None:
            return text
        return text + (f'\n[cluster]\nnode = "{self.node}"\nredis_url = "redis://127.0.0.1:{self.port}/0"\n'
                       f"heartbeat_interval = {HEARTBEAT_S}\n")


def restarts(ctx: BenchContext, port: int, rounds: int) -> dict[str, list[float]]:
    """kill -9 to new start of a child, under a real supervisor with and without [cluster],
    alternating: each restart writes (and so publishes) its exit, backoff and spawn events."""
    field = [ClusterSupervisor(ctx.dir(NAME, "with"), port), ClusterSupervisor(ctx.dir(NAME, "without"), None)]
    for c in field:
        c.launch(ctx.launcher, [Supervised("child", child_argv(record_file(c.workdir)))])
    for c in field:
        wait_first_start(record_file(c.workdir), timeout=30, proc=c.proc)
    samples: dict[str, list[float]] = {c.label: [] for c in field}
    for r in range(rounds):
        for c in field if r % 2 else reversed(field):
            try:
                samples[c.label].append(kill_and_time_restart(record_file(c.workdir), timeout=15.0))
            except BenchError as e:
                raise BenchError(f"{c.label}: {e}; its output: {ctx.launcher.output_of(c.log_name)}") from None
    for c in field:
        c.stop(ctx.launcher)
    return samples


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def package_compiled() -> bool:
    """Are relayqctl's modules byte-compiled (.ci/setup's compileall)? With PYTHONDONTWRITEBYTECODE
    set nothing else writes them, and without them each command compiles what it imports."""
    import relayq_supervisor.ctl.cluster as module
    return os.path.exists(importlib.util.cache_from_source(module.__file__))


ASKED = "the whole command, its supervisor answering"
DIRECT = "the whole command, reading Redis itself (no supervisor)"


def answering_supervisor(ctx: BenchContext, port: int) -> ClusterSupervisor:
    """A real supervisor with [cluster] on this bench Redis: the one `status --cluster` asks."""
    sup = ClusterSupervisor(ctx.dir(NAME, "asked"), port, node="ctl-bench")
    sup.launch(ctx.launcher, [Supervised("child", child_argv(record_file(sup.workdir)))])
    wait_first_start(record_file(sup.workdir), timeout=30, proc=sup.proc)
    poll_until(lambda: call(sup.control_socket, "cluster-status", 5.0).get("ok"), 15, "its cluster-status")
    return sup


def control_round_trips(socket_path: str, rounds: int) -> list[float]:
    """`cluster-status` asked of the supervisor in-process: the socket, its Redis reads, the reply."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        reply = call(socket_path, "cluster-status", 5.0)
        times.append(time.perf_counter() - t0)
        if not reply.get("ok"):
            raise BenchError(f"cluster-status refused: {reply.get('error')}")
    return times


def command_start(asked_config: str, direct_config: str, rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    """The whole `relayqctl status --cluster` (a new interpreter each time), asking a running
    supervisor and (a config whose supervisor is not running) reading Redis itself, and their
    parts, in alternating rounds: the interpreter alone, importing redis-py alone, and importing
    what each path imports. Wall time and the child's CPU time (user + sys), which a loaded
    machine's other work inflates far less."""
    ctl = [sys.executable, "-m", "relayq_supervisor.ctl", "status", "--cluster"]
    for config, quiet in ((asked_config, True), (direct_config, False)):
        said = subprocess.run([*ctl, "--verbose", "-c", config], capture_output=True, text=True, timeout=60).stderr
        if ("did not answer" not in said) == (not quiet):
            raise BenchError(f"status --cluster -c {config} took the other path: {said.strip()!r}")
    argvs = {
        ASKED: [*ctl, "-c", asked_config],
        DIRECT: [*ctl, "-c", direct_config],
        "Python start + the asking path's imports": [sys.executable, "-c",
                                                     "import relayq_supervisor.ctl, relayq_supervisor.ctl.cluster"],
        "Python start + the direct path's imports": [
            sys.executable, "-c",
            "import relayq_supervisor.ctl, relayq_supervisor.ctl.cluster, relayq_supervisor.cluster.view"],
        "import redis alone": [sys.executable, "-c", "import redis"],
        "the interpreter alone": [sys.executable, "-c", "pass"],
    }
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in argvs}
    for _ in range(rounds):
        for name, argv in argvs.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            times[name][0].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            times[name][1].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            if out.returncode not in (0, 3):
                raise RuntimeError(f"{' '.join(argv[1:])} exited {out.returncode}: {out.stderr}")
    return times


def run(ctx: BenchContext) -> Section:
    if ctx.redis_binary is None:
        return Section(NAME, TITLE, "", skipped="no redis-server")
    port = free_port()
    d = ctx.dir(NAME)
    ctx.launcher.start([ctx.redis_binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--dir", str(d)], "cluster-redis", cwd=d)
    r = redis.Redis(port=port)

    def pong():
        try:
            return r.ping()
        except redis.ConnectionError:
            return False
    poll_until(pong, 15, "the bench Redis")
    window = 4.0 if ctx.quick else 12.0
    beat_rows = []
    for n in NODE_COUNTS:
        commands, net_in, cpu = asyncio.run(heartbeats(ctx, port, n, window))
        beat_rows.append((str(n), f"{commands:.1f}", f"{net_in / 1024:.1f} KiB/s", f"{net_in / n:.0f} B/s",
                          f"{cpu * 100:.2f} %"))
        ctx.say(f"    {n} nodes: {commands:.0f} commands/s, {net_in / 1024:.1f} KiB/s in")

    # status --cluster with 50 nodes published (the last heartbeat run left their keys)
    view_config = node_config(ctx.dir(NAME, "ctl"), port, "ctl")
    view = ClusterView(view_config)
    nodes = len(view.nodes())
    query = []
    for _ in range(20 if ctx.quick else 100):
        t0 = time.perf_counter()
        view.nodes()
        query.append(time.perf_counter() - t0)
    asked = answering_supervisor(ctx, port)
    start_load = os.getloadavg()[0]
    try:
        answer = control_round_trips(asked.control_socket, 20 if ctx.quick else 100)
        start = command_start(str(asked.config_path), view_config.path, 5 if ctx.quick else 15)
    finally:
        asked.stop(ctx.launcher)
    whole, direct = start[ASKED][0], start[DIRECT][0]
    compiled = "yes" if package_compiled() else "no (each command compiles what it imports)"

    entries = 20_000 if ctx.quick else 100_000
    per_entry, per_entry_rss = stream_memory(port, entries)
    r.delete(link.stream_key("sim"))
    layout = stream_layout(port, node_config(ctx.dir(NAME, "layout"), port, "reader"), 20_000 if ctx.quick else 100_000)

    pub_config = node_config(ctx.dir(NAME, "pub"), port, "bench", interval=HEARTBEAT_S)
    drain_rate, reach = asyncio.run(throughput(pub_config, 20_000 if ctx.quick else 100_000))
    loaded = asyncio.run(publishing(pub_config, 3.0 if ctx.quick else 10.0))
    r.delete(link.stream_key("bench"))
    restart = restarts(ctx, port, 6 if ctx.quick else 30)
    with_c, without_c = (statistics.median(v) for v in restart.values())
    published_restarts = r.xlen(link.stream_key("restart-bench"))
    r.close()
    q_median = statistics.median(query)
    w_median = statistics.median(whole)
    cpu_median = {name: statistics.median(cpu) for name, (_, cpu) in start.items()}
    lag_base99, lag99 = pct(loaded["base"], 0.99), pct(loaded["lags"], 0.99)
    rate_made = loaded["made"] / int(3.0 if ctx.quick else 10.0)
    return Section(
        NAME, TITLE,
        method=(f"One redis-server ({ctx.redis_binary}, no persistence). Simulated nodes: N `ClusterPublisher`s "
                f"in one process at the real rate (heartbeat_interval {HEARTBEAT_S:g} s, a 4-worker status "
                f"document), Redis' INFO counters over {window:g} s. `status --cluster`: "
                f"`ClusterView.nodes()` in-process (the Redis part); `cluster-status` asked of a real supervisor "
                f"(a worker-only node publishing to this Redis) with relayqctl's client in-process; and the whole "
                f"`relayqctl status --cluster` command (a new Python each time), asking that supervisor and, "
                f"with a config whose supervisor is not running, reading Redis itself (the fallback), in "
                f"alternating rounds with their parts: the interpreter alone, `import redis` alone, and importing "
                f"what each path imports. "
                f"Stream memory: {entries:,} XADDs of real-shaped audit lines "
                f"(spawn, exit and signal events with a sender's identity) in one node's stream, MEMORY USAGE of the key, "
                f"extrapolated linearly to 1,000,000 (a stream's radix tree grows linearly: macro nodes of ~100 "
                f"entries). Publishing: a backlog of events drained as fast as Redis takes them; then "
                f"{TARGET_RATE:,} events/s fed to a publisher on an asyncio loop while a 10 ms timer measures "
                f"the loop's lateness (what a due restart would wait), against the same loop without publishing, "
                f"in alternating one-second rounds. Restarts: bench/restart_latency.py's kill -9 measurement on two "
                f"real supervisors side by side, one a worker-only node publishing to this Redis, alternating."),
        tables=(
            Table("Heartbeat traffic (status documents only, no audit events)",
                  ("nodes", "Redis commands/s", "bytes in", "per node", "Redis CPU"), tuple(beat_rows)),
            Table(f"`status --cluster` with {nodes} nodes",
                  ("Redis reads (in-process), median", "p95", "cluster-status asked of the supervisor "
                   "(in-process client), median", "p95", "whole command asking the supervisor, median (CPU)",
                   "whole command reading Redis itself, median (CPU)"),
                  ((ms(q_median), ms(pct(query, 0.95)), ms(statistics.median(answer)), ms(pct(answer, 0.95)),
                    f"{ms(w_median)} ({ms(cpu_median[ASKED])})",
                    f"{ms(statistics.median(direct))} ({ms(cpu_median[DIRECT])})"),)),
            Table(f"`relayqctl status --cluster` and its parts, {len(whole)} alternating rounds "
                  f"(relayq_supervisor byte-compiled: {compiled})",
                  ("a new interpreter running", "wall, median", "wall, min", "CPU (user + sys), median"),
                  tuple((name, ms(statistics.median(wall)), ms(min(wall)), ms(statistics.median(cpu)))
                        for name, (wall, cpu) in start.items())),
            Table("Restart latency (kill -9 to new start) of a real supervisor",
                  ("supervisor", "median", "max"),
                  tuple((label, ms(statistics.median(v)), ms(max(v))) for label, v in restart.items())),
            Table("The audit stream in Redis",
                  ("bytes per entry", "used_memory per entry", "1,000,000 entries (extrapolated)"),
                  ((f"{per_entry:.0f}", f"{per_entry_rss:.0f}", mib(per_entry * 1_000_000)),)),
            Table("One audit stream per node, merged on read (the same events over N streams)",
                  ("streams", "read all back (ClusterView.history)", "memory",
                   "--follow: one round (ZRANGE, XREAD over every stream) bringing a new entry"),
                  tuple(layout)),
            Table("Audit publishing from one node",
                  ("backlog drain rate", "event seen by another node (idle)", f"{TARGET_RATE:,}/s fed: made",
                   "published", "dropped", "loop CPU (without publishing)", "timer lateness p99 (without publishing)"),
                  ((f"{drain_rate:,.0f} events/s", ms(reach), f"{rate_made:,.0f}/s", f"{loaded['published']:,}",
                    str(loaded["dropped"]), f"{loaded['cpu'] * 100:.0f} % ({loaded['base_cpu'] * 100:.0f} %)",
                    f"{ms(lag99)} ({ms(lag_base99)})"),)),
        ),
        targets=(
            Target(f"status --cluster at 50 nodes under 200 ms: reading the cluster ({nodes} nodes published)",
                   ms(q_median), q_median < 0.2),
            Target("status --cluster at 50 nodes under 200 ms: the whole relayqctl command",
                   f"{ms(w_median)}, CPU {ms(cpu_median[ASKED])} asking the supervisor; "
                   f"{ms(statistics.median(direct))}, CPU {ms(cpu_median[DIRECT])} reading Redis itself",
                   w_median < 0.2,
                   why=f"on this shared machine (load average {start_load:.1f} on {os.cpu_count()} cores as the "
                       f"rounds began) wall time runs 2-3x the command's CPU time, {ms(cpu_median[ASKED])} asking "
                       f"the supervisor (wall min {ms(min(whole))}): the interpreter (CPU median "
                       f"{ms(cpu_median['the interpreter alone'])}) and the config's and printer's imports; "
                       f"redis-py (CPU median {ms(cpu_median['import redis alone'])}) only when no supervisor "
                       f"answers"),
            Target(f"audit publishing {TARGET_RATE:,} events/s from one node",
                   f"drains {drain_rate:,.0f}/s; {TARGET_RATE:,}/s sustained with {loaded['dropped']} dropped",
                   drain_rate >= TARGET_RATE and loaded["dropped"] == 0),
            Target("publishing does not slow restarts (timer lateness p99 within 5 ms of the loop without it)",
                   f"{ms(lag99)} vs {ms(lag_base99)}", lag99 - lag_base99 < 0.005),
            Target("a real supervisor's restarts are as fast with [cluster] publishing (median within 10 %)",
                   f"{ms(with_c)} vs {ms(without_c)} ({published_restarts} events in the stream)",
                   with_c <= without_c * 1.10),
        ),
        notes=(
            "Heartbeats cost each node one pipeline (SET with expiry, ZADD, ZREMRANGEBYSCORE) per interval and "
            "at each state change; the bytes scale with the number of programs in the status document.",
            "Each node's stream is capped with XADD MAXLEN ~ (1,000,000 / the number of nodes, at least "
            "10,000): Redis trims whole macro nodes, so they hold slightly more than that together; the memory "
            "column is what the cap costs when full.",
            "One stream per node (so that the key, which only that node's user may write, says who wrote an "
            "entry) costs the reader nothing measurable against one shared stream; memory grows by the per-key "
            "overhead of each stream.",
            "The event-to-other-node time is with the publisher idle; under load an event waits behind the batch "
            "in flight (at most 500 events in one EVAL, about 2 ms of the loop).",
        ),
    )
