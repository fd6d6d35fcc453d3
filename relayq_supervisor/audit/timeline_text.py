"""One line per audit event for a person (`relayqctl audit`, `why`), times in UTC."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from relayq_supervisor.audit.filtering import parse_timestamp
from relayq_supervisor.printable import escape
from relayq_supervisor.shell_text import command_line, cut, terminal_width
from relayq_supervisor.witness.identity import ProcessIdentity


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


def _format_redis_dir_given(e: dict[str, Any]) -> str:
    skipped = f"; {e.get('skipped')} with several links not given" if e.get("skipped") else ""
    return (f"{e.get('program')} data dir {e.get('path')} given to user {e.get('user')} (uid {e.get('uid')}): "
            f"{e.get('changed')} entries of {e.get('from_user')} changed owner ({e.get('why')}){skipped}")


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
    "redis_dir_given": _format_redis_dir_given,
}
