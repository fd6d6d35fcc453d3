"""5. Signal tap cost: redis-benchmark against supervised Redis with the tap attached
(`signal_tap = true`) and detached (`signal_tap = false`), alternating, a fresh
supervisor for each run."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from .contenders import RedisSetup, RelayqSupervisor
from .context import BenchContext
from .processes import BenchError, cpu_seconds, free_port, poll_until
from .redis_recovery import redis_status, wait_pong
from .report import Samples, Section, Table, Target, ms

NAME = "tap"
TITLE = "Signal tap cost (redis-benchmark, tap on vs off)"
TESTS = ("SET", "GET")
RESULT_RE = re.compile(r"^(SET|GET): ([\d.]+) requests per second", re.M)


def parse_benchmark(output: str) -> dict[str, float]:
    # -q prints progress with carriage returns; the final line of each test ends in \n
    text = output.replace("\r", "\n")
    return {name: float(rps) for name, rps in RESULT_RE.findall(text)}


@dataclass(frozen=True)
class TapRun:
    rps: dict[str, float]
    tap_state: str | None           # status: supervisor.signal_tap
    redis_tracer: int               # TracerPid of Redis during the run (0 = not traced)
    supervisor_cpu_s: float         # the supervisor's CPU seconds during redis-benchmark


def tracer_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def one_run(ctx: BenchContext, tap: bool, r: int, requests: int, bench_exe: str) -> TapRun:
    port = free_port()
    sup = RelayqSupervisor(ctx.dir(NAME, f"{r}-{'on' if tap else 'off'}"), signal_tap=tap,
                           redis=RedisSetup(ctx.redis_binary, port))
    sup.launch(ctx.launcher, [])
    try:
        st = poll_until(lambda: (s := redis_status(sup)) and s["state"] == "RUNNING" and s, 30,
                        "supervised Redis RUNNING", 0.02)
        wait_pong(port, 10)
        state = sup.status()["supervisor"].get("signal_tap")
        tracer = tracer_of(st["pid"])
        cpu0 = cpu_seconds(sup.pid)
        done = subprocess.run([bench_exe, "-h", "127.0.0.1", "-p", str(port), "-q", "-t", "set,get",
                               "-n", str(requests)], capture_output=True, text=True, timeout=600)
        cpu = cpu_seconds(sup.pid) - cpu0
        rps = parse_benchmark(done.stdout + done.stderr)
        if set(rps) != set(TESTS):
            raise BenchError(f"redis-benchmark printed no SET/GET results: {(done.stdout + done.stderr)[-300:]}")
        return TapRun(rps, state, tracer, cpu)
    finally:
        sup.stop(ctx.launcher, timeout=60)


def run(ctx: BenchContext) -> Section:
    method = ("`redis-benchmark -q -t set,get -n N` (50 clients, from PATH) against Redis supervised by "
              "relayq-supervisor with `[supervisor] signal_tap = true` and then `false`, alternating the order "
              "each round; a new supervisor and Redis for every run. The tap seizes Redis with ptrace at spawn's "
              "exec gate, before Redis runs; it costs Redis only when a signal is delivered or a thread is "
              "created, so the expected difference is noise. Redis's TracerPid and the supervisor's CPU seconds during each run "
              "show whether the tap was attached and whether it had anything to do. On 2 cores shared with other "
              "work, throughput is bimodal (Redis and redis-benchmark on the same core or not, other processes "
              "in the way): disturbances only ever lower it, so the target is judged on the best run of each "
              "side, with the medians beside it.")
    if not ctx.tap.config_key:
        return Section(NAME, TITLE, method, skipped=f"the supervisor under test has no signal tap: {ctx.tap.problem}")
    bench_exe = shutil.which("redis-benchmark")
    if not bench_exe:
        return Section(NAME, TITLE, method, skipped="redis-benchmark is not on PATH (Debian: redis-tools)")
    if not ctx.redis_binary:
        return Section(NAME, TITLE, method, skipped="no redis-server found")
    rounds = 1 if ctx.quick else 5
    requests = 50_000 if ctx.quick else 200_000
    runs: dict[bool, list[TapRun]] = {True: [], False: []}
    ctx.say(f"tap cost: {rounds} rounds x 2 runs of {requests} requests per test")
    for r in range(rounds):
        for tap in ((True, False) if r % 2 == 0 else (False, True)):
            try:
                got = one_run(ctx, tap, r, requests, bench_exe)
            except BenchError as e:
                return Section(NAME, TITLE, method, skipped=f"a run failed: {e}")
            if tap and got.tap_state is None:
                return Section(NAME, TITLE, method, skipped="`relayqctl status --json` has no supervisor.signal_tap: "
                                                            "the tap is not built into this supervisor yet")
            if tap and got.tap_state != "attached":
                return Section(NAME, TITLE, method, skipped=f"the tap did not attach: signal_tap is {got.tap_state!r}")
            runs[tap].append(got)
    rows, targets = [], []
    for t in TESTS:
        on, off = Samples.of(x.rps[t] for x in runs[True]), Samples.of(x.rps[t] for x in runs[False])
        best = on.max / off.max
        rows.append((t, f"{on.median:,.0f}", f"{on.min:,.0f}", f"{on.max:,.0f}",
                     f"{off.median:,.0f}", f"{off.min:,.0f}", f"{off.max:,.0f}",
                     f"{on.median / off.median:.3f}", f"{best:.3f}"))
        met = best >= 0.97
        why = "" if met else (
            "the best tap-on run was slower than the best tap-off run; the tap stops Redis only at signals and "
            "thread creation, so look for such events in the supervisor's CPU during the runs")
        targets.append(Target(f"{t} throughput with the tap within 3% of untraced (best runs)",
                              f"{best:.3f} (medians: {on.median / off.median:.3f})", met, why))
    table = Table(f"requests per second, {rounds} runs each of {requests:,} requests per test",
                  ("test", "tap on median", "min", "max", "tap off median", "min", "max", "on / off medians",
                   "on / off best"), tuple(rows))
    cpu_on = Samples.of(x.supervisor_cpu_s for x in runs[True])
    cpu_off = Samples.of(x.supervisor_cpu_s for x in runs[False])
    traced_on = sorted({x.redis_tracer != 0 for x in runs[True]})
    traced_off = sorted({x.redis_tracer != 0 for x in runs[False]})
    evidence = Table("what the tap did during the runs",
                     ("", "tap on", "tap off"),
                     (("status: supervisor.signal_tap", ", ".join(sorted({str(x.tap_state) for x in runs[True]})),
                       ", ".join(sorted({str(x.tap_state) for x in runs[False]}))),
                      ("Redis traced (TracerPid != 0)", "/".join(map(str, traced_on)), "/".join(map(str, traced_off))),
                      ("supervisor CPU during a run, median (max)", f"{ms(cpu_on.median)} ({ms(cpu_on.max)})",
                       f"{ms(cpu_off.median)} ({ms(cpu_off.max)})")))
    return Section(NAME, TITLE, method, (table, evidence), tuple(targets))
