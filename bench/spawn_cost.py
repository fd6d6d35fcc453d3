"""The spawn mechanism alone: each way relayq_supervisor.core.spawn.spawn() can start a child,
against os.posix_spawn, all called from one process that has imported what the supervisor
imports, so the fork path copies a process of the supervisor's size.

- gate: spawn() with before_exec seizing the child as the signal tap does (posix_spawn of
  the dash gate, PTRACE_SEIZE, release, exec);
- direct: spawn() without before_exec (posix_spawn of the program);
- fork: spawn() with a no-op child_setup, which forces the fork path;
- posix_spawn: os.posix_spawn() of the program, the raw loop's call;
where a cgroup v2 group can be made here (root), each into a fresh group as the supervisor
starts a run:
- clone: spawn() with the seize and the group's fd: clone3 CLONE_INTO_CGROUP, the gate, exec;
- gate+move: the gate with the move into the group at the gate (the way when clone3 is refused).

usage: python3 -m bench.spawn_cost ROUNDS RECORD_FILE   (prints one JSON object)
Each round starts the benchmark child once each way, in a rotating order, and kills it by
pid. Per way: the child's recorded start minus the time just before the call ("start"),
and how long the call kept the caller busy ("call": the supervisor's loop is blocked that long).
"""
from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import sys
import time

import psutil

from relayq_supervisor.core.spawn import read_exec_result, spawn
from relayq_supervisor.linux import cgroups, ptrace
from relayq_supervisor.witness.tap import OPTIONS as TAP_OPTIONS

# Imported only for its size: what forks here should be as big as the real supervisor
# (node.py assembles it; a running one has grown a few MiB more).
importlib.import_module("relayq_supervisor.node")

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")
WAYS = ("gate", "direct", "fork", "posix_spawn")
GROUP_WAYS = ("clone", "gate+move")


class Groups:
    """Fresh cgroup v2 groups under our own, one per child (None where none can be made)."""

    def __init__(self) -> None:
        hierarchy = cgroups.own_hierarchy()
        self.base: str | None = None
        if hierarchy is not None and hierarchy.version == 2:
            base = os.path.join(hierarchy.own, f"relayq-bench-spawn-{os.getpid()}")
            try:
                cgroups.make_new_group(base)
                self.base = base
            except OSError:
                pass
        self.made = 0

    def new(self) -> str:
        assert self.base is not None
        self.made += 1
        path = os.path.join(self.base, str(self.made))
        cgroups.make_new_group(path)
        return path

    def close(self) -> None:
        if self.base is not None:
            for name in os.listdir(self.base):
                if os.path.isdir(os.path.join(self.base, name)):
                    cgroups.remove(os.path.join(self.base, name))
            cgroups.remove(self.base)


def wait_for_line(path: str, count: int, timeout: float = 10.0) -> float:
    """The start time recorded on line `count` (1-based) of `path`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        if len(lines) >= count:
            return float(lines[count - 1].split()[1])
        if time.monotonic() > deadline:
            raise SystemExit(f"spawn_cost: no child start recorded in {path} within {timeout:g}s")
        time.sleep(0.0005)


class Seize:
    """before_exec as the tap does it; where the kernel refuses ptrace, only the gate is timed."""
    refused: str | None = None

    def __call__(self, pid: int) -> None:
        if self.refused:
            return
        try:
            ptrace.seize(pid, TAP_OPTIONS)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EACCES):
                raise
            self.refused = e.strerror


def main() -> None:
    rounds, record = int(sys.argv[1]), sys.argv[2]
    argv = [sys.executable, "-S", CHILD, record]
    env, cwd = dict(os.environ), os.getcwd()
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    seize = Seize()
    groups = Groups()
    ways = WAYS + (GROUP_WAYS if groups.base is not None else ())
    start: dict[str, list[float]] = {w: [] for w in ways}
    call: dict[str, list[float]] = {w: [] for w in ways}
    via: dict[str, str] = {}
    started = 0
    try:
        for r in range(rounds):
            for way in ways[r % len(ways):] + ways[:r % len(ways)]:
                group = groups.new() if way in GROUP_WAYS else None
                group_fd = os.open(group, os.O_RDONLY | os.O_DIRECTORY) if group and way == "clone" else None
                before, busy = time.time(), time.perf_counter()
                if way == "posix_spawn":
                    pid = os.posix_spawn(argv[0], argv, env, setsid=True)
                else:
                    child = spawn(argv, env, cwd, devnull, before_exec=seize if way in ("gate", *GROUP_WAYS) else None,
                                  child_setup=(lambda: None) if way == "fork" else None, cgroup_fd=group_fd,
                                  place=(lambda pid, g=group: cgroups.place(g, pid)) if way == "gate+move" else None)
                    pid, via[way] = child.pid, child.via
                    os.close(child.pidfd)
                    read_exec_result(child.exec_result_fd)
                call[way].append(time.perf_counter() - busy)
                if group_fd is not None:
                    os.close(group_fd)
                started += 1
                try:
                    start[way].append(wait_for_line(record, started) - before)
                finally:
                    os.kill(pid, signal.SIGKILL)    # our own unreaped child: the pid cannot be reused yet
                    os.waitpid(pid, 0)
                    if group is not None:
                        cgroups.remove(group)
    finally:
        groups.close()
    print(json.dumps({"rss": psutil.Process().memory_info().rss, "start": start, "call": call, "via": via,
                      "seize_refused": seize.refused}))


if __name__ == "__main__":
    main()
