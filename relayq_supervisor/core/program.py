"""One supervised program instance: its state, its process, how its last run ended."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from dataclasses import dataclass

from relayq_supervisor.config import ProgramSpec
from relayq_supervisor.core.policy import RestartTracker

log = logging.getLogger("relayq")

STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL = (
    "STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")


def signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


@dataclass(frozen=True)
class ExitInfo:
    """How a run ended, in systemd's words: `exited 1`, `killed by SIGKILL`."""
    code: int | None
    signal: int | None
    at: float                   # wall clock
    runtime: float
    core_dumped: bool = False
    detail: str | None = None   # who did it, exec failure, ...

    @classmethod
    def from_wait_status(cls, status: int, runtime: float) -> "ExitInfo":
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status), time.time(), runtime, os.WCOREDUMP(status))
        return cls(os.waitstatus_to_exitcode(status), None, time.time(), runtime)

    def describe(self) -> str:
        if self.signal is not None:
            text = f"killed by {signal_name(self.signal)}" + (" (core dumped)" if self.core_dumped else "")
        else:
            text = f"exited {self.code}"
        return f"{text}, {self.detail}" if self.detail else text

    def to_dict(self) -> dict:
        return {"code": self.code, "signal": signal_name(self.signal) if self.signal else None,
                "at": self.at, "runtime_s": round(self.runtime, 3), "description": self.describe()}


class Program:
    """State and process of one instance (`redis`, `worker:0`). The supervisor decides;
    this object records, and logs every transition with its reason."""

    def __init__(self, spec: ProgramSpec, name: str, clock=time.monotonic):
        self.spec = spec
        self.name = name
        self.state = STOPPED
        self.reason = "not started yet"
        self.wanted = spec.autostart        # desired state: up or down
        self.tracker = RestartTracker(spec.restart, clock=clock)
        self.clock = clock
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.started_at: float | None = None       # monotonic
        self.started_wall: float | None = None
        self.restarts = 0
        self.last_exit: ExitInfo | None = None
        self.next_start_at: float | None = None    # monotonic, in BACKOFF
        self.start_due = False                     # backoff over, waiting for dependencies
        self.exec_error: str | None = None
        self.notify_status: str | None = None      # last STATUS= the child sent
        self.last_signal: dict | None = None       # last signal delivered to it, with its sender
        self.recent_events: deque[dict] = deque(maxlen=10)    # signals, denials: for `relayqctl why`
        self.output_tail: deque[str] = deque(maxlen=20)       # its last output lines
        self.last_stop: dict | None = None         # evidence of how the last run ended
        self.stop_reason: str | None = None        # why the supervisor is stopping it
        self.timer: asyncio.TimerHandle | None = None
        self.ready_task: asyncio.Task | None = None
        self.output = None
        self.output_fd: int | None = None
        self.starts = 0                            # every start, automatic or not
        self.exited = asyncio.Event()
        self.exited.set()
        self.listener = None                       # called after every transition

    @property
    def base(self) -> str:
        return self.spec.name

    def set_state(self, state: str, reason: str) -> None:
        old, self.state, self.reason = self.state, state, reason
        level = logging.WARNING if state in (FATAL, BACKOFF) else logging.INFO
        log.log(level, "%s: %s -> %s (%s)", self.name, old, state, reason)
        if self.listener is not None:
            self.listener(self)

    def uptime(self) -> float | None:
        if self.state in (RUNNING, STARTING, STOPPING) and self.started_at is not None:
            return self.clock() - self.started_at
        return None

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def cancel_ready_check(self) -> None:
        if self.ready_task is not None:
            self.ready_task.cancel()
            self.ready_task = None

    def send_signal(self, signo: int) -> bool:
        """Through the pidfd, so a recycled pid can never be hit."""
        if self.pidfd is None:
            return False
        try:
            signal.pidfd_send_signal(self.pidfd, signo)
            return True
        except ProcessLookupError:
            return False

    def forget_process(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
        self.pid = self.pidfd = None
        self.cancel_ready_check()
        self.cancel_timer()

    def remember_output(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self.output_tail.append(line[:300])

    def status(self) -> dict:
        next_in = None
        if self.state == BACKOFF and self.next_start_at is not None:
            next_in = max(0.0, round(self.next_start_at - self.clock(), 3))
        up = self.uptime()
        reason = self.reason
        if next_in is not None:     # live, not the text frozen at the exit
            reason = f"next start in {next_in:.1f}s, failure {self.tracker.streak} of " \
                     f"{self.spec.restart.start_limit_burst}"
            if self.last_exit is not None:
                reason += f"; last: {self.last_exit.describe()}"
        return {
            "name": self.name, "program": self.base, "state": self.state, "pid": self.pid,
            "uptime_s": round(up, 3) if up is not None else None,
            "started_at": self.started_wall, "restarts": self.restarts,
            "last_exit": self.last_exit.to_dict() if self.last_exit else None,
            "next_start_in_s": next_in, "reason": reason, "wanted": self.wanted,
            "streak": self.tracker.streak, "notify_status": self.notify_status,
        }
