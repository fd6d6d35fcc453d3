"""15. What a cgroup per program run costs (core/containment.py), in this process, as root:

- spawn: core.spawn.spawn() of `sleep` through the exec gate, as the supervisor starts a
  program: without a cgroup, into a group made ahead (the supervisor's way: its successor's
  group is made after a run starts, so a restart only writes the pid into cgroup.procs),
  and into a group made at spawn (mkdir too). Rounds are spaced SPACING_S apart, as restarts
  are: the kernel's cost of moving a process depends on how recently another move was made.
- end: from killing a run whose program left a setsid() daemon behind to its group empty
  and removed, with cgroup.kill and with SIGKILL to each member.
"""
from __future__ import annotations

import os
import time

from relayq_supervisor.core.containment import Containment, Run
from relayq_supervisor.core.spawn import spawn
from relayq_supervisor.linux import cgroups

from .context import BenchContext
from .report import Samples, Section, Table, Target

NAME = "cgroup"
TITLE = "A cgroup per program run (spawn into it, empty it)"
DAEMON = ["/bin/sh", "-c", "setsid sh -c 'sleep 1000' & exec sleep 1000"]
SPACING_S = 0.05
WAYS = ("no cgroup", "group made ahead", "group made ahead, warm_up() 3 ms before", "group made at spawn")
LOOP_WORK_S = 0.003     # the supervisor's work between a child's death (warm_up) and its restart's spawn


def p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9) - 1]


def spawn_once(containment: Containment, way: str, out: int) -> tuple[float, float]:
    """(whole spawn, the write into cgroup.procs) in seconds, for one way."""
    run: Run | None = containment.new_run("bench") if way.startswith("group made ahead") else None
    if "warm_up" in way:
        containment.warm_up()
        time.sleep(LOOP_WORK_S)
    moved = [0.0]

    def at_gate(pid: int) -> None:
        if run is not None:
            t = time.perf_counter()
            containment.place(run, pid)
            moved[0] = time.perf_counter() - t
    began = time.perf_counter()
    if way == "group made at spawn":
        run = containment.new_run("bench")
    child = spawn(["sleep", "1000"], {"PATH": "/usr/bin:/bin"}, "/", out, before_exec=at_gate)
    took = time.perf_counter() - began
    os.kill(child.pid, 9)
    os.waitpid(child.pid, 0)
    os.close(child.pidfd)
    os.close(child.exec_result_fd)
    if run is not None and run.group is not None:
        cgroups.remove(run.group)
    return took, moved[0]


def end_once(containment: Containment, use_kill_file: bool, out: int) -> float:
    assert containment.hierarchy is not None
    run = containment.new_run("bench")
    group = run.group or ""
    child = spawn(DAEMON, {"PATH": "/usr/bin:/bin"}, "/", out, before_exec=lambda pid: containment.place(run, pid))
    os.close(child.exec_result_fd)
    deadline = time.monotonic() + 10
    while len(cgroups.all_members(group)) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    members = cgroups.all_members(group)
    began = time.perf_counter()
    while cgroups.all_members(group):       # a zombie is no member: no reaping needed to see it empty
        cgroups.kill_all(group, containment.hierarchy, use_kill_file=use_kill_file)
        time.sleep(0.0005)
    removed = cgroups.remove(group)
    took = time.perf_counter() - began
    for pid in members:     # the bench is a subreaper: the daemon comes to it
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    os.close(child.pidfd)
    if not removed:
        raise RuntimeError(f"cgroup {group} not removed once empty")
    return took


def run(ctx: BenchContext) -> Section:
    method = (f"In the benchmark process, as root. Spawn: `core.spawn.spawn()` of `sleep` through the exec gate (as "
              f"the supervisor starts a program without the signal tap), each way in turn each round, rounds "
              f"{SPACING_S * 1000:.0f} ms apart (restarts are spaced too: moving a process right after another "
              "move is cheaper, see below). End: a program that leaves a setsid() daemon (`sh` + `setsid sh` + "
              "`sleep`, 3 processes), from the first kill to its group empty and removed.")
    if os.geteuid() != 0:
        return Section(NAME, TITLE, method, skipped="needs root to make cgroups")
    containment = Containment.open(True, f"bench-{os.getpid()}")
    if containment.hierarchy is None or containment.base is None:
        return Section(NAME, TITLE, method, skipped=f"no cgroups here: {containment.why_none}")
    rounds = 20 if ctx.quick else 150
    spawns: dict[str, list[float]] = {w: [] for w in WAYS}
    moves: dict[str, list[float]] = {w: [] for w in WAYS}
    ends: dict[str, list[float]] = {}
    out = os.open(os.devnull, os.O_WRONLY)
    state = containment.state
    try:
        ctx.say(f"cgroup: {state}; {rounds} rounds")
        for r in range(rounds):
            for way in WAYS[r % len(WAYS):] + WAYS[:r % len(WAYS)]:
                time.sleep(SPACING_S)
                took, moved = spawn_once(containment, way, out)
                spawns[way].append(took)
                moves[way].append(moved)
        kinds = ([("cgroup.kill", True)] if containment.hierarchy.has_kill_file(containment.base) else []) + \
            [("SIGKILL to each member", False)]
        for label, use_kill_file in kinds:
            ends[label] = [end_once(containment, use_kill_file, out) for _ in range(max(5, rounds // 5))]
    finally:
        os.close(out)
        containment.close()
    plain = Samples.of(spawns["no cgroup"]).median
    rows = []
    for way in WAYS:
        s = Samples.of(spawns[way])
        move = f"{Samples.of(moves[way]).median * 1000:.2f} ms" if way != "no cgroup" else "-"
        rows.append((way, f"{s.median * 1000:.2f} ms", f"{p90(spawns[way]) * 1000:.2f} ms",
                     f"{s.max * 1000:.2f} ms", move))
    ahead = Samples.of(spawns["group made ahead"]).median - plain
    warmed = Samples.of(spawns[WAYS[2]]).median - plain
    end_rows = tuple((label, f"{Samples.of(v).median * 1000:.2f} ms", f"{Samples.of(v).max * 1000:.2f} ms")
                     for label, v in ends.items())
    worst_end = max(Samples.of(v).median for v in ends.values())
    fast_moves = containment.hierarchy.favordynmods
    return Section(
        NAME, TITLE, method,
        tables=(Table(f"Spawn, {rounds} rounds ({state})",
                      ("way", "median", "p90", "max", "of which the write into cgroup.procs (median)"),
                      tuple(rows)),
                Table("End of a run with a daemon", ("how", "median", "max"), end_rows)),
        targets=(
            Target("spawn into a cgroup adds under 0.5 ms (median) to a spawn",
                   f"+{ahead * 1000:.2f} ms (group made ahead)", ahead < 0.0005,
                   why="" if ahead < 0.0005 else
                   "the kernel's: writing cgroup.procs waits for an RCU grace period (see below)"),
            Target("the same with the grace period begun early (warm_up, 3 ms of loop work before the spawn)",
                   f"+{warmed * 1000:.2f} ms", warmed < 0.0005,
                   why="" if warmed < 0.0005 else "the rest of the grace period"),
            Target("a run with a daemon is emptied and removed within 10 ms (median)",
                   f"{worst_end * 1000:.2f} ms", worst_end < 0.010),
        ),
        notes=(
            "Moving a process into a group takes cgroup_threadgroup_rwsem for writing, a per-CPU rwsem whose "
            "writer waits for an RCU grace period unless another writer passed through it moments before "
            "(rcu_sync). So the first move after a quiet spell costs milliseconds and a second one right after "
            "it tenths of one; restarts come one at a time, so they pay the first price. The hierarchy's "
            "`favordynmods` mount option (cgroup-v2.rst: \"reduce the latencies of dynamic cgroup modifications "
            "such as task migrations ... at the cost of making hot path operations such as forks and exits more "
            f"expensive\") removes that wait; here it is {'on' if fast_moves else 'off'}. It is the node's "
            "choice (a remount of the hierarchy): the supervisor does not make it.",
            "`warm_up()` is what the supervisor does when a child's output ends or its leftovers are killed, "
            "both before the restart's spawn: in a thread, it writes the supervisor's own pid into its own group "
            "(no process moves, but the lock is taken), so the grace period runs while the loop does its work "
            f"and the move waits only for the rest; the row stands {LOOP_WORK_S * 1000:.0f} ms of loop work "
            "between the two.",
            "Making the group (mkdir, ~0.03 ms) and removing the previous run's (rmdir) are off the restart path "
            "(core/containment.py: the successor's group is made after a run starts; an empty old group is "
            "removed on the loop's next turn). clone3(CLONE_INTO_CGROUP) would start the child in its group "
            "with no move at all, but the exec gate is posix_spawn(3), which glibc before 2.41 cannot direct "
            "into a cgroup.",
        ),
    )
