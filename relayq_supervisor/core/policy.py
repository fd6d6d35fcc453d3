"""Pure restart rules: what to do when a supervised program exits on its own.

No I/O and no OS calls: the clock and the random source are injected, so every
decision is reproducible in tests. The policy is a config.RestartPolicy, already
validated by config/program.py.

The rules (systemd's Restart=/StartLimitBurst= and OTP's restart intensity):
- "always" restarts; "on-failure" restarts unless the run exited 0 (death by any
  signal is a failure: this supervisor did not order it); "never" does not.
- A run that lasted at least `stable_after` resets the failure streak and restarts
  at once; otherwise the streak grows and the next start waits
  min(backoff_initial * backoff_factor**(streak-1), backoff_max), +/- jitter.
- More than `start_limit_burst` starts within `start_limit_interval` (a sliding
  window, counting the planned start) makes the program FATAL until an operator
  starts it again. `start_limit_burst = 0` means no start limit: it is never given
  up on (Redis' default: every worker waits on it), and from FLAPPING_STREAK failures
  in a row each decision says it is flapping, so that it is loud, not silent.
"""
from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from relayq_supervisor.config.model import RestartPolicy

RESTART = "restart"
BACKOFF = "backoff"
EXIT = "exit"
FATAL = "fatal"

# Consecutive failed runs from which a program without a start limit counts as flapping.
FLAPPING_STREAK = 3


@dataclass(frozen=True)
class Decision:
    """What the supervisor should do about an exit, and why (worded for the status line)."""
    action: str     # "restart" | "backoff" | "exit" | "fatal"
    delay: float    # seconds until the next start (0 unless action is "backoff")
    streak: int     # consecutive unstable runs, counting this one
    reason: str
    flapping: bool = False  # no start limit and FLAPPING_STREAK or more failures in a row


def format_seconds(seconds: float) -> str:
    """60.0 -> '60s', 2.5 -> '2.5s' (no float noise like 0.30000000000000004s)."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


class RestartTracker:
    """Restart state of one program instance: failure streak and recent start times."""

    def __init__(self, policy: RestartPolicy, clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random):
        self.policy = policy
        self._clock = clock
        self._rng = rng
        self._streak = 0
        self._starts: deque[float] = deque()
        self._gave_up: str | None = None

    @property
    def streak(self) -> int:
        return self._streak

    @property
    def gave_up(self) -> str | None:
        """The FATAL reason while the tracker has given up, else None."""
        return self._gave_up

    def starts_in_window(self, now: float | None = None) -> int:
        """Recorded starts in (now - start_limit_interval, now]."""
        if now is None:
            now = self._clock()
        low = now - self.policy.start_limit_interval
        return sum(1 for t in self._starts if low < t <= now)

    def may_start(self) -> str | None:
        """Before a boot/operator start: None if allowed, else why not.

        Refuses only while the tracker has given up (FATAL). An operator start calls
        reset() first; restarts were already checked against the window by on_exit,
        so re-checking here could only disagree because a timer fired a hair early.
        """
        return self._gave_up

    def record_start(self) -> None:
        """Called at every actual start: boot, restart after backoff, operator start."""
        now = self._clock()
        self._starts.append(now)
        # Planned starts are never earlier than now, so older entries can never
        # fall inside a window again.
        low = now - self.policy.start_limit_interval
        while self._starts and self._starts[0] <= low:
            self._starts.popleft()

    def on_exit(self, runtime: float, exit_code: int | None, signal: int | None,
                failed: bool = False) -> Decision:
        """Decide about a child that exited while it should have been running.

        runtime: seconds the run lasted; exit_code: its status if it exited, signal:
        the signal number if it was killed (one of the two is None). failed: the
        supervisor itself judged the run a failure (the watchdog fired): it counts as
        an unstable run for backoff and the start limit however long it lasted.
        """
        p = self.policy
        if p.policy == "never":
            return Decision(EXIT, 0.0, self._streak, "policy never")
        succeeded = signal is None and exit_code == 0 and not failed
        if p.policy == "on-failure" and succeeded:
            return Decision(EXIT, 0.0, self._streak, "exited 0 with policy on-failure")

        now = self._clock()
        if runtime >= p.stable_after and not failed:
            streak, delay = 0, 0.0
            action, reason = RESTART, f"stable run of {runtime:.1f}s: restarting now"
        else:
            streak = self._streak + 1
            delay = self._jittered(self.next_delay(streak))
            action = BACKOFF
            reason = f"next start in {delay:.1f}s, {self.failures_text(streak)}"

        self._streak = streak
        if self._exceeds_limit(now + delay):
            self._gave_up = self._limit_reason(self.starts_in_window(now))
            return Decision(FATAL, 0.0, streak, self._gave_up)
        flapping = p.start_limit_burst == 0 and streak >= FLAPPING_STREAK
        if flapping:
            reason = f"flapping: {reason}"
        return Decision(action, delay, streak, reason, flapping)

    def failures_text(self, streak: int | None = None) -> str:
        """`failure 2 of 5`, or `failure 7, no start limit`."""
        streak = self._streak if streak is None else streak
        limit = self.policy.start_limit_burst
        return f"failure {streak} of {limit}" if limit else f"failure {streak}, no start limit"

    def reset(self) -> None:
        """Operator start (e.g. of a FATAL program): forget the streak and the window."""
        self._streak = 0
        self._starts.clear()
        self._gave_up = None

    def next_delay(self, streak: int) -> float:
        """The un-jittered backoff before the start after `streak` consecutive failures."""
        p = self.policy
        if streak <= 0:
            return 0.0
        try:
            delay = p.backoff_initial * p.backoff_factor ** (streak - 1)
        except OverflowError:   # a long streak with a large factor: far beyond any cap
            return float(p.backoff_max)
        return float(min(delay, p.backoff_max))

    # --- internals -----------------------------------------------------------

    def _jittered(self, delay: float) -> float:
        u = (2.0 * self._rng() - 1.0) * self.policy.jitter   # uniform in [-jitter, +jitter]
        return max(0.0, delay * (1.0 + u))

    def _exceeds_limit(self, planned: float) -> bool:
        if self.policy.start_limit_burst == 0:     # no start limit
            return False
        # The planned start itself counts, so burst+1 starts in the window is too many.
        return self.starts_in_window(planned) + 1 > self.policy.start_limit_burst

    def _limit_reason(self, made: int) -> str:
        # the starts actually made: the refused one never happened
        plural = "" if made == 1 else "s"
        return f"gave up: {made} start{plural} in {format_seconds(self.policy.start_limit_interval)}"
