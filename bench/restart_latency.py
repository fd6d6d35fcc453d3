"""1. Restart latency: kill -9 the same tiny child under each contender, time until its
replacement has started (the child's own time.time() at start minus the time just
before the kill). All contenders run side by side; each round kills one child of each,
in a rotating order, so drift in the machine's load is shared by all."""
from __future__ import annotations

import json
import statistics
import subprocess

from .contenders import (
    PYTHON,
    REPO_DIR,
    Circus,
    Contender,
    RawRespawn,
    RelayqSupervisor,
    Supervised,
    Supervisord,
    child_argv,
    supervisor_env,
)
from .context import BenchContext
from .processes import BenchError
from .records import MIN_RUN_S, kill_and_time_restart, record_file, wait_first_start
from .report import Samples, Section, Table, Target, mib, ms, ratio

NAME = "restart"
TITLE = "1. Restart latency (kill -9 to new child start)"


def contenders(ctx: BenchContext) -> tuple[list[Contender], list[str]]:
    base = ctx.dir(NAME)
    out: list[Contender] = [RawRespawn(base / "raw")]
    if ctx.tap.config_key:
        out += [RelayqSupervisor(base / "relayq-tap", signal_tap=True),
                RelayqSupervisor(base / "relayq-notap", signal_tap=False)]
    else:
        out.append(RelayqSupervisor(base / "relayq"))
    missing = []
    sd, cd = ctx.tools.get("supervisord"), ctx.tools.get("circusd")
    if sd and sd.usable:
        out.append(Supervisord(base / "supervisord", sd))
    else:
        missing.append(f"supervisord: {sd.problem if sd else 'not installed'}")
    if cd and cd.usable:
        out += [Circus(base / "circus", cd), Circus(base / "circus-tuned", cd, check_delay=0.01)]
    else:
        missing.append(f"circus: {cd.problem if cd else 'not installed'}")
    return out, missing


def run(ctx: BenchContext) -> Section:
    rounds = 5 if ctx.quick else 30
    field, missing = contenders(ctx)
    failed: dict[str, str] = {}
    samples: dict[str, list[float]] = {c.label: [] for c in field}
    records = {}
    for c in field:
        records[c.label] = record_file(c.workdir)
        c.launch(ctx.launcher, [Supervised("child", child_argv(records[c.label]))])
    live = []
    for c in field:
        try:
            wait_first_start(records[c.label], timeout=30, proc=c.proc)
            live.append(c)
        except BenchError as e:
            failed[c.label] = f"{e}; its output: {ctx.launcher.output_of(c.log_name) or '(none)'}"
    ctx.say(f"restart latency: {rounds} rounds x {len(live)} contenders")
    for r in range(rounds):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for c in order:
            if c.label in failed:
                continue
            try:
                samples[c.label].append(kill_and_time_restart(records[c.label], timeout=15.0, tick_s=c.tick_s))
            except BenchError as e:
                failed[c.label] = f"round {r + 1}: {e}; its output: {ctx.launcher.output_of(c.log_name) or '(none)'}"
    for c in field:
        c.stop(ctx.launcher)
    mechanism = spawn_mechanism(ctx, 10 if ctx.quick else 30)
    return summarize(ctx, field, samples, failed, missing, rounds, mechanism)


def spawn_mechanism(ctx: BenchContext, rounds: int) -> dict | str:
    """bench/spawn_cost.py's samples, or why they could not be taken."""
    env = supervisor_env()
    record = ctx.dir(NAME, "records") / "spawn-cost.txt"
    try:
        done = subprocess.run([PYTHON, "-m", "bench.spawn_cost", str(rounds), str(record)], capture_output=True,
                              text=True, timeout=120, cwd=REPO_DIR, env=env)
    except subprocess.TimeoutExpired:
        return "bench/spawn_cost.py did not finish within 120 s"
    if done.returncode != 0:
        return f"bench/spawn_cost.py failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    try:
        return json.loads(done.stdout)
    except ValueError:
        return f"bench/spawn_cost.py printed no result: {done.stdout[-200:]}"


def mechanism_table(mechanism: dict) -> Table:
    fork, posix = Samples.of(mechanism["spawn"]), Samples.of(mechanism["posix_spawn"])
    return Table(f"the spawn mechanism alone, from one process with the supervisor's imports "
                 f"({mib(mechanism['rss'])}), alternating",
                 ("how the child is started", "median", "min", "max", "n", "difference of medians"),
                 (("`relayq_supervisor.core.spawn.spawn()`: fork, Python in the child, exec gate", ms(fork.median),
                   ms(fork.min), ms(fork.max), str(fork.n), ms(fork.median - posix.median)),
                  ("`os.posix_spawn()` (vfork + exec)", ms(posix.median), ms(posix.min), ms(posix.max),
                   str(posix.n), "")))


def summarize(ctx, field, samples, failed, missing, rounds, mechanism) -> Section:
    raw = next((Samples.of(v) for k, v in samples.items() if k == RawRespawn.label and v), None)
    rows = []
    for c in field:
        got = samples[c.label]
        if not got:
            rows.append((c.label, "-", "-", "-", "0", "-", f"did not run: {failed.get(c.label, '?')}"))
            continue
        s = Samples.of(got)
        note = f"stopped early: {failed[c.label]}" if c.label in failed else ""
        rows.append((c.label, ms(s.median), ms(s.min), ms(s.max), str(s.n),
                     ratio(s.median, raw.median) if raw else "-", note))
    for m in missing:
        rows.append((m.split(":")[0], "-", "-", "-", "0", "-", f"not installed: {m.split(':', 1)[1].strip()}"))
    table = Table(f"kill -9 to new child start, {rounds} rounds",
                  ("contender", "median", "min", "max", "n", "median / raw", "note"), tuple(rows))
    targets, notes = judge(field, samples, raw, mechanism if isinstance(mechanism, dict) else None)
    tables = (table,)
    if isinstance(mechanism, dict):
        tables += (mechanism_table(mechanism),)
    else:
        notes.append(f"The spawn mechanism was not measured separately: {mechanism}")
    method = (f"The child is `python3 -S bench/child.py FILE` (appends its pid and `time.time()` at start, then "
              f"sleeps). All contenders run at once; each of {rounds} rounds kills one child of each contender, "
              f"rotating the order, with every run at least {MIN_RUN_S} s old when killed (above relayq's "
              "`stable_after = 0.5`, so every restart is immediate under its rules); contenders that poll on a "
              "tick (supervisord 1 s, circus `check_delay`) are killed at a random phase of it. Latency = the new child's "
              "recorded start minus the time just before `pidfd_send_signal(SIGKILL)`; it includes the "
              "interpreter start-up of the child, the same for every contender. The raw baseline is "
              "bench/raw_respawn.py: posix_spawn, pidfd_open, select until readable, respawn. supervisord: "
              "`startsecs=0`, `autorestart=true`. circus: defaults, and tuned with `check_delay=0.01`, "
              "`warmup_delay=0`, `respawn=true`.")
    method += (" The second table times the spawn mechanism on its own (bench/spawn_cost.py): the same child "
               "started by the supervisor's `spawn()` and by `os.posix_spawn()` from one process of the "
               "supervisor's size, from the call to the child's recorded start.")
    return Section(NAME, TITLE, method, tables, tuple(targets), tuple(notes))


SPAWN_PATH = (
    "Where relayq-supervisor's extra time goes (from an strace of one restart, not measured by this script): "
    "the raw loop calls posix_spawn (vfork) from a tiny process the moment its pidfd turns "
    "readable. The supervisor wakes on the child's output pipe closing, then on the signalfd, waitpid()s, logs "
    "the transition, makes 3 pipes, forks itself (the clone alone takes ~1 ms at this size) and runs Python "
    "code in the child (setsid, signal resets, dup2, waiting at the exec gate) before exec. With the tap the "
    "new child then stops at PTRACE_EVENT_EXEC until the loop has finished that pass (log line, a scan of its "
    "the audit write and its one fsync). What would fix it: a "
    "spawn that does not fork the supervisor (posix_spawn of a small exec-gate helper that waits for the tap "
    "to seize it), dropping PTRACE_O_TRACEEXEC (a PTRACE_SEIZEd tracee gets no exec SIGTRAP, so that stop buys "
    "nothing), and nothing but the spawn between reaping and the fork.")


def judge(field, samples, raw: Samples | None, mechanism: dict | None) -> tuple[list[Target], list[str]]:
    targets, notes = [], []
    relayq = [c for c in field if isinstance(c, RelayqSupervisor) and samples[c.label]]
    sd = next((Samples.of(samples[c.label]) for c in field if isinstance(c, Supervisord) and samples[c.label]), None)
    for c in relayq:
        s = Samples.of(samples[c.label])
        if raw is None:
            targets.append(Target(f"{c.label}: within 1.25x of raw", ms(s.median), None, "raw baseline did not run"))
        else:
            r = s.median / raw.median
            over = s.median - raw.median
            why = "" if r <= 1.25 else f"{ms(over)} over raw per restart, in the supervisor's spawn path (see below)"
            targets.append(Target(f"{c.label}: within 1.25x of raw", f"{r:.2f}x ({ms(s.median)} vs {ms(raw.median)})",
                                  r <= 1.25, why))
        if sd is None:
            targets.append(Target(f"{c.label}: >= 50x faster than supervisord", ms(s.median), None,
                                  "supervisord did not run"))
        else:
            f = sd.median / s.median
            why = "" if f >= 50 else (
                f"supervisord's median ({ms(sd.median)}) is set by its 1 s poll tick; 50x of it needs "
                f"{ms(sd.median / 50)} or less, and the child's own interpreter start-up "
                f"({ms(raw.median) if raw else '?'} in the raw loop) already takes a share of that")
            targets.append(Target(f"{c.label}: >= 50x faster than supervisord", f"{f:.0f}x", f >= 50, why))
    if any(s.median > 1.25 * raw.median for s in (Samples.of(samples[c.label]) for c in relayq)) if raw else False:
        notes.append(SPAWN_PATH)
        if mechanism is not None:
            gap = statistics.median(mechanism["spawn"]) - statistics.median(mechanism["posix_spawn"])
            notes.append(f"Of that gap, the spawn mechanism alone accounts for {ms(gap)} in this run (second "
                         "table): fork() of a process of the supervisor's size and the Python code between fork "
                         "and exec, against posix_spawn. The rest is the loop's work between the child's death "
                         "and the fork.")
    if raw is not None:
        notes.append(f"The raw loop's {ms(raw.median)} is posix_spawn/exec plus the child's Python start-up until "
                     "it records its time: the floor for every contender.")
    if sd is not None:
        notes.append("supervisord's main loop is poll(1 s), then `transition()` (which spawns), then `reap()`: "
                     "the dead child's closing pipes wake the poll at once, but it is reaped after that pass's "
                     "transition, so the respawn waits for the next pass, a full 1 s poll that SIGCHLD does not "
                     "cut short (Python retries interrupted system calls, PEP 475). Hence ~1 s every time.")
    circus_default = next((c for c in field if isinstance(c, Circus) and c.check_delay is None), None)
    if circus_default and samples[circus_default.label]:
        notes.append("circus reaps and respawns only in its periodic `manage_watchers` call, every `check_delay` "
                     "(5 s by default in a config file): a restart takes half of that on average. Tuning "
                     "`check_delay` down trades that latency for idle wake-ups (see idle cost).")
    return targets, notes
