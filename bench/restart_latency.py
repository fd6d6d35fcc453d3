"""1. Restart latency: kill -9 the same tiny child under each contender, time until its
replacement has started (the child's own time.time() at start minus the time just
before the kill). All contenders run side by side; each round kills one child of each,
in a rotating order, so drift in the machine's load is shared by all."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import time

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
TITLE = "Restart latency (kill -9 to new child start)"
# Between one contender's restart and the next kill: moving a process into a cgroup waits for an RCU
# grace period unless another move (or clone3 into a group) happened within about one grace period
# before (the kernel's rcu_sync stays in its slow mode that long), so back-to-back restarts of six
# supervisors made each other's moves cheap. A real restart rarely follows another's by milliseconds.
PAUSE_S = 0.1


def contenders(ctx: BenchContext) -> tuple[list[Contender], list[str]]:
    base = ctx.dir(NAME)
    out: list[Contender] = [RawRespawn(base / "raw")]
    if ctx.tap.config_key:
        # the last two rows only split the kernel witness's share out (no targets of their own): with
        # the witness watching the tap seizes only protected programs, so the first two rows run the
        # child untraced, the third traced by the tap alone, the fourth with neither
        out += [RelayqSupervisor(base / "relayq-tap", signal_tap=True),
                RelayqSupervisor(base / "relayq-notap", signal_tap=False),
                RelayqSupervisor(base / "relayq-tap-nowitness", signal_tap=True, kernel_trace=False),
                RelayqSupervisor(base / "relayq-neither", signal_tap=False, kernel_trace=False),
                # and the run's cgroup's share (moving the child into it: section 15)
                RelayqSupervisor(base / "relayq-nocgroup", signal_tap=False, cgroups=False)]
        if os.geteuid() == 0:
            # `user` takes spawn()'s fork path (setgroups/setresgid/setresuid/no_new_privs in the
            # child); root keeps the child able to run the venv's interpreter, wherever it lives
            out.append(RelayqSupervisor(base / "relayq-user", signal_tap=True, program_extra={"user": "root"}))
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
            time.sleep(PAUSE_S)     # pacing, not synchronisation: each restart measured on its own
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


MECHANISM_ROWS = {
    "gate": "`spawn()` with the tap's seize: posix_spawn of the dash gate, PTRACE_SEIZE, release, exec",
    "direct": "`spawn()` without before_exec: posix_spawn of the program",
    "fork": "`spawn()`'s fork path (forced by a no-op `child_setup`): fork, Python in the child, gate, exec",
    "posix_spawn": "`os.posix_spawn()` (vfork + exec), as the raw loop",
    "clone": "`spawn()` into a fresh cgroup, as the supervisor starts a run: clone3 CLONE_INTO_CGROUP, the gate, "
             "PTRACE_SEIZE, release, exec",
    "gate+move": "`spawn()` into a fresh cgroup where clone3 is refused: the dash gate, moved into the group at the "
                 "gate (cgroup.procs), PTRACE_SEIZE, release, exec",
}


def mechanism_table(mechanism: dict) -> Table:
    posix = Samples.of(mechanism["start"]["posix_spawn"])
    rows = []
    for way, label in MECHANISM_ROWS.items():
        if not mechanism["start"].get(way):
            continue        # the cgroup ways where no group could be made
        s, c = Samples.of(mechanism["start"][way]), Samples.of(mechanism["call"][way])
        if way == "gate" and mechanism.get("seize_refused"):
            label += f" (ptrace refused here: {mechanism['seize_refused']}; gate without the seize)"
        rows.append((label, ms(s.median), ms(s.min), ms(s.max), str(s.n),
                     "" if way == "posix_spawn" else ms(s.median - posix.median), ms(c.median)))
    return Table(f"the spawn mechanism alone, from one process with the supervisor's imports "
                 f"({mib(mechanism['rss'])}), rotating",
                 ("how the child is started", "median", "min", "max", "n", "median - posix_spawn",
                  "caller busy (median)"), tuple(rows))


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
              f"rotating the order, {PAUSE_S:g} s after the previous contender's restart (a cgroup move is cheap "
              "right after another one: without the pause one supervisor's restart warmed the next one's), with "
              f"every run at least {MIN_RUN_S} s old when killed (above relayq's "
              "`stable_after = 0.5`, so every restart is immediate under its rules); contenders that poll on a "
              "tick (supervisord 1 s, circus `check_delay`) are killed at a random phase of it. Latency = the new child's "
              "recorded start minus the time just before `pidfd_send_signal(SIGKILL)`; it includes the "
              "interpreter start-up of the child, the same for every contender. The raw baseline is "
              "bench/raw_respawn.py: posix_spawn, pidfd_open, select until readable, respawn. supervisord: "
              "`startsecs=0`, `autorestart=true`. circus: defaults, and tuned with `check_delay=0.01`, "
              "`warmup_delay=0`, `respawn=true`.")
    method += (" The second table times the spawn mechanism on its own (bench/spawn_cost.py): the same child "
               "started each way the supervisor's `spawn()` can start it and by `os.posix_spawn()`, from one "
               "process of the supervisor's size, from the call to the child's recorded start; \"caller busy\" "
               "is how long the call itself took, time the supervisor's loop cannot spend on anything else.")
    return Section(NAME, TITLE, method, tables, tuple(targets), tuple(notes))


SPAWN_PATH = (
    "Where relayq-supervisor's extra time goes: the raw loop calls posix_spawn from a tiny process the "
    "moment its pidfd turns readable. The supervisor wakes on the signalfd (SIGCHLD), waitpid()s, kills what "
    "the run left behind, decides the restart under its rules and starts the successor at once: its pipes, "
    "then (cgroup v2) a clone3 fork of the supervisor born in the run's cgroup that execs the dash gate, the "
    "kernel witness's pid filter and, for a protected program, PTRACE_SEIZE, then the gate's exec of the "
    "program (second table). Only after that does it read the kernel trace's backlog, name the sender of the "
    "signal that ended the child (its /proc identity and ancestry), audit the exit and enter BACKOFF and "
    "STARTING; the audit write and its fsync come in the next loop pass. That judging no longer delays the "
    "restart, but it shares the machine's two cores with the starting child. Where clone3 is refused the "
    "gate is posix_spawned and moved into the group, which waits for an RCU grace period (the cgroup section).")


def judge(field, samples, raw: Samples | None, mechanism: dict | None) -> tuple[list[Target], list[str]]:
    targets, notes = [], []
    runs = [c for c in field if isinstance(c, RelayqSupervisor) and samples[c.label]]
    # the default config: these have targets (not the witness-less or cgroup-less rows, nor the `user` row)
    relayq = [c for c in runs if c.kernel_trace is None and c.cgroups is None and not c.program_extra]
    sd = next((Samples.of(samples[c.label]) for c in field if isinstance(c, Supervisord) and samples[c.label]), None)
    for c in relayq:
        s = Samples.of(samples[c.label])
        if raw is None:
            targets.append(Target(f"{c.label}: within 1.25x of raw", ms(s.median), None, "raw baseline did not run"))
        else:
            r = s.median / raw.median
            over = s.median - raw.median
            why = "" if r <= 1.25 else f"{ms(over)} over raw per restart (see below)"
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
            way = "clone" if mechanism["start"].get("clone") else "gate"
            gap = statistics.median(mechanism["start"][way]) - statistics.median(mechanism["start"]["posix_spawn"])
            notes.append(f"Of that gap, the spawn mechanism alone accounts for {ms(gap)} in this run (second "
                         f"table, {'clone3 into a fresh cgroup' if way == 'clone' else 'gate'} against posix_spawn). "
                         "The rest is the loop's work between the child's death and the spawn, and the two "
                         "cores' other load.")
    witness_only = next((c for c in relayq if not c.signal_tap), None)
    neither = next((c for c in runs if not c.signal_tap and c.kernel_trace is False), None)
    tap_only = next((c for c in runs if c.signal_tap and c.kernel_trace is False), None)
    if witness_only is not None and neither is not None and raw is not None:
        on, off = Samples.of(samples[witness_only.label]), Samples.of(samples[neither.label])
        tap = "" if tap_only is None else (" The tap alone (it seizes every program when the witness is off): "
                                           f"{ms(Samples.of(samples[tap_only.label]).median)}.")
        notes.append(f"The kernel witness's share (`[supervisor] kernel_trace`, on by default where tracefs can be "
                     f"used): with neither witness nor tap a restart took {ms(off.median)} "
                     f"({off.median / raw.median:.2f}x raw), with the witness {ms(on.median)} "
                     f"({on.median / raw.median:.2f}x), {ms(on.median - off.median)} more.{tap} Once the successor is "
                     "started the witness reads what the trace buffered since its last read (at most 0.05 s of the "
                     "node's forks, execs and exits, ~4 µs a line) and names the sender, so the signal that ended "
                     "the child is known when its exit is recorded.")
    if mechanism is not None:
        start = {way: statistics.median(v) for way, v in mechanism["start"].items()}
        groups = ""
        if start.get("clone") is not None and start.get("gate+move") is not None:
            groups = (" Into a fresh cgroup, as every run starts: born there by clone3 (a fork of the supervisor "
                      f"that execs the gate at once) {ms(start['clone'] - start['posix_spawn'])} over posix_spawn, "
                      f"moved there at the gate {ms(start['gate+move'] - start['posix_spawn'])} (the RCU grace "
                      "period of a cgroup move).")
        notes.append(f"How relayq-supervisor starts a child (relayq_supervisor/core/spawn.py): a small dash "
                     "script, the exec gate, that blocks on a pipe; the tap seizes it there and one newline "
                     "releases it to exec the program in place, so no instruction of the program runs untraced. "
                     "In the second table posix_spawn of the gate costs "
                     f"{ms(start['gate'] - start['posix_spawn'])} over posix_spawn, where forking the supervisor "
                     f"and running Python in the child up to exec (the fork path, kept for what must run in the "
                     f"child before exec) costs {ms(start['fork'] - start['posix_spawn'])}.{groups} The supervisor "
                     "passes before_exec whether or not the tap is on (the kernel witness starts watching the pid "
                     "there too), so the tap-off rows above go through the gate as well.")
    with_tap = next((c for c in relayq if c.signal_tap), None)
    as_user = next((c for c in runs if c.program_extra.get("user")), None)
    if as_user is not None and with_tap is not None and raw is not None:
        u, gate = Samples.of(samples[as_user.label]), Samples.of(samples[with_tap.label])
        notes.append(f"A program with `user` (or `umask`, `nice`, `limits`, `no_new_privileges`) takes the fork "
                     "path: its credentials are set in the child between the tap's seize and exec "
                     f"(linux/credentials.py). With `user = \"root\"` (setgroups, setresgid, setresuid and "
                     f"no_new_privs, the same calls as for any user) a restart took {ms(u.median)} "
                     f"({u.median / raw.median:.2f}x raw), {ms(u.median - gate.median)} more than the gate's "
                     "row above. Programs without those keys keep the gate.")
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
