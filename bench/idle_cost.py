"""3. Idle cost: 20 sleeping children per contender, nothing happening. The supervisor
process's CPU seconds, its wake-ups (voluntary context switches of all its threads) per
second, and its RSS over the window. relayq-supervisor runs twice: with its defaults
(as root: kernel_trace = "auto" -> on, signal_tap on, cgroups on) and with kernel_trace =
false. The kernel witness traces every fork, exec and exit of the node (the process
history), so its idle cost depends on what else runs: the node's fork rate (/proc/stat's
`processes`) and the execs the witness saw are reported with it.

The contenders idle side by side in one window: a sleeping supervisor's CPU time and
wake-ups are its own and do not depend on the others, and one shared window keeps the
full run within its time budget."""
from __future__ import annotations

import time

from relayq_supervisor.config.model import SupervisorSpec

from .contenders import Circus, Contender, RelayqSupervisor, Supervised, Supervisord, child_argv
from .context import BenchContext
from .processes import BenchError, cpu_seconds, rss_bytes, voluntary_switches
from .records import record_file, wait_first_start
from .report import Section, Table, Target, mib

NAME = "idle"
TITLE = "Idle cost (20 sleeping children)"
CHILDREN = 20
SETTLE_S = 3.0      # past start-up: relayq's ready_after timers (1 s), circus' first ticks
DEFAULT_DELAY = SupervisorSpec.kernel_trace_read_delay
LONG_DELAY = 0.2    # a row with a longer kernel_trace_read_delay: fewer wake-ups, fewer argv read


class RelayqReadDelay(RelayqSupervisor):
    """relayq-supervisor's defaults but `[supervisor] kernel_trace_read_delay`."""

    def __init__(self, workdir, delay: float):
        super().__init__(workdir)
        self.delay = delay
        self.label = f"relayq-supervisor (kernel_trace_read_delay = {delay:g})"

    def config_text(self, programs: list[Supervised]) -> str:
        return super().config_text(programs).replace(
            "[supervisor]\n", f"[supervisor]\nkernel_trace_read_delay = {self.delay}\n", 1)


def run(ctx: BenchContext) -> Section:
    window = 30.0 if ctx.quick else 60.0
    base = ctx.dir(NAME)
    field: list[Contender] = [RelayqSupervisor(base / "relayq"),
                              RelayqReadDelay(base / "relayq-delay", LONG_DELAY),
                              RelayqSupervisor(base / "relayq-notrace", kernel_trace=False)]
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
    stats0 = witness_stats(live)      # outside the window: a status request wakes the supervisor
    forks0 = node_forks()
    before = {c.label: (cpu_seconds(c.pid), voluntary_switches(c.pid)) for c in live}
    started = time.monotonic()
    time.sleep(window)
    took = time.monotonic() - started
    after = {c.label: (cpu_seconds(c.pid), voluntary_switches(c.pid)) for c in live}
    forks = (node_forks() - forks0) / took
    stats = witness_stats(live)
    rows, targets = [], []
    # label -> CPU %, wake-ups/s, execs/s seen, share of execs whose argv was read
    witnessed: dict[str, tuple[float, float, float, float]] = {}
    for c in live:
        (cpu0, sw0), (cpu1, sw1) = before[c.label], after[c.label]
        cpu, sw = cpu1 - cpu0, sw1 - sw0
        rss = rss_bytes(c.pid)
        restarted = len({s.split()[0] for s in record_file(c.workdir).read_text().splitlines()}) - CHILDREN
        notes_of = [f"{restarted} child restarts during the window"] if restarted else []
        pct = 100 * cpu / took
        w0, w1 = stats0.get(c.label), stats.get(c.label)
        if w0 and w1:
            execs, reads = w1["execs"] - w0["execs"], w1["reads"] - w0["reads"]
            captures, lines = w1["exec_captures"] - w0["exec_captures"], w1["lines"] - w0["lines"]
            notes_of.append(f"witness: {execs / took:.1f} execs/s seen, {lines / took:.0f} lines/s, "
                            f"{reads / took:.1f} reads/s, {captures / took:.1f} /proc captures/s "
                            f"(argv read for {100 * captures / max(execs, 1):.0f} % of execs)"
                            + (f", {cpu / execs * 1e6:.0f} µs of CPU per exec" if execs else ""))
            witnessed[c.label] = (pct, sw / took, execs / took, captures / max(execs, 1))
        rows.append((c.label, f"{cpu * 1e3:.1f} ms", f"{pct:.4f} %", f"{sw / took:.2f}", mib(rss),
                     "; ".join(notes_of)))
        if isinstance(c, RelayqSupervisor) and not isinstance(c, RelayqReadDelay):
            seen = witnessed.get(c.label)
            targets += relayq_targets(c, pct, sw / took, seen[2] if seen else None, forks)
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
    notes = [witness_note(rows, took, forks, stats0, stats), delay_note(witnessed)]
    notes += ["Wake-ups follow each contender's polling period: supervisord's main loop is poll() with a 1 s "
             "timeout (which also drives its TICK events); circus calls `manage_watchers` every `check_delay` "
             "(5 s by default, 0.01 s tuned). relayq-supervisor has no periodic timer: with nothing to do its "
             "loop sits in epoll_wait() without a timeout."]
    return Section(NAME, TITLE, method, (table,), tuple(targets), tuple(notes))


def relayq_targets(c: RelayqSupervisor, pct: float, wakeups: float, execs: float | None,
                   forks: float) -> list[Target]:
    """The targets for one relayq-supervisor row: with the kernel witness on, what it costs
    depends on the node's execs, said beside the number."""
    if execs is None:
        what = " (kernel_trace = false)" if c.kernel_trace is False else " (kernel trace unavailable)"
        why = "" if pct < 0.1 else "CPU spent while nothing happened: a periodic timer or a busy fd on the loop"
        return [Target(f"idle CPU under 0.1% with {CHILDREN} children{what}", f"{pct:.3f} %", pct < 0.1, why),
                Target(f"no periodic wake-ups (no health checks or watchdog configured here){what}",
                       f"{wakeups:.2f} wake-ups/s", wakeups < 0.5,
                       "" if wakeups < 0.5 else "the loop wakes up although no timer is configured")]
    load = f"{execs:.0f} execs/s seen on the node ({forks:.0f} forks/s)"
    why = (f"the witness reads the node's fork/exec/exit events (the process history) and /proc for each exec "
           f"still running when read: {load}, none of them ours")
    return [Target(f"idle CPU under 0.1% with {CHILDREN} children (defaults: kernel witness on)",
                   f"{pct:.3f} % at {execs:.0f} execs/s", pct < 0.1, "" if pct < 0.1 else why),
            Target("no periodic wake-ups (defaults: kernel witness on)",
                   f"{wakeups:.2f} wake-ups/s at {execs:.0f} execs/s", wakeups < 0.5,
                   "" if wakeups < 0.5 else f"each burst of other processes' events wakes the witness "
                   f"(one read per burst, at most one a {DEFAULT_DELAY * 1e3:.0f} ms while they keep "
                   f"coming): {load}")]


def witness_note(rows: list[tuple], took: float, forks: float, stats0: dict[str, dict], stats: dict[str, dict]) -> str:
    cpu = {r[0]: float(r[1].split()[0]) for r in rows if r[1] != "-"}     # ms in the window
    on = next((label for label in stats if stats0.get(label) and "read_delay" not in label), None)
    off = next((label for label in cpu if "kernel_trace = false" in label), None)
    if on is None or off is None:
        return ("The kernel witness was not watching in this run (not root, or tracefs unusable): both "
                "relayq-supervisor rows measure the supervisor without it.")
    execs = stats[on]["execs"] - stats0[on]["execs"]
    captures = stats[on]["exec_captures"] - stats0[on]["exec_captures"]
    extra = cpu[on] - cpu[off]
    per_exec = f"{extra / execs * 1e3:.0f} µs of CPU per exec" if execs else "no exec seen"
    return (f"The kernel witness's share: the node forked {forks:.0f} processes/s during the window (/proc/stat "
            f"`processes`: other engineers' tests on this shared machine) and the witness saw {execs / took:.1f} "
            f"execs/s; it cost {extra:.1f} ms more than kernel_trace = false over {took:.0f} s, {per_exec} "
            f"(parsing its fork, exec and exit lines, a /proc read of argv, uid and unit for each of the "
            f"{captures / took:.1f}/s still running when read, and the loop's wake-ups). On a node where nothing "
            "execs, nothing wakes it. Section 15 measures the same cost at fixed exec rates: per exec it is "
            "less there (at 1000 execs/s, ~20 µs) because a wake-up's fixed cost (the loop, the trace_pipe read) "
            "is shared by more execs, and /bin/true has exited before its exec is read (no /proc read).")


def delay_note(witnessed: dict[str, tuple[float, float, float, float]]) -> str:
    short = next((v for label, v in witnessed.items() if "read_delay" not in label), None)
    long = next((v for label, v in witnessed.items() if "read_delay" in label), None)
    if short is None or long is None:
        return "kernel_trace_read_delay: no comparison (the witness was not watching in both rows)."
    return (f"`[supervisor] kernel_trace_read_delay` sets how long after the first trace event of a burst the "
            f"witness reads (and, while events keep coming, how often): {DEFAULT_DELAY:g} s by default, "
            f"{short[0]:.3f} % CPU and {short[1]:.1f} wake-ups/s here, with argv, uid and unit read for "
            f"{100 * short[3]:.0f} % of the node's execs (the rest had exited when read: named by their exec'd "
            f"file and parents); {LONG_DELAY:g} s: {long[0]:.3f} % and {long[1]:.1f} wake-ups/s, argv read for "
            f"{100 * long[3]:.0f} %. A longer delay is for a busy shared node where the witness's idle cost matters "
            f"more than the command line of a program that lived between {DEFAULT_DELAY:g} and {LONG_DELAY:g} s. "
            "`poll()` on trace_pipe ignores tracefs' `buffer_percent` (the kernel applies it to the per-CPU "
            "trace_pipe_raw only), so the delay is the loop's own.")


def witness_stats(live: list[Contender]) -> dict[str, dict]:
    """Each relayq-supervisor's kernel_trace_stats (status), where its witness is watching."""
    out = {}
    for c in live:
        if isinstance(c, RelayqSupervisor):
            try:
                stats = c.status()["supervisor"].get("kernel_trace_stats")
            except (OSError, RuntimeError):
                stats = None
            if stats and stats.get("state") == "watching":
                out[c.label] = stats
    return out


def node_forks() -> int:
    """Processes forked on the node since boot (/proc/stat `processes`)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("processes "):
                return int(line.split()[1])
    return 0
