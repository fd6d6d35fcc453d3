"""One supervised program instance (`redis`, `worker:0`): its state, its process, the
evidence of how its last run ended.

The arbiter decides; a Program records. It owns its fields: every change goes through
one of its methods, and every change of state through `_enter`, which checks the
transition table and logs the change with its reason.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from relayq_supervisor.config.model import ProgramSpec
from relayq_supervisor.config.privileges import run_as_name
from relayq_supervisor.core.policy import RestartTracker
from relayq_supervisor.core.states import ALIVE, ENDED, State, check_transition
from relayq_supervisor.core.watchdog import Watchdog
from relayq_supervisor.kinds import Cancellable
from relayq_supervisor.linux.siginfo import signal_name

log = logging.getLogger(__name__)


class ChildHandle(Protocol):
    """A started child process as the arbiter sees it (core/children.py has the real one,
    tests a fake): signals go through it, never through a bare pid."""

    pid: int

    def send_signal(self, signo: int) -> bool:
        """True if delivered; False if the process is gone."""
        ...

    def kill_group(self) -> bool:
        """SIGKILL to its process group (its pgid is its pid); False if the group is empty."""
        ...

    def exec_error(self) -> str | None:
        """After its exit: why exec failed, or None if it did not."""
        ...

    def descendants(self) -> list[int]:
        """Its live processes other than the main one (daemons it forked included)."""
        ...

    def members(self) -> list[int] | None:
        """Every process of its run, the main one included, where its cgroup lists them; else None."""
        ...

    def close(self) -> None: ...


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
    def from_wait_status(cls, status: int | None, runtime: float, at: float | None = None) -> ExitInfo:
        """status None: the exit was seen but not its status (an adopted, untraced process)."""
        at = time.time() if at is None else at
        if status is None:
            return cls(None, None, at, runtime)
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status), at, runtime, os.WCOREDUMP(status))
        return cls(os.waitstatus_to_exitcode(status), None, at, runtime)

    def with_detail(self, detail: str | None) -> ExitInfo:
        return ExitInfo(self.code, self.signal, self.at, self.runtime, self.core_dumped, detail)

    def describe(self) -> str:
        if self.signal is not None:
            text = f"killed by {signal_name(self.signal)}" + (" (core dumped)" if self.core_dumped else "")
        elif self.code is None:
            text = "ended (exit status not visible: adopted and not traced)"
        else:
            text = f"exited {self.code}"
        return f"{text}, {self.detail}" if self.detail else text

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "signal": signal_name(self.signal) if self.signal else None,
                "at": self.at, "runtime_s": round(self.runtime, 3), "description": self.describe()}


class Program:
    """State and process of one instance."""

    def __init__(self, spec: ProgramSpec, name: str, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[Program], None] | None = None):
        self.spec = spec
        self.name = name
        self.clock = clock
        self.on_change = on_change                  # after every transition
        self.state = State.STOPPED
        self.reason = "not started yet"
        self.wanted = spec.autostart                # desired: up or down (runit's `want`)
        self.tracker = RestartTracker(spec.restart, clock=clock)
        self.proc: ChildHandle | None = None
        self.started_at: float | None = None        # monotonic
        self.started_wall: float | None = None
        self.starts = 0                             # every start, automatic or not
        self.restarts = 0                           # automatic restarts
        self.last_exit: ExitInfo | None = None
        self.next_start_at: float | None = None     # monotonic, in BACKOFF
        self.start_due = False                      # backoff over, waiting for dependencies
        self.notify_status: str | None = None       # last STATUS= the child sent
        self.last_signal: dict[str, Any] | None = None  # last signal delivered to it, with its sender
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=10)   # for `relayqctl why`
        self.output_tail: deque[str] = deque(maxlen=20)                # its last output lines
        self.last_stop: dict[str, Any] | None = None  # evidence of how the last run ended
        self.stop_reason: str | None = None         # why the supervisor is stopping it
        self.stop_refused: str | None = None        # its stop failed (final save): it keeps running
        self.refused_start: str | None = None       # refused after start: FATAL once it has exited
        self.stopper: Cancellable | None = None     # the kind's stop in progress (SHUTDOWN SAVE)
        self.timer: Cancellable | None = None       # backoff delay, ready_after, stop timeout
        self.ready_check: Cancellable | None = None
        self.watchdog: Watchdog | None = None       # armed from READY (or the first ping)
        self.watch_handles: list[Cancellable] = []  # its timers and the kind's pinger
        self.fired: str | None = None               # the watchdog's cause, until the exit
        self.exited = asyncio.Event()               # set while no process runs
        self.exited.set()

    @property
    def base(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def protected(self) -> bool:
        """Foreign stop signals to it are suppressed (the guard)."""
        return self.spec.protect

    def respec(self, spec: ProgramSpec) -> None:
        """A reload kept this instance: the same settings, or only its program's numprocs changed."""
        self.spec = spec

    def _enter(self, state: State, reason: str) -> None:
        check_transition(self.state, state, self.name)
        old, self.state, self.reason = self.state, state, reason
        level = logging.WARNING if state in (State.FATAL, State.BACKOFF) else logging.INFO
        log.log(level, "%s: %s -> %s (%s)", self.name, old, state, reason)
        if self.on_change is not None:
            self.on_change(self)

    # --- timers ---------------------------------------------------------------------

    def set_timer(self, handle: Cancellable) -> None:
        self.cancel_timer()
        self.timer = handle

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def cancel_ready_check(self) -> None:
        if self.ready_check is not None:
            self.ready_check.cancel()
            self.ready_check = None

    def arm_watchdog(self, watchdog: Watchdog) -> None:
        self.watchdog = watchdog

    def watch(self, handle: Cancellable | None) -> None:
        """Keep a watchdog timer or pinger, cancelled when the run ends or is stopped."""
        if handle is not None:
            self.watch_handles.append(handle)

    def disarm_watchdog(self) -> None:
        for handle in self.watch_handles:
            handle.cancel()
        self.watch_handles = []
        self.watchdog = None

    def watchdog_fired(self, cause: str, timer: Cancellable) -> None:
        """Stuck or bloated: its watchdog signal is on its way; the exit will carry `cause`
        and count as a failure."""
        self.fired = cause
        self.disarm_watchdog()
        self.set_timer(timer)

    # --- what the arbiter decides ------------------------------------------------

    def want(self, up: bool) -> None:
        self.wanted = up
        if not up:
            self.start_due = False

    def revive(self, who: str) -> None:
        """An operator start: forget the failure streak and start window; FATAL/EXITED -> STOPPED."""
        self.wanted = True
        self.refused_start = None
        self.tracker.reset()
        if self.state in ENDED:
            self._enter(State.STOPPED, who)
        elif self.state == State.BACKOFF:
            self.cancel_timer()
            self.start_due = True

    def note_waiting(self, why: str) -> bool:
        """STOPPED/BACKOFF waiting for dependencies: the reason shown; True if it changed."""
        if self.reason == why:
            return False
        self.reason = why
        return True

    def started(self, proc: ChildHandle, ready_check: Cancellable, why: str | None = None) -> None:
        """STOPPED/BACKOFF -> STARTING: its process exists; `ready_check` will say when it is ready."""
        self.cancel_timer()
        self.ready_check = ready_check
        self.start_due = False
        self.next_start_at = None
        self.proc = proc
        self.started_at, self.started_wall = self.clock(), time.time()
        self.starts += 1
        self.exited.clear()
        self.tracker.record_start()
        self._enter(State.STARTING, why or f"pid {proc.pid}")

    def ready(self, why: str) -> None:
        """STARTING -> RUNNING."""
        self.cancel_timer()
        self.cancel_ready_check()
        self._enter(State.RUNNING, why)

    def stopping(self, reason: str, method: str, timer: Cancellable | None) -> None:
        """STARTING/RUNNING -> STOPPING: asked to exit by `method` (SIGTERM, SHUTDOWN SAVE)."""
        self.stop_reason = reason
        self.stop_refused = None
        self.cancel_ready_check()
        self.disarm_watchdog()
        if timer is not None:
            self.set_timer(timer)
        self._enter(State.STOPPING, f"{reason}: {method} to pid {self.pid}")

    def stop_began(self, stopper: Cancellable | None) -> None:
        self.stopper = stopper

    def stop_blocked(self, cause: str, reason: str) -> None:
        """STOPPING, but its stop was refused (its final save failed): it keeps running."""
        self.stop_refused = cause
        self.reason = reason
        log.error("%s: %s", self.name, reason)
        if self.on_change is not None:
            self.on_change(self)

    def stop_retried(self, reason: str) -> None:
        self.stop_refused = None
        self.reason = reason
        if self.on_change is not None:
            self.on_change(self)

    def refused(self, reason: str) -> None:
        """It runs but must not be used: it is stopped, then FATAL with this reason."""
        self.refused_start = reason

    def stop_escalated(self, note: str) -> None:
        self.timer = None
        self.stop_refused = None
        self.stop_reason = f"{self.stop_reason}; {note}"

    def stopped(self, reason: str) -> None:
        """Not running and not to be restarted (STOPPING done, or a stop while not running)."""
        self.cancel_timer()
        self.start_due = False
        self._enter(State.STOPPED, reason)

    def run_ended(self, info: ExitInfo, sender: dict[str, Any] | None, event: dict[str, Any]) -> None:
        """Its process was reaped: keep the evidence, forget the process (no state change yet)."""
        self.last_exit = info
        self.last_signal = None
        self.last_stop = {"exit": event, "description": info.describe(), "sender": sender,
                          "events": list(self.recent_events), "output_tail": list(self.output_tail)}
        if self.proc is not None:
            self.proc.close()
        self.proc = None
        self.fired = None
        if self.stopper is not None:
            self.stopper.cancel()
            self.stopper = None
        self.stop_refused = None
        self.cancel_ready_check()
        self.disarm_watchdog()
        self.cancel_timer()
        self.exited.set()

    def backing_off(self, reason: str, delay: float | None, timer: Cancellable | None) -> None:
        """-> BACKOFF: restart after `delay`, or at once when delay is None (a stable run)."""
        if delay is None:
            self.restarts += 1
            self.start_due = True
            self.next_start_at = None
        else:
            self.next_start_at = self.clock() + delay
            if timer is not None:
                self.set_timer(timer)
        self._enter(State.BACKOFF, reason)

    def backoff_over(self) -> bool:
        """The delay passed: True if it is now due to start."""
        self.timer = None
        if self.state == State.BACKOFF and self.wanted:
            self.start_due = True
            self.restarts += 1
            return True
        return False

    def ended(self, reason: str) -> None:
        """-> EXITED: its restart policy says not to restart."""
        self._enter(State.EXITED, reason)

    def gave_up(self, reason: str) -> None:
        """-> FATAL, until an operator starts it again."""
        self.cancel_timer()
        self.start_due = False
        self._enter(State.FATAL, reason)

    # --- what the child tells --------------------------------------------------------

    def signalled(self, record: dict[str, Any]) -> None:
        """A signal reached it (the tap saw it): kept to attribute its exit."""
        self.last_signal = record

    def remember(self, event: dict[str, Any]) -> None:
        """An audit event about it (a signal, a denied command): evidence for `why`."""
        self.recent_events.append(event)

    def remember_output(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self.output_tail.append(line[:300])

    def set_notify_status(self, text: str) -> None:
        self.notify_status = text

    # --- reading ---------------------------------------------------------------------

    def uptime(self) -> float | None:
        if self.state in ALIVE and self.started_at is not None:
            return self.clock() - self.started_at
        return None

    def status(self) -> dict[str, Any]:
        next_in = None
        if self.state == State.BACKOFF and self.next_start_at is not None:
            next_in = max(0.0, round(self.next_start_at - self.clock(), 3))
        up = self.uptime()
        reason = self.reason
        if next_in is not None:     # live, not the text frozen at the exit
            reason = f"next start in {next_in:.1f}s, {self.tracker.failures_text()}"
            if self.last_exit is not None:
                reason += f"; last: {self.last_exit.describe()}"
        return {
            "name": self.name, "program": self.base, "state": str(self.state), "pid": self.pid,
            "uptime_s": round(up, 3) if up is not None else None,
            "started_at": self.started_wall, "restarts": self.restarts,
            "last_exit": self.last_exit.to_dict() if self.last_exit else None,
            "next_start_in_s": next_in, "reason": reason, "wanted": self.wanted,
            "streak": self.tracker.streak, "notify_status": self.notify_status,
            "user": run_as_name(self.spec.privileges),
            "descendants": self.proc.descendants() if self.proc is not None and self.state in ALIVE else [],
        }
