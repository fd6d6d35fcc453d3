"""Reading `ACL LOG`: each denied attempt reported once, with the client that made it
(kinds/redis/health.py polls it; witness/socket_holder.py turns the client into a pid)."""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# How far two readings of one unchanged entry's last-update time may disagree: the
# estimate is `Redis' TIME, read in the same pipeline, - age-seconds` (both Redis' clock,
# age in ms), so it moves by Redis' rounding, not by how late our loop read the reply.
UPDATE_TIME_SLACK = 0.25
# ACL LOG shows 10 entries unless asked for more; Redis' default acllog-max-len is 128.
ACL_LOG_REQUEST = 1000


def parse_client_info(text: str | bytes) -> dict[str, str]:
    """"id=5 addr=127.0.0.1:51234 name=worker ..." -> {"id": "5", "addr": ..., ...}.

    Values stay strings. A client name may itself contain '=' (Redis allows it), so
    each field splits at its first '=' only."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    info: dict[str, str] = {}
    for word in (text or "").split():
        key, sep, value = word.partition("=")
        if sep:
            info[key] = value
    return info


@dataclass(frozen=True)
class Denial:
    """Attempts Redis refused to one client user since the last poll (one ACL LOG entry)."""

    command: str                 # the entry's object: "shutdown", "config|set" (7.0), a key, "AUTH"
    reason: str                  # command | key | channel | auth
    context: str                 # toplevel | multi | lua | script | module
    user: str
    client_addr: str | None
    client_laddr: str | None
    client_name: str | None
    count_new: int               # attempts not reported before
    count_total: int             # the entry's count (Redis folds repeats into one entry)
    age_s: float                 # since the entry's last update (the latest attempt)
    client_info: dict[str, str]  # of the latest client of the entry
    created_epoch: float | None = None  # the entry's timestamp-created (Redis 7.2+), seconds
    # its last attempt, wall clock: timestamp-last-updated (7.2+), else the reply's arrival
    # minus age-seconds (later than the truth by however long the reply waited for the loop)
    updated_epoch: float | None = None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _normalise_entry(entry: Any) -> dict[str, Any]:
    """One ACL LOG entry as redis-py returns it (a dict, str or bytes keys, maybe with
    client-info already parsed) or raw (a flat [key, value, ...] list) -> str keys."""
    pairs: Iterable[tuple[Any, Any]]
    if isinstance(entry, dict):
        pairs = entry.items()
    else:
        items = list(entry)
        pairs = zip(items[0::2], items[1::2], strict=False)
    out: dict[str, Any] = {}
    for key, value in pairs:
        key = _text(key)
        if key == "client-info":
            out[key] = ({_text(k): _text(v) for k, v in value.items()} if isinstance(value, dict)
                        else parse_client_info(value))
        elif key in ("count", "entry-id", "timestamp-created", "timestamp-last-updated"):
            out[key] = int(_text(value))
        elif key == "age-seconds":
            out[key] = float(_text(value))
        else:
            out[key] = _text(value)
    return out


@dataclass
class _Seen:
    """What the last poll saw of one ACL LOG entry."""

    count: int
    updated_at: float            # our clock at the reply minus age-seconds


class AclLogReader:
    """Turns successive `ACL LOG` replies into each denied attempt, reported once.

    Redis folds attempts of one (reason, context, object, username) made less than 60 s
    apart into one entry, bumping its count, replacing its client-info with the latest
    client's and moving it to the head. So among entries of one key (listed newest
    first) only the first can grow; older ones are frozen until evicted from the tail.
    Each poll lines the new entries of a key up against the old ones from the tail:
    entries in front of the alignment are new, the old head may have grown, the
    rest must be unchanged. An entry whose count went down, or that kept its count but
    was updated later than seen, was re-created (ACL LOG RESET): reported in full.
    Redis 7.2's entry-id + timestamp-created name an entry exactly and join the key.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple, list[_Seen]] = {}

    def new_denials(self, entries: list[Any], now: float | None = None, wall: float | None = None) -> list[Denial]:
        """The attempts in `entries` (the reply of ACL LOG, newest first) not reported
        before, oldest first. `now` is time.monotonic() when the reply arrived, `wall`
        time.time() then."""
        if now is None:
            now = time.monotonic()
        groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
        for order, raw in enumerate(entries or ()):
            entry = _normalise_entry(raw)
            key = (entry.get("reason", ""), entry.get("context", ""), entry.get("object", ""),
                   entry.get("username", ""), entry.get("entry-id"), entry.get("timestamp-created"))
            groups.setdefault(key, []).append((order, entry))

        found: list[tuple[float, int, Denial]] = []
        seen: dict[tuple, list[_Seen]] = {}
        for key, group in groups.items():
            current = [_Seen(e.get("count", 1), now - e.get("age-seconds", 0.0)) for _, e in group]
            previous = self._seen.get(key, [])
            grown = self._align(previous, current, exact=key[4] is not None)
            for i, ((order, entry), entry_seen) in enumerate(zip(group, current, strict=False)):
                if grown is None or i < grown:
                    count_new = entry_seen.count                    # a new entry
                elif i == grown:
                    count_new = entry_seen.count - previous[0].count
                else:
                    count_new = 0                                   # frozen, already reported
                if count_new > 0:
                    found.append((entry_seen.updated_at, -order, _denial(entry, count_new, wall)))
            seen[key] = current
        self._seen = seen
        found.sort(key=lambda t: (t[0], t[1]))
        return [d for _, _, d in found]

    @staticmethod
    def _align(previous: list[_Seen], current: list[_Seen], exact: bool) -> int | None:
        """Index in `current` of the entry that was `previous[0]` (the rest of
        `current` after it being previous[1:], unchanged), or None if no old entry
        survived. Eviction only takes from the tail; new entries only come in front."""
        for m in range(min(len(previous), len(current)), 0, -1):
            start = len(current) - m
            head_old, head_new = previous[0], current[start]
            if not _same_entry(head_old, head_new, exact, may_grow=True):
                continue
            if all(_same_entry(previous[j], current[start + j], exact, may_grow=False)
                   for j in range(1, m)):
                return start
        return None

    async def poll(self, conn) -> list[Denial]:
        """Run ACL LOG on `conn` (a redis.asyncio client logged in as the admin user)
        and return what is new. Redis errors (NOPERM, timeouts) propagate."""
        # The raw command, not conn.acl_log(): redis-py's parser of the reply splits
        # client-info at every '=', and a client name may contain one, so any client
        # could make the parsing (and thus this health check) fail.
        # TIME right after it, on the server, dates the reply by Redis' clock: our own clock
        # at the reply would be late by however long the loop took to read it (a loaded
        # node: over the slack, and an unchanged entry would be counted again).
        async with conn.pipeline(transaction=False) as pipe:
            pipe.execute_command("ACL", "LOG", str(ACL_LOG_REQUEST))
            pipe.execute_command("TIME")
            reply, server_time = await pipe.execute()
        return self.new_denials(reply, now=_seconds(server_time), wall=time.time())


def _seconds(reply: Any) -> float:
    """TIME's reply, [seconds, microseconds] (redis-py may have made it a tuple of ints)."""
    sec, usec = reply
    return int(sec) + int(usec) / 1e6


def _same_entry(old: _Seen, new: _Seen, exact: bool, may_grow: bool) -> bool:
    if new.count < old.count:
        return False                                    # re-created after a reset
    if exact:
        return may_grow or new.count == old.count
    if new.count > old.count:
        return may_grow
    # Same count: unchanged only if not updated after we saw it.
    return new.updated_at <= old.updated_at + UPDATE_TIME_SLACK


def _denial(entry: dict[str, Any], count_new: int, wall: float | None = None) -> Denial:
    info = entry.get("client-info") or {}
    return Denial(
        command=entry.get("object", ""), reason=entry.get("reason", ""),
        context=entry.get("context", ""), user=entry.get("username", ""),
        client_addr=info.get("addr") or None, client_laddr=info.get("laddr") or None,
        client_name=info.get("name") or None, count_new=count_new,
        count_total=entry.get("count", 1), age_s=entry.get("age-seconds", 0.0),
        client_info=dict(info),
        created_epoch=entry["timestamp-created"] / 1000 if "timestamp-created" in entry else None,
        updated_epoch=(entry["timestamp-last-updated"] / 1000 if "timestamp-last-updated" in entry
                       else wall - entry.get("age-seconds", 0.0) if wall is not None else None),
    )

