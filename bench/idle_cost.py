"""3. Idle cost: 20 sleeping children per contender, nothing happening. The supervisor
process's CPU seconds, its wake-ups (voluntary context switches of all its threads) per
second, and its RSS over the window.

The contenders idle side by side in one window: a sleeping supervisor's CPU time and
wake-ups are its own and do not depend on the others, and one shared window keeps the
full run within its time budget."""
from __future__ import annotations

import time

from .contenders import Circus, Contender, RelayqSupervisor, Supervised, Supervisord, child_argv
from .context import BenchContext
from .processes import BenchError, cpu_seconds, rss_bytes, voluntary_switches
from .records import record_file, wait_first_start
from .report import Section, Table, Target, mib

NAME = "idle"
TITLE = "Idle cost (20 sleeping children)"
CHILDREN = 20
SETTLE_S = 3.0      # past start-up: relayq's ready_after timers (1 s), circus' first ticks


def run(ctx: BenchContext) -> Section:
    window = 30.0 if ctx.quick else 60.0
    base = ctx.dir(NAME)
    field: list[Contender] = [RelayqSupervisor(base / "relayq")]
    sd, cd = ctx.tools.get("supervisord"), ctx.tools.get("circusd")
    missing = []
    if sd and sd.usable:
        field.append(Supervisord(base / "supervisord", sd))
    else:
        missing.append(("supervisord", sd.problem if sd else "not installed"))
    if cd and cd.usable:
        field += [Circus(base / "circus", cd), Circus(base / "circus-tuned", cd, check_delay=0.01)]
    else:
        missing.append(("circus", cd.problem if cd else "not installed"))
    failed: dict[str, str] = {}
    for c in field:
        c.launch(ctx.launcher, [Supervised("idle", child_argv(record_file(c.workdir)), CHILDREN)])
    live = []
    for c in field:
        try:
            wait_first_start(record_file(c.workdir), timeout=60, count=CHILDREN, proc=c.proc)
            live.append(c)
        except BenchError as e:
            failed[c.label] = f"{e}; its output: {ctx.launcher.output_of(c.log_name) or '(none)'}"
    time.sleep(SETTLE_S)
    ctx.say(f"idle cost: {len(live)} contenders x {CHILDREN} children for {window:g} s")
    before = {c.label: (cpu_seconds(c.pid), voluntary_switches(c.pid)) for c in live}
    started = time.monotonic()
    time.sleep(window)
    took = time.monotonic() - started
    rows, targets = [], []
    for c in live:
        cpu0, sw0 = before[c.label]
        cpu, sw = cpu_seconds(c.pid) - cpu0, voluntary_switches(c.pid) - sw0
        rss = rss_bytes(c.pid)
        restarted = len({s.split()[0] for s in record_file(c.workdir).read_text().splitlines()}) - CHILDREN
        note = f"{restarted} child restarts during the window" if restarted else ""
        pct = 100 * cpu / took
        rows.append((c.label, f"{cpu * 1e3:.1f} ms", f"{pct:.4f} %", f"{sw / took:.2f}", mib(rss), note))
        if isinstance(c, RelayqSupervisor):
            why = "" if pct < 0.1 else "CPU spent while nothing happened: a periodic timer or a busy fd on the loop"
            targets.append(Target(f"idle CPU under 0.1% with {CHILDREN} children", f"{pct:.3f} %", pct < 0.1, why))
            targets.append(Target("no periodic wake-ups (no health checks or watchdog configured here)",
                                  f"{sw / took:.2f} wake-ups/s", sw / took < 0.5,
                                  "" if sw / took < 0.5 else "the loop wakes up although no timer is configured"))
    for c in field:
        if c.label in failed:
            rows.append((c.label, "-", "-", "-", "-", f"did not run: {failed[c.label]}"))
        c.stop(ctx.launcher)
    for name, why in missing:
        rows.append((name, "-", "-", "-", "-", f"not installed: {why}"))
    if not any(isinstance(c, RelayqSupervisor) for c in live):
        targets.append(Target(f"idle CPU under 0.1% with {CHILDREN} children", "-", None,
                              failed.get(field[0].label, "did not run")))
    table = Table(f"{CHILDREN} sleeping children, {took:.0f} s window",
                  ("contender", "CPU in window", "CPU", "wake-ups/s", "RSS at end", "note"), tuple(rows))
    method = (f"Each contender runs {CHILDREN} instances of the restart benchmark's child (they sleep after "
              f"recording their start). After all {CHILDREN} have started and {SETTLE_S:g} s more, the window "
              f"opens: CPU = on-CPU time of the supervisor process itself (/proc/PID/task/*/schedstat), wake-ups = "
              "`voluntary_ctxt_switches` from /proc/PID/task/*/status summed over its threads, RSS at the end. "
              "All contenders idle in the same window (a sleeping process's counters are its own). "
              "relayq-supervisor runs without Redis here, so it has no health check, and outside systemd, so no "
              "watchdog: nothing should wake it.")
    notes = ["Wake-ups follow each contender's polling period: supervisord's main loop is poll() with a 1 s "
             "timeout (which also drives its TICK events); circus calls `manage_watchers` every `check_delay` "
             "(5 s by default, 0.01 s tuned). relayq-supervisor has no periodic timer: with nothing to do its "
             "loop sits in epoll_wait() without a timeout."]
    return Section(NAME, TITLE, method, (table,), tuple(targets), tuple(notes))
