"""Which events a person asked to see: times (`10m`, ISO 8601), signals, senders, programs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from relayq_supervisor.config.values import parse_signal

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
WHEN_FORMS = "a relative age like 30s, 10m, 2h or 1d, or an ISO 8601 time like 2026-11-25T23:21:26Z"


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A point in time from `10m`/`2h`/`30s`/`1d` (before `now`) or ISO 8601 (naive means UTC)."""
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = relative.groups()
        return now - timedelta(**{_UNITS[unit]: float(amount)})
    when = parse_timestamp(text)
    if when is None:
        raise ValueError(f"{text!r} is not a time: use {WHEN_FORMS}")
    return when


def parse_timestamp(text: str) -> datetime | None:
    """An ISO 8601 time as an aware UTC datetime, or None; naive times are taken as UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except (ValueError, TypeError, AttributeError):
        return None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def signal_number(text: str | int) -> int:
    """`SIGTERM`, `TERM`, `term` or `15` -> 15; ValueError naming the text otherwise."""
    return parse_signal(text)


@dataclass(frozen=True)
class EventFilter:
    """Which events a person asked to see; None (or False) means "any"."""

    program: str | None = None
    signal: str | None = None
    sender: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    blocked_only: bool = False

    def __post_init__(self) -> None:
        if self.signal is not None:
            signal_number(self.signal)  # reject an unknown name when the filter is built

    def matches(self, event: dict[str, Any]) -> bool:
        return (
            self._program_matches(event)
            and self._signal_matches(event)
            and self._sender_matches(event)
            and self._time_matches(event)
            and (not self.blocked_only or _is_blocked(event))
        )

    def _program_matches(self, event: dict[str, Any]) -> bool:
        if self.program is None:
            return True
        target = event.get("target")
        names = [event.get("program"), target.get("program") if isinstance(target, dict) else None]
        for name in names:
            if not isinstance(name, str):
                continue
            if name == self.program or (":" not in self.program and name.split(":", 1)[0] == self.program):
                return True
        return False

    def _signal_matches(self, event: dict[str, Any]) -> bool:
        if self.signal is None:
            return True
        wanted = signal_number(self.signal)
        signo = event.get("signo")
        if isinstance(signo, int):
            return signo == wanted
        name = event.get("signal")
        if not name:
            return False
        try:
            return signal_number(name) == wanted
        except ValueError:
            return False

    def _sender_matches(self, event: dict[str, Any]) -> bool:
        if self.sender is None:
            return True
        sender = event.get("sender")
        wanted = self.sender.strip()
        if wanted.isdigit():
            return isinstance(sender, dict) and sender.get("pid") == int(wanted)
        texts: list[str] = []
        if isinstance(sender, dict):
            texts += [sender.get(k) or "" for k in ("comm", "exe", "unit", "program")]
            texts.append(" ".join(sender.get("cmdline") or ()))
        if event.get("event") == "redis_denied":
            texts += [str(event.get("client_name") or ""), str(event.get("client_addr") or "")]
        needle = wanted.lower()
        return any(needle in text.lower() for text in texts)

    def _time_matches(self, event: dict[str, Any]) -> bool:
        if self.since is None and self.until is None:
            return True
        when = parse_timestamp(event.get("ts") or "")
        if when is None:
            return False
        if self.since is not None and when < _aware(self.since):
            return False
        if self.until is not None and when > _aware(self.until):
            return False
        return True


def _aware(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _is_blocked(event: dict[str, Any]) -> bool:
    return event.get("action") == "blocked" or event.get("event") == "redis_denied"
