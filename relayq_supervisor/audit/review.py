"""Reading the audit log for people: `relayqctl audit` and `relayqctl why`.

Nothing here runs in the supervisor; `follow` polls and sleeps.
"""

from __future__ import annotations

import collections
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from relayq_supervisor.config.values import parse_signal
from relayq_supervisor.linux.files import FileIdentity
from relayq_supervisor.printable import escape
from relayq_supervisor.shell_text import command_line, cut, terminal_width
from relayq_supervisor.witness.identity import ProcessIdentity

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
WHEN_FORMS = "a relative age like 30s, 10m, 2h or 1d, or an ISO 8601 time like 2026-11-25T23:21:26Z"


def log_files(path: str | os.PathLike[str]) -> list[str]:
    """The log and its rotated files, oldest first: path.N ... path.1, path (only those that exist)."""
    path = os.fspath(path)
    directory, base = os.path.split(os.path.abspath(path))
    rotated: list[tuple[int, str]] = []
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for name in names:
        suffix = name[len(base) + 1 :]
        if name.startswith(base + ".") and suffix.isdigit():
            rotated.append((int(suffix), f"{path}.{suffix}"))
    files = [name for _, name in sorted(rotated, reverse=True)]
    if os.path.exists(path):
        files.append(path)
    return files


class EventStream:
    """Iterator over every event of a log and its rotated files, oldest first.

    A torn (unparseable) last line of a file is what a crash mid-write leaves:
    skipped and counted in `torn_lines`. An unparseable line elsewhere should
    not exist: skipped and counted in `corrupt_lines`, which a reader should
    show. A missing log yields nothing (check `files`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.files = log_files(self.path)
        self.corrupt_lines = 0
        self.torn_lines = 0
        self._events = self._read_all()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._events)

    def _read_all(self) -> Iterator[dict[str, Any]]:
        # Open everything first: a rotation while we read renames files, but
        # open descriptors keep pointing at the contents we listed.
        handles: list[BinaryIO] = []
        for name in self.files:
            try:
                handles.append(open(name, "rb"))
            except FileNotFoundError:
                continue
        try:
            for f in handles:
                yield from self._read_file(f)
        finally:
            for f in handles:
                f.close()

    def _read_file(self, f: BinaryIO) -> Iterator[dict[str, Any]]:
        previous: bytes | None = None
        for line in f:
            if previous is not None:
                yield from self._parse(previous, last=False)
            previous = line
        if previous is not None:
            yield from self._parse(previous, last=True)

    def _parse(self, line: bytes, last: bool) -> Iterator[dict[str, Any]]:
        if not line.strip():
            return
        event = parse_line(line)
        if event is not None:
            yield event
        elif last:
            self.torn_lines += 1
        else:
            self.corrupt_lines += 1


def iter_events(path: str | os.PathLike[str]) -> EventStream:
    """Every event of `path` and its rotated files, oldest first (see `EventStream` for counts)."""
    return EventStream(path)


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """One log line as an event dict, or None if it is not one."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


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


def format_event(event: dict[str, Any]) -> str:
    """One line for a person, times in UTC: ``23:21:26.721 redis pid 3613222 <- SIGTERM from ...``."""
    kind = event.get("event")
    formatter = _FORMATTERS.get(kind, _format_generic)
    line = formatter(event)
    held = event.get("aggregated")
    if isinstance(held, dict):      # folded together while the disk was full (audit/held.py)
        count = event.get("count")
        if kind not in _COUNTED and isinstance(count, int):
            line += f" x {count}"
        line += f" (aggregated until {_clock(held.get('until'))}: {held.get('why')})"
    # escaped: a sender's command line with a newline must not break the line in two
    return escape(f"{_clock(event.get('ts'))} {line}")


def _clock(ts: Any) -> str:
    when = parse_timestamp(ts) if isinstance(ts, str) else None
    if when is None:
        return str(ts) if ts else "??:??:??.???"
    return when.strftime("%H:%M:%S.") + f"{when.microsecond // 1000:03d}"


def describe_sender(sender: Any) -> str | None:
    """`ProcessIdentity.describe()` of a logged sender dict, or None if there is none."""
    if not isinstance(sender, dict) or "pid" not in sender:
        return None
    try:
        return ProcessIdentity.from_dict(sender).describe()
    except (TypeError, ValueError):
        return f"pid {sender.get('pid')}"


def _subject(program: Any, pid: Any) -> str:
    return f"{program} pid {pid}" if program else f"pid {pid}"


def _format_signal(e: dict[str, Any]) -> str:
    target = e["target"] if isinstance(e.get("target"), dict) else {}
    sender = describe_sender(e.get("sender"))
    if sender is None:
        sender = "the kernel" if e.get("code") == "SI_KERNEL" else "a sender not visible to the tap"
    line = f"{_subject(target.get('program'), target.get('pid'))} <- {e.get('signal')} from {sender}"
    if e.get("action") == "blocked":
        line += " BLOCKED"
    elif e.get("via") == "tracefs" and e.get("action") not in (None, "delivered"):
        line += f" ({e['action']})"
    count = e.get("count")
    if isinstance(count, int) and count > 0 and (count != 1 or e.get("since")):     # a burst (witness/bursts.py)
        line += f" x {count}"
        if e.get("since"):
            line += f" since {_clock(e['since'])}"
    if e.get("coalesced"):
        line += f" (+{e['coalesced']} coalesced: sent while one was pending, merged by the kernel)"
    if e.get("reason"):
        line += f" ({e['reason']})"
    return line


def _format_exit(e: dict[str, Any]) -> str:
    if e.get("signal"):
        how = f"killed by {e['signal']}"
        sender = describe_sender(e.get("sender"))
        why = f"from {sender}" if sender else e.get("note") or "sender not visible to the tap"
    else:
        how = f"status {e['code']}" if e.get("code") is not None else "status unknown"
        why = e.get("note")
    line = f"{_subject(e.get('program'), e.get('pid'))} exited: {how}"
    return f"{line} ({why})" if why else line


def _format_redis_denied(e: dict[str, Any]) -> str:
    head = f"{e.get('program') or 'redis'} DENIED {e.get('command')} by user {e.get('user')}"
    sender = describe_sender(e.get("sender"))
    late = e.get("attributed")
    if isinstance(late, dict):
        # named by another node after the denial was written (joined by join_attribution)
        line = f"{head} from {e.get('client_addr')} ({e.get('note')}; answered later: {_late_answer(late)})"
    elif sender and e["sender"].get("node"):
        # another node's process, as that node answered (cluster/whois.py)
        line = f"{head} from {_remote(e['sender'])} ({e.get('client_addr')})"
    else:
        line = f"{head} from {e.get('client_addr')}"
        if sender:
            line += f" ({sender}{_client_parents(e['sender'])})"
        elif e.get("note") and e.get("id"):         # asked another node: its answer, or why none
            line += f" ({e['note']})"
        elif e.get("client_name"):
            line += f" (client name {e['client_name']})"
    count = e.get("count")
    folded = e.get("folded") if isinstance(e.get("folded"), dict) else None
    if folded and isinstance(folded.get("clients"), list):
        # Redis folded the attempts into one entry and kept only the last client
        pids = ", ".join(str(c.get("pid")) for c in folded["clients"] if isinstance(c, dict))
        among = ": pids" if folded.get("exact", True) else " among pids"
        line += f" x{count}{among} {pids}; Redis recorded the last"
    elif isinstance(count, int) and count > 1:
        line += f" x{count}"
    return line


def _remote(sender: dict[str, Any]) -> str:
    return f"{sender.get('node')} {describe_sender(sender)}{_client_parents(sender)}"


def _late_answer(e: dict[str, Any]) -> str:
    sender = e.get("sender")
    if isinstance(sender, dict) and describe_sender(sender):
        return _remote(sender)
    return str(e.get("note") or "no process named")


def _format_attribution(e: dict[str, Any]) -> str:
    """A late answer about an earlier denial (joined to it by `join_attributions`)."""
    return (f"{e.get('program') or 'redis'} the DENIED {e.get('command')} from {e.get('client_addr')} "
            f"(denial {e.get('denial')}) was by {_late_answer(e)} (a late answer)")


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


def _client_parents(sender: dict[str, Any], width: int = 2) -> str:
    """A gone client's parents from the kernel trace (` <- pid 9118 sh`): the client alone
    (redis-cli) rarely says which script ran it."""
    if sender.get("alive") or not isinstance(sender.get("ancestry"), list):
        return ""
    parts = []
    for a in sender["ancestry"][:width]:
        if isinstance(a, dict):
            command = " ".join(str(c) for c in a.get("cmdline") or []) or a.get("exe") or a.get("comm") or "?"
            parts.append(f"pid {a.get('pid')} {command}")
    return "".join(f" <- {p}" for p in parts)


def _format_spawn(e: dict[str, Any]) -> str:
    # the whole command, quoted; cut only to fit a terminal (piped output keeps all of it)
    width = terminal_width()
    prefix = f"{_subject(e.get('program'), e.get('pid'))} started: "
    # 13: the `HH:MM:SS.mmm ` that format_event puts before it
    return prefix + cut(command_line(e.get("argv") or ()), width - len(prefix) - 13 if width else None)


def _format_backoff(e: dict[str, Any]) -> str:
    delay = e.get("delay_s")
    delay_text = f"{delay:g}s" if isinstance(delay, (int, float)) else f"{delay}s"
    return f"{e.get('program')} restarting in {delay_text} (failure streak {e.get('streak')})"


def _format_gave_up(e: dict[str, Any]) -> str:
    return f"{e.get('program')} GAVE UP: {e.get('reason')}"


def _format_tap_unavailable(e: dict[str, Any]) -> str:
    return f"signal tap unavailable: {e.get('reason')}"


def _format_lock_conflict(e: dict[str, Any]) -> str:
    return f"lock {e.get('path')} is held by {_value_text(e.get('owner'))}"


def _format_tamper(e: dict[str, Any]) -> str:
    return f"TAMPER {e.get('path')}: {e.get('what')}"


def _format_rival_manager(e: dict[str, Any]) -> str:
    return f"rival manager {e.get('path')}: {e.get('reason')}"


def _format_audit_gap(e: dict[str, Any]) -> str:
    return f"AUDIT GAP: {e.get('dropped')} events lost since {e.get('since')} ({e.get('reason')})"


def _format_leftovers_killed(e: dict[str, Any]) -> str:
    pids = " ".join(str(p) for p in e.get("pids") or [])
    return f"{_subject(e.get('program'), e.get('pid'))} left {e.get('count')} process(es) running: SIGKILL ({pids})"


def _format_generic(e: dict[str, Any]) -> str:
    fields = " ".join(f"{k}={_value_text(v)}" for k, v in e.items() if k not in ("ts", "host", "event"))
    return f"{e.get('event')}: {fields}" if fields else str(e.get("event"))


def _value_text(value: Any) -> str:
    if isinstance(value, dict):
        if "pid" in value and "alive" in value:
            return describe_sender(value) or ""
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return str(value)


_COUNTED = frozenset({"signal", "redis_denied"})     # their formatters show `count` themselves
_FORMATTERS: dict[Any, Callable[[dict[str, Any]], str]] = {
    "signal": _format_signal,
    "exit": _format_exit,
    "redis_denied": _format_redis_denied,
    "attribution": _format_attribution,
    "spawn": _format_spawn,
    "backoff": _format_backoff,
    "gave_up": _format_gave_up,
    "tap_unavailable": _format_tap_unavailable,
    "lock_conflict": _format_lock_conflict,
    "tamper": _format_tamper,
    "rival_manager": _format_rival_manager,
    "audit_gap": _format_audit_gap,
    "leftovers_killed": _format_leftovers_killed,
}


def follow(
    path: str | os.PathLike[str],
    poll: float = 0.5,
    *,
    from_start: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield events as they are appended to `path`, like ``tail -F``.

    The file is opened (and positioned at its end unless `from_start`) when
    this is called, so nothing written after the call is missed. Rotation is
    followed: the old file is read to its end, then the new one from its
    start. `stop` is checked on every idle poll; return True to end.
    """
    path = os.fspath(path)
    f = _open_log(path)
    if f is not None and not from_start:
        f.seek(0, os.SEEK_END)
    return _follow(path, f, poll, stop)


def _follow(
    path: str, f: BinaryIO | None, poll: float, stop: Callable[[], bool] | None
) -> Iterator[dict[str, Any]]:
    partial = b""
    try:
        while True:
            if f is None:
                f = _open_log(path)  # not there yet, or between rename and re-create
                partial = b""
            if f is not None:
                chunk = f.read()
                if chunk:
                    *lines, partial = (partial + chunk).split(b"\n")
                    for line in lines:
                        event = parse_line(line) if line.strip() else None
                        if event is not None:
                            yield event
                    continue
                if not FileIdentity.of_fd(f.fileno()).still_at(path):
                    f.close()  # fully read above; what is left in `partial` was torn
                    f = None
                    continue
                if f.tell() > os.fstat(f.fileno()).st_size:
                    f.seek(0)  # truncated in place (copytruncate)
                    partial = b""
                    continue
            if stop is not None and stop():
                return
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()


def _open_log(path: str) -> BinaryIO | None:
    try:
        return open(path, "rb")
    except OSError:
        return None

