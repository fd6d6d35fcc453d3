"""Signal storms: one audit event per (target, sender, signal) per second, with a count.

The tap stops at every delivery; recording each as its own event (with a fresh reading
of the sender's /proc) made a storm of 5000 SIGTERMs cost thousands of ~3 KB lines, and
kept the tracee waiting. Here the first signal of a quiet key is recorded at once (as
before: count 1); those that follow within `WINDOW_S` are only counted, and recorded as
one event when the window closes (``count``, ``since`` the first of them), naming the
sender read for the first. A window that counted something opens the next one, so a
storm gives one event per second per key; a quiet second ends it.

The kernel merges a standard signal sent while one is already pending (signal(7): "only
one instance of the signal is marked as pending"): the tap never sees it, but the kernel
witness does (signal_generate `res` already-pending). Those are counted as ``coalesced``
on the same key, so an event says both what was delivered and what the kernel merged.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

WINDOW_S = 1.0

Key = tuple[str | int, int | None, int]     # (target program (pid if none), sender pid or None, signo)


def wall_time(when: float | None) -> str | None:
    """The audit log's time format (``2026-11-25T23:21:26.721Z``) for an epoch time."""
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when)) + f".{int(when % 1 * 1000):03d}Z"


@dataclass
class Burst:
    key: Key
    opened: float                       # monotonic
    record: dict[str, Any] | None       # what the last event for this key said (sender, action, ...)
    count: int = 0                      # deliveries the tap saw, not yet recorded
    coalesced: int = 0                  # generations the kernel merged, not yet recorded
    since: float | None = None          # wall time of the first of them
    extra: dict[str, Any] = field(default_factory=dict)


class Bursts:
    """Open windows by key; `emit` gets a closed window that counted something."""

    def __init__(self, emit: Callable[[Burst], None], clock: Callable[[], float] = time.monotonic):
        self.emit = emit
        self.clock = clock
        self.open: dict[Key, Burst] = {}
        # no window closes before this (monotonic): never later than the oldest window's end,
        # since a window opened later ends later
        self.first_due = 0.0

    def join(self, key: Key, action: str) -> Burst | None:
        """A tap delivery: counted into the key's open window (returned), or None: record it
        alone, then `opened` it. A different action (the guard's verdict changed) closes it."""
        self.close_due()
        b = self.open.get(key)
        if b is None or b.record is None:
            return None
        if b.record.get("action") != action:
            self.close(b)
            return None
        b.count += 1
        if b.since is None:
            b.since = time.time()
        return b

    def opened(self, key: Key, record: dict[str, Any]) -> None:
        """The event just recorded alone for `key`: later ones within the window join it."""
        b = self.open.get(key)
        if b is None:
            self.open[key] = Burst(key, self.clock(), record)
        else:               # coalesced counts were waiting for it
            b.record = record

    def merged(self, key: Key, record: Callable[[], dict[str, Any]], n: int = 1) -> None:
        """The kernel merged `n` into a pending signal: counted on the key's window. `record`
        (naming the sender: /proc reads) is kept uncalled, for the window's event if no tap
        record comes to it (in a storm to a traced program one always does)."""
        self.close_due()
        b = self.open.get(key)
        if b is None:
            b = self.open[key] = Burst(key, self.clock(), None, extra={"kernel_record": record})
        b.coalesced += n
        if b.since is None:
            b.since = time.time()

    def close_due(self) -> None:
        now = self.clock()
        if now < self.first_due:
            return
        for b in [b for b in self.open.values() if now - b.opened >= WINDOW_S]:
            self.close(b)
            if b.record is not None and (b.count or b.coalesced):
                # a storm goes on: the next window counts without recording one alone first
                self.open[b.key] = Burst(b.key, now, b.record)
        self.first_due = min((b.opened for b in self.open.values()), default=now) + WINDOW_S

    def close(self, b: Burst) -> None:
        self.open.pop(b.key, None)
        if b.count or b.coalesced:
            self.emit(b)

    def close_all(self) -> None:
        for b in list(self.open.values()):
            self.close(b)

    @property
    def next_due(self) -> float | None:
        """Seconds until the oldest window closes; None when none is open."""
        if not self.open:
            return None
        return max(0.0, min(b.opened for b in self.open.values()) + WINDOW_S - self.clock())
