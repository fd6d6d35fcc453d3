"""Events held in memory while the audit log cannot be written (a full disk, an I/O
error): a bounded budget that degrades by aggregation before it drops anything.

Over budget, events alike (same kind, program, target, signal, action, sender) are
folded into the first of them, which gains a ``count`` and an ``aggregated`` note (the
time of the last one folded in); it keeps its place and its time, so the log stays in
time order. Only when that is not enough are the oldest dropped, into one ``audit_gap``
placeholder in their place (time of the first dropped), which later drops extend: a
little space freed at a time never fills the disk with one gap line per event.
"""
from __future__ import annotations

import collections
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

AGGREGATED_WHY = "held while the audit log could not be written"
GAP_REASON = "more events waited for the disk than the held-events budget allows; the oldest were dropped"
NEVER_AGGREGATED = frozenset({"audit_gap", "tamper", "lock_conflict", "gave_up", "rival_manager"})
LOW_WATER = 0.9         # after dropping, room for a tenth of the budget before the next drop


def occurrences(event: dict[str, Any]) -> int:
    """How many things one event stands for (`count`, 1 when absent)."""
    count = event.get("count")
    return count if isinstance(count, int) and not isinstance(count, bool) and count > 0 else 1


def aggregate_key(event: dict[str, Any]) -> tuple[Any, ...] | None:
    kind = event.get("event")
    if kind in NEVER_AGGREGATED:
        return None
    target: dict[str, Any] = event["target"] if isinstance(event.get("target"), dict) else {}
    sender: dict[str, Any] = event["sender"] if isinstance(event.get("sender"), dict) else {}
    parts = (kind, event.get("program"), target.get("program"), target.get("pid"), event.get("signal"),
             event.get("action"), event.get("code"), event.get("via"), sender.get("pid"))
    return tuple(p if isinstance(p, (str, int, float, bool, type(None))) else json.dumps(p, default=str)
                 for p in parts)


def fold(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """`into` standing for `other` too: a new dict (the original may be someone's evidence)."""
    out = dict(into)
    out["count"] = occurrences(into) + occurrences(other)
    if "coalesced" in into or "coalesced" in other:
        out["coalesced"] = int(into.get("coalesced") or 0) + int(other.get("coalesced") or 0)
    note = dict(into["aggregated"]) if isinstance(into.get("aggregated"), dict) else {"why": AGGREGATED_WHY}
    other_note: dict[str, Any] = other["aggregated"] if isinstance(other.get("aggregated"), dict) else {}
    note["until"] = other_note.get("until") or other.get("ts")
    out["aggregated"] = note
    return out


@dataclass
class Held:
    event: dict[str, Any]
    line: bytes
    gap: bool = False


class HeldEvents:
    """The queue `AuditLog` writes from, oldest first, within `max_events` and `max_bytes`."""

    def __init__(self, max_events: int, max_bytes: int, encode: Callable[[dict[str, Any]], bytes]):
        self.max_events = max(2, max_events)
        self.max_bytes = max_bytes
        self.encode = encode
        self.items: collections.deque[Held] = collections.deque()
        self.bytes = 0
        self.aggregated = 0         # events folded into another (since creation)
        self.dropped = 0            # events dropped into a gap (since creation)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def first_line(self) -> bytes:
        return self.items[0].line

    def pop_first(self) -> None:
        self.bytes -= len(self.items.popleft().line)

    def append(self, event: dict[str, Any], line: bytes) -> None:
        self.items.append(Held(event, line))
        self.bytes += len(line)
        if self.over(1.0):
            self.aggregate()
            if self.over(1.0):
                self.drop_oldest()

    def over(self, share: float) -> bool:
        return len(self.items) > self.max_events * share or self.bytes > self.max_bytes * share

    def aggregate(self) -> None:
        kept: list[Held] = []
        where: dict[tuple[Any, ...], int] = {}
        for h in self.items:
            key = None if h.gap else aggregate_key(h.event)
            if key is not None and key in where:
                first = kept[where[key]]
                first.event = fold(first.event, h.event)
                self.aggregated += 1
                continue
            if key is not None:
                where[key] = len(kept)
            kept.append(h)
        for h in kept:
            if "aggregated" in h.event:
                h.line = self.encode(h.event)
        self.items = collections.deque(kept)
        self.bytes = sum(len(h.line) for h in kept)

    def drop_oldest(self) -> None:
        gap = self.items.popleft() if self.items and self.items[0].gap else None
        if gap is None:
            first = self.items[0].event
            event = {"ts": first.get("ts"), "host": first.get("host") or socket.gethostname(), "event": "audit_gap",
                     "dropped": 0, "since": first.get("ts"), "until": first.get("ts"), "reason": GAP_REASON}
            gap = Held(event, b"", gap=True)
        else:
            self.bytes -= len(gap.line)
        while self.items and (self.over(LOW_WATER) or len(self.items) >= self.max_events):
            h = self.items.popleft()
            self.bytes -= len(h.line)
            n = occurrences(h.event) if not h.gap else int(h.event.get("dropped") or 0)
            gap.event["dropped"] += n
            gap.event["until"] = h.event.get("ts")
            self.dropped += n
        gap.line = self.encode(gap.event)
        self.items.appendleft(gap)
        self.bytes += len(gap.line)


@dataclass
class Outage:
    """One stretch of failed writes: reported once when it starts, once when it ends."""

    started: float
    aggregated_before: int
    dropped_before: int
    written: int = 0
    start_wall: float = field(default_factory=time.time)

    def resumed(self, path: str, held: HeldEvents) -> str:
        aggregated = held.aggregated - self.aggregated_before
        dropped = held.dropped - self.dropped_before
        return (f"audit log {path}: writing again after {time.monotonic() - self.started:.1f}s; "
                f"{self.written} held events written in order, {aggregated} aggregated into others, "
                f"{dropped} dropped" + (" (recorded as an audit_gap event)" if dropped else ""))
