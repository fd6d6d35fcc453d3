"""What a cgroup per program run costs, and how long emptying one takes (core/containment.py).

usage: python3 -m bench.cgroup_cost [ROUNDS]   (as root; prints one line per figure)

- spawn: core.spawn.spawn() of `sleep` through the exec gate, with and without entering a
  fresh cgroup at the gate (mkdir + a write to cgroup.procs), medians over ROUNDS;
- end: from killing a run whose program left a setsid() daemon behind to its group empty
  and removed, with cgroup.kill and with SIGKILL to each member.
"""
from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time

from relayq_supervisor.core.containment import Containment
from relayq_supervisor.core.spawn import spawn
from relayq_supervisor.linux import cgroups

DAEMON = ["/bin/sh", "-c", "setsid sh -c 'sleep 1000' & exec sleep 1000"]


def spawn_ms(containment: Containment | None, rounds: int) -> float:
    times = []
    out = os.open(os.devnull, os.O_WRONLY)
    for _ in range(rounds):
        run = containment.new_run("bench") if containment else None
        t0 = time.perf_counter()
        def at_gate(pid: int, run=run) -> None:
            if containment is not None and run is not None:
                containment.place(run, pid)
        child = spawn(["sleep", "1000"], {"PATH": "/usr/bin:/bin"}, "/", out, before_exec=at_gate)
        times.append((time.perf_counter() - t0) * 1000)
        os.kill(child.pid, 9)
        os.waitpid(child.pid, 0)
        os.close(child.pidfd)
        os.close(child.exec_result_fd)
        if containment and run:
            cgroups.remove(run.group or "")
    os.close(out)
    return statistics.median(times)


async def end_ms(containment: Containment, rounds: int, use_kill_file: bool) -> float:
    times = []
    out = os.open(os.devnull, os.O_WRONLY)
    assert containment.hierarchy is not None
    for _ in range(rounds):
        run = containment.new_run("bench")
        child = spawn(DAEMON, {"PATH": "/usr/bin:/bin"}, "/", out,
                      before_exec=lambda pid, run=run: containment.place(run, pid))
        while len(cgroups.all_members(run.group or "")) < 3:
            await asyncio.sleep(0.001)
        t0 = time.perf_counter()
        while cgroups.all_members(run.group or ""):
            cgroups.kill_all(run.group or "", containment.hierarchy, use_kill_file=use_kill_file)
            await asyncio.sleep(0.0005)
            while True:     # reap what is ours (the supervisor's reap pass does this)
                try:
                    if os.waitpid(-1, os.WNOHANG)[0] == 0:
                        break
                except ChildProcessError:
                    break
        cgroups.remove(run.group or "")
        times.append((time.perf_counter() - t0) * 1000)
        os.close(child.pidfd)
        os.close(child.exec_result_fd)
    os.close(out)
    return statistics.median(times)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    containment = Containment.open(True, f"bench-{os.getpid()}")
    if containment.hierarchy is None:
        print(f"no cgroups here: {containment.why_none}")
        return
    try:
        print(f"{containment.state}, {rounds} rounds")
        print(f"spawn without cgroup: median {spawn_ms(None, rounds):.2f} ms")
        print(f"spawn into a new cgroup: median {spawn_ms(containment, rounds):.2f} ms")
        if containment.hierarchy.has_kill_file(containment.base or ""):
            print(f"end of a run with a daemon, cgroup.kill: median "
                  f"{asyncio.run(end_ms(containment, rounds // 2, True)):.2f} ms")
        print(f"end of a run with a daemon, SIGKILL to each member: median "
              f"{asyncio.run(end_ms(containment, rounds // 2, False)):.2f} ms")
    finally:
        cgroups.remove(containment.base or "")


if __name__ == "__main__":
    main()
