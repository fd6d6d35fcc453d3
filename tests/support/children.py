"""Children a test started by hand (fork, posix_spawn, ptrace): SIGKILLed and reaped by pid at
teardown, traced ones too, so a test that fails mid-way leaves no stopped process behind."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

from relayq_supervisor.linux import ptrace

DEADLINE = 10.0


def reap(pid: int, timeout: float = DEADLINE) -> int | None:
    """Waits for `pid` (a pid or a traced tid) to end and returns its wait status (None when it
    was already reaped); stops of a traced child are let go on the way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, ptrace.WALL | os.WNOHANG)
        except ChildProcessError:
            return None
        if done == pid and not os.WIFSTOPPED(status):
            return status
        if done == pid:
            try:
                ptrace.cont(pid, 0)
            except OSError:
                pass
            continue
        time.sleep(0.002)
    raise AssertionError(f"pid {pid} was not reaped within {timeout}s")


class Children:
    """Pids (and traced tids) a test started; all are SIGKILLed and reaped at teardown."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def add(self, pid: int) -> int:
        self.pids.append(pid)
        return pid

    def cleanup(self) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Threads first: a traced thread-group leader is not reported until its traced threads
        # have been reaped.
        for pid in reversed(self.pids):
            reap(pid)


def started_children() -> Iterator[Children]:
    """The body of a `children` fixture."""
    started = Children()
    try:
        yield started
    finally:
        started.cleanup()
