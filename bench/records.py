"""The record file the benchmark child appends to, and one kill-to-restart measurement."""
from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .processes import BenchError, poll_until

# A run must outlast relayq's stable_after (0.5 s in the bench configs) before it is
# killed, so that under its rules every restart is immediate, never a backoff.
MIN_RUN_S = 0.7


@dataclass(frozen=True)
class ChildStart:
    pid: int
    started: float      # the child's time.time() when it began to run


def record_file(contender_dir: Path) -> Path:
    """Where a contender's children record their starts: beside its work dir, not in it,
    so a supervisor watching its config's directory (relayq's inotify ground watch) is not
    woken by the benchmark's own bookkeeping."""
    records = contender_dir.parent / "records"
    records.mkdir(parents=True, exist_ok=True)
    return records / f"{contender_dir.name}.txt"


def read_starts(path: Path) -> list[ChildStart]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    starts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            starts.append(ChildStart(int(parts[0]), float(parts[1])))
    return starts


def wait_first_start(path: Path, timeout: float, count: int = 1, proc=None) -> list[ChildStart]:
    """The recorded starts once `count` children have started; fails early if `proc`
    (the supervisor) exits meanwhile."""
    def started():
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"the supervisor exited with status {proc.returncode} before its children started")
        s = read_starts(path)
        return s if len({x.pid for x in s}) >= count else None
    return poll_until(started, timeout, f"{count} child start(s) recorded in {path}", interval=0.01)


def kill_and_time_restart(path: Path, timeout: float = 10.0, tick_s: float | None = None) -> float:
    """kill -9 the newest child recorded in `path`; seconds from just before the kill to
    the start its replacement recorded. `tick_s`: kill at a random phase of a polling
    supervisor's tick."""
    starts = read_starts(path)
    if not starts:
        raise BenchError(f"no child recorded in {path}")
    current = starts[-1]
    wait = current.started + MIN_RUN_S - time.time()
    if tick_s:
        wait = max(wait, 0.0) + random.uniform(0.0, tick_s)
    if wait > 0:
        time.sleep(wait)        # pacing: let the run count as stable, not synchronisation
    try:
        pidfd = os.pidfd_open(current.pid)
    except ProcessLookupError:
        raise BenchError(f"child pid {current.pid} from {path} is gone before the kill") from None
    size = os.stat(path).st_size
    try:
        before = time.time()
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)

    def replacement():
        if os.stat(path).st_size == size:
            return None
        new = [s for s in read_starts(path) if s.pid != current.pid and s.started >= current.started]
        return new[-1] if new else None

    new = poll_until(replacement, timeout, f"a new child after killing pid {current.pid}", interval=0.001)
    return new.started - before
