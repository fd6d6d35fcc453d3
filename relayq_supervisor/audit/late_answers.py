"""Late answers: another node names a denied client's process after the denial was
written (cluster/whois.py); the timeline shows the denial with its answer."""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from typing import Any

from relayq_supervisor.audit.filtering import parse_timestamp

# A late answer comes within 30 s of its denial (cluster/whois.py's LATE_S); the rest is
# the two nodes' clocks and the stream's order
LATE_WINDOW_S = 60.0


def attributions_by_denial(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Late answers (`attribution` events) by the id of the denial they amend."""
    return {str(e["denial"]): e for e in events if e.get("event") == "attribution" and e.get("denial")}


def with_late_answers(events: Iterable[dict[str, Any]],
                      window_s: float = LATE_WINDOW_S) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(event, event as shown) in order, a denial shown with the late answer that amends it
    (`join_attribution`). One pass: events are held back while an answer may still come
    (`window_s` of event time), so memory is bounded by that window, not the log."""
    held: collections.deque[tuple[dict[str, Any], dict[str, Any], float | None]] = collections.deque()
    late: dict[str, dict[str, Any]] = {}
    for event in events:
        when = parse_timestamp(event["ts"]) if isinstance(event.get("ts"), str) else None
        now = when.timestamp() if when is not None else None
        while held and (now is None or held[0][2] is None or held[0][2] < now - window_s):
            original, _, _ = held.popleft()
            yield original, join_attribution(original, late)
        if event.get("event") == "attribution" and event.get("denial"):
            late[str(event["denial"])] = event
        held.append((event, event, now))
    for original, _, _ in held:
        yield original, join_attribution(original, late)


def join_attribution(event: dict[str, Any], late: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A denial with its late answer, if one came: `attributed` (the attribution event), and
    its sender once named (JSON readers find `sender.node` where they look for it)."""
    answer = late.get(str(event.get("id"))) if event.get("event") == "redis_denied" and event.get("id") else None
    if answer is None:
        return event
    joined = dict(event, attributed=answer)
    if joined.get("sender") is None and isinstance(answer.get("sender"), dict):
        joined["sender"] = answer["sender"]
        joined["attributed_late"] = True
    return joined
