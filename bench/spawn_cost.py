"""The spawn mechanism alone: relayq_supervisor.core.spawn.spawn() (fork of the whole process,
Python code in the child, the exec gate) against os.posix_spawn, both called from one
process that has imported what the supervisor imports, so both fork the same size.

usage: python3 -m bench.spawn_cost ROUNDS RECORD_FILE   (prints one JSON object)
Each round starts the benchmark child once each way, alternating, and kills it by pid.
"""
from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time

import psutil

from relayq_supervisor.core.spawn import read_exec_result, spawn

# Imported only for its size: what forks here must be as big as the real supervisor.
importlib.import_module("relayq_supervisor.core.arbiter")

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "child.py")


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


def main() -> None:
    rounds, record = int(sys.argv[1]), sys.argv[2]
    argv = [sys.executable, "-S", CHILD, record]
    devnull = os.open(os.devnull, os.O_WRONLY)
    times: dict[str, list[float]] = {"spawn": [], "posix_spawn": []}
    started = 0
    for r in range(rounds):
        for kind in (("spawn", "posix_spawn") if r % 2 == 0 else ("posix_spawn", "spawn")):
            before = time.time()
            if kind == "spawn":
                child = spawn(argv, dict(os.environ), os.getcwd(), devnull)
                pid = child.pid
                os.close(child.pidfd)
                read_exec_result(child.exec_result_fd)
            else:
                pid = os.posix_spawn(argv[0], argv, os.environ, setsid=True)
            started += 1
            try:
                times[kind].append(wait_for_line(record, started) - before)
            finally:
                os.kill(pid, signal.SIGKILL)    # our own unreaped child: the pid cannot be reused yet
                os.waitpid(pid, 0)
    print(json.dumps({"rss": psutil.Process().memory_info().rss, **times}))


if __name__ == "__main__":
    main()
