"""4. Scale: relayq-supervisor with 10, 100 and 1000 children (`numprocs`). Time from
supervisor start to all RUNNING, RSS, status latency, CPU while idle, the restart
latency of one more child (cost per event as N grows), and the time to stop them all."""
from __future__ import annotations

import shutil
import subprocess
import time

from .contenders import PYTHON, RelayqSupervisor, Supervised, child_argv
from .context import BenchContext
from .processes import BenchError, cpu_seconds, poll_until, rss_bytes
from .records import kill_and_time_restart, record_file, wait_first_start
from .report import Samples, Section, Table, Target, mib, ms

NAME = "scale"
TITLE = "Scale (10, 100, 1000 children)"
SIZES = (10, 100, 1000)


def all_running(sup: RelayqSupervisor, expected: int):
    sup.ensure_running()
    try:
        programs = sup.status(timeout=10)["programs"]
    except Exception:       # socket not there yet, or busy: poll again
        return None
    return len(programs) == expected and all(p["state"] == "RUNNING" for p in programs)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def one_size(ctx: BenchContext, n: int) -> dict:
    quick = ctx.quick
    sleep = shutil.which("sleep") or "/bin/sleep"
    sup = RelayqSupervisor(ctx.dir(NAME, str(n)))
    probe_record = record_file(sup.workdir)
    programs = [Supervised("idle", (sleep, "1000000"), n), Supervised("probe", child_argv(probe_record))]
    got: dict = {"n": n}
    started = time.monotonic()
    sup.launch(ctx.launcher, programs)
    try:
        poll_until(lambda: all_running(sup, n + 1), 120, f"{n + 1} programs RUNNING", interval=0.05)
        got["start_s"] = time.monotonic() - started
        got["rss"] = rss_bytes(sup.pid)
        got["status_s"] = Samples.of(timed(sup.status) for _ in range(5 if quick else 10))
        cli = [PYTHON, "-m", "relayq_supervisor.ctl", "status", "--json", "--socket", sup.control_socket]
        got["cli_s"] = Samples.of(timed(lambda: subprocess.run(cli, capture_output=True, env=sup.env(), timeout=60))
                                  for _ in range(2 if quick else 5))
        window = 2.0 if quick else 5.0
        cpu0 = cpu_seconds(sup.pid)
        time.sleep(window)
        got["idle_cpu_pct"] = 100 * (cpu_seconds(sup.pid) - cpu0) / window
        wait_first_start(probe_record, 30, proc=sup.proc)
        kills = 3 if quick else 10
        cpu0 = cpu_seconds(sup.pid)
        got["restart_s"] = Samples.of(kill_and_time_restart(probe_record) for _ in range(kills))
        got["cpu_per_restart_s"] = (cpu_seconds(sup.pid) - cpu0) / kills
    except BenchError as e:
        got["problem"] = f"{e}; supervisor output: {ctx.launcher.output_of(sup.log_name) or '(none)'}"
    finally:
        got["stop_s"] = sup.stop(ctx.launcher, timeout=120)
        got["leftovers"] = len(ctx.launcher.end_leftovers())
    return got


def run(ctx: BenchContext) -> Section:
    results = []
    for n in SIZES:
        ctx.say(f"scale: {n} children")
        results.append(one_size(ctx, n))
    cols = ("metric", *(f"N={r['n']}" for r in results), f"growth {SIZES[0]} to {SIZES[-1]}")

    def row(label, key, fmt, ratio_of=lambda v: v):
        values = [r.get(key) for r in results]
        cells = [fmt(v) if v is not None else "-" for v in values]
        first, last = values[0], values[-1]
        growth = "-"
        if ratio_of is not None and first is not None and last is not None and ratio_of(first) > 0:
            growth = f"{ratio_of(last) / ratio_of(first):.1f}x"
        return (label, *cells, growth)

    def med(s):
        return s.median
    rows = (
        row("start to all RUNNING (includes ready_after = 1 s)", "start_s", lambda v: f"{v:.2f} s"),
        row("supervisor RSS", "rss", mib),
        row("status request round trip (socket), median", "status_s", lambda s: ms(s.median), med),
        row("status request round trip, max", "status_s", lambda s: ms(s.max), lambda s: s.max),
        row("`relayqctl status --json` whole command, median", "cli_s", lambda s: ms(s.median), med),
        row("CPU while idle", "idle_cpu_pct", lambda v: f"{v:.4f} %"),
        row("restart latency of one more child, median", "restart_s", lambda s: ms(s.median), med),
        row("supervisor CPU per restart of that child", "cpu_per_restart_s", ms),
        row("stop all (SIGTERM to supervisor until it exits)", "stop_s", lambda v: f"{v:.2f} s"),
        row("processes left behind after stop", "leftovers", str, None),
    )
    table = Table("relayq-supervisor with N sleeping children (`numprocs = N`) plus one probe child",
                  cols, rows)
    targets, notes = [], []
    big = results[-1]
    if "start_s" in big:
        targets.append(Target(f"{big['n']} children all RUNNING within 10 s", f"{big['start_s']:.2f} s",
                              big["start_s"] <= 10.0, "" if big["start_s"] <= 10.0 else
                              "starting is sequential on the one loop, one spawn after another"))
    else:
        targets.append(Target(f"{big['n']} children all RUNNING within 10 s", "-", None, big.get("problem", "")))
    if "status_s" in big:
        s = big["status_s"]
        targets.append(Target(f"status answered within 100 ms (N={big['n']})", f"median {ms(s.median)}, max {ms(s.max)}",
                              s.max <= 0.1, "" if s.max <= 0.1 else
                              "the status reply is built and JSON-encoded for every instance on each request"))
    small = results[0]
    if "restart_s" in small and "restart_s" in big:
        g = big["restart_s"].median / small["restart_s"].median
        targets.append(Target(f"cost per event independent of N: restart latency N={big['n']} vs N={small['n']}",
                              f"{g:.2f}x", g <= 1.5, "" if g <= 1.5 else
                              "a restart walks structures sized by N before the new child runs"))
    if "cpu_per_restart_s" in small and "cpu_per_restart_s" in big:
        a, b = small["cpu_per_restart_s"], big["cpu_per_restart_s"]
        g = b / a if a > 0 else float("inf")
        targets.append(Target(f"cost per event independent of N: supervisor CPU per restart N={big['n']} vs N={small['n']}",
                              f"{g:.1f}x ({ms(b)} vs {ms(a)})", g <= 1.5, "" if g <= 1.5 else
                              "every exit does O(N) work (see below)"))
        if g > 1.5:
            notes.append("Something done per exit walks every program instance (the supervisor reconciles only "
                         "the instances an event can make startable and kills leftovers with one killpg, so "
                         "look for a new per-event scan).")
    if "idle_cpu_pct" in big:
        targets.append(Target(f"idle CPU independent of N (no per-tick scan), N={big['n']}",
                              f"{big['idle_cpu_pct']:.3f} %", big["idle_cpu_pct"] < 0.1,
                              "" if big["idle_cpu_pct"] < 0.1 else "something periodic scans the children"))
    for r in results:
        if r.get("problem"):
            notes.append(f"N={r['n']}: {r['problem']}")
        if r.get("stop_s") is None:
            notes.append(f"N={r['n']}: the supervisor did not exit within 120 s of SIGTERM and was killed")
    method = ("Children are `sleep 1000000` (cheap to exec, so the numbers are the supervisor's, not the "
              "children's start-up), in one `[[program]]` with `numprocs = N` and the default `ready_after = 1.0`, "
              "plus one probe program running the restart benchmark's child. Start = from spawning the supervisor "
              "until a status request shows every instance RUNNING (polled every 50 ms over the control socket, "
              "the request `relayqctl status --json` makes). Status latency = the request's round trip in this "
              "process; the whole `relayqctl` command (a new interpreter each time) is shown beside it. CPU while "
              "idle is over a short window after start. The probe is then killed a few times (restart latency as "
              "in benchmark 1). Stop = SIGTERM to the supervisor until it has exited. (The load average printed for this "
              "benchmark counts its own 1000 children starting at once.)")
    return Section(NAME, TITLE, method, (table,), tuple(targets), tuple(notes))
