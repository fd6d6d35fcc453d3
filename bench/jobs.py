"""10. A fork-per-job worker (python-rq's work horse): jobs per second with the kernel
witness only, with the signal tap, and with neither.

A traced program stops at every signal delivered to it until the supervisor's loop
resumes it, and a worker that forks a child per job gets a SIGCHLD per job. Where the
witness runs, the tap seizes only programs with `protect = true`, so an unprotected worker
should run as if untraced; the witness's own cost is reading the node's fork and exit
events on the supervisor's loop, on a core the worker may need.
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass

from relayq_supervisor.errors import RelayqError

from .contenders import PYTHON, RelayqSupervisor, Supervised
from .context import BenchContext
from .processes import BenchError, cpu_seconds, poll_until
from .report import Samples, Section, Table, Target

NAME = "jobs"
TITLE = "Fork-per-job worker (witness only, tap, neither)"

# Each job is a forked child that does a little work and exits, as python-rq's work horse
# does; the worker waits for it, as rq's does. The result is written once, then it sleeps
# until stopped (an exit would be restarted and measured again).
WORKER = textwrap.dedent("""\
    import json, os, sys, time
    jobs, out = int(sys.argv[1]), sys.argv[2]
    started = time.perf_counter()
    for _ in range(jobs):
        pid = os.fork()
        if pid == 0:
            sum(range(2000))
            os._exit(0)
        os.waitpid(pid, 0)
    took = time.perf_counter() - started
    with open(out + ".tmp", "w") as f:
        json.dump({"jobs": jobs, "seconds": took}, f)
    os.replace(out + ".tmp", out)
    time.sleep(1e6)
    """)

MODES = {   # name -> (signal_tap, kernel_trace)
    "witness only": (True, True),
    "tap": (True, False),
    "neither": (False, False),
}


@dataclass(frozen=True)
class JobsRun:
    jobs_per_s: float
    worker_traced: bool
    kernel_trace: str
    supervisor_cpu_s: float


def tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("TracerPid:")).split()[1])


def one_run(ctx: BenchContext, mode: str, r: int, jobs: int) -> JobsRun:
    tap, trace = MODES[mode]
    workdir = ctx.dir(NAME, f"{r}-{mode.replace(' ', '-')}")
    (workdir / "worker.py").write_text(WORKER)
    result = workdir / "result.json"
    sup = RelayqSupervisor(workdir, signal_tap=tap, kernel_trace=trace)
    sup.launch(ctx.launcher, [Supervised("worker", (PYTHON, "-S", str(workdir / "worker.py"), str(jobs),
                                                    str(result)))])
    try:
        def running():
            sup.ensure_running()
            try:
                st = sup.status()
            except (OSError, RuntimeError, RelayqError):     # not listening yet
                return None
            p = st["programs"][0]
            return st if p["state"] in ("STARTING", "RUNNING") and p["pid"] else None
        st = poll_until(running, 30, "the worker started", 0.01)
        traced = tracer_of(st["programs"][0]["pid"]) != 0
        cpu0 = cpu_seconds(sup.pid)
        poll_until(result.exists, 600, "the worker's jobs done", 0.02)
        cpu = cpu_seconds(sup.pid) - cpu0
        done = json.loads(result.read_text())
        return JobsRun(done["jobs"] / done["seconds"], traced, st["supervisor"]["kernel_trace"], cpu)
    finally:
        sup.stop(ctx.launcher, timeout=30)


def run(ctx: BenchContext) -> Section:
    rounds = 1 if ctx.quick else 9
    jobs = 500 if ctx.quick else 2000
    method = (f"A Python worker supervised by relayq-supervisor forks a child per job ({jobs:,} jobs; each child "
              "sums range(2000) and exits, the worker waits for it, as python-rq's work horse does) and reports "
              "jobs per second. Three set-ups: **witness only** (`signal_tap = true`, `kernel_trace = true`: the "
              "tap seizes only protected programs, the worker is not one), **tap** (`kernel_trace = false`: the "
              "tap seizes every program, so each SIGCHLD of the worker is a signal-delivery stop the supervisor "
              "resumes) and **neither** (both off). A new supervisor for every run; the set-ups rotate order "
              f"each round, {rounds} rounds. The worker's TracerPid and the supervisor's CPU during the jobs "
              "show what each set-up did.")
    if not ctx.tap.config_key:
        return Section(NAME, TITLE, method, skipped=f"the supervisor under test has no signal tap: {ctx.tap.problem}")
    order = list(MODES)
    runs: dict[str, list[JobsRun]] = {m: [] for m in MODES}
    ctx.say(f"jobs: {rounds} rounds x {len(MODES)} set-ups of {jobs} jobs")
    for r in range(rounds):
        for mode in order[r % 3:] + order[:r % 3]:
            try:
                runs[mode].append(one_run(ctx, mode, r, jobs))
            except BenchError as e:
                log = ctx.launcher.output_of(f"{r}-{mode.replace(' ', '-')}-{NAME}")
                return Section(NAME, TITLE, method, skipped=f"a {mode} run failed: {e} {log}".strip())
    if any(x.kernel_trace != "watching" for x in runs["witness only"]):
        states = sorted({x.kernel_trace for x in runs["witness only"]})
        return Section(NAME, TITLE, method, skipped=f"the kernel witness did not run: {', '.join(states)}")
    rate = {m: Samples.of(x.jobs_per_s for x in runs[m]) for m in MODES}
    cpu = {m: Samples.of(x.supervisor_cpu_s for x in runs[m]) for m in MODES}
    neither = rate["neither"].median
    rows = tuple((m, f"{rate[m].median:,.0f}", f"{rate[m].min:,.0f}", f"{rate[m].max:,.0f}",
                  f"{rate[m].median / neither:.3f}", "/".join(sorted({str(x.worker_traced) for x in runs[m]})),
                  f"{1e3 * cpu[m].median / jobs:.3f} ms")
                 for m in MODES)
    table = Table(f"jobs per second, {rounds} runs of {jobs:,} jobs per set-up",
                  ("set-up", "median", "min", "max", "median / neither", "worker traced",
                   "supervisor CPU per job (median)"), rows)
    witness = rate["witness only"].median / neither
    targets = (Target("witness only within 2% of neither (medians)", f"{witness:.3f}", witness >= 0.98,
                      "" if witness >= 0.98 else "the witness reads every fork and exit on the node on the "
                      "supervisor's loop: see its CPU per job"),)
    spread = rate["neither"].max / rate["neither"].min
    notes = (f"With the tap the worker ran at {rate['tap'].median / neither:.3f} of untraced: the cost the "
             "witness removes for unprotected programs.",
             f"Runs of one set-up spread {spread:.2f}x (neither: {rate['neither'].min:,.0f} to "
             f"{rate['neither'].max:,.0f} jobs/s): on a 2-core machine shared with other work the medians move "
             "by more than the 2% judged here, in either direction from one run of the benchmark to the next. "
             "The supervisor's CPU per job is the steadier measure of what each set-up adds: "
             f"{1e3 * cpu['witness only'].median / jobs:.3f} ms with the witness (it reads the worker's fork "
             f"and exit lines), {1e3 * cpu['tap'].median / jobs:.3f} ms with the tap (a ptrace stop and resume "
             "per SIGCHLD, during which the worker waits).")
    return Section(NAME, TITLE, method, (table,), targets, notes)
