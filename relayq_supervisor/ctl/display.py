"""How relayqctl prints: one escaped line, durations, the program table, colours."""
from __future__ import annotations

import json
import os
import sys

from relayq_supervisor.printable import escape
from relayq_supervisor.shell_text import cut


def say(line: str, width: int | None = None) -> None:
    """Print one human-readable line: text from other processes in it (argv, comm,
    a child's output) is escaped so it cannot break or recolour the line; with `width`
    (a terminal's), cut to fit it."""
    print(cut(escape(line), width))


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d {h}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def describe_program(p: dict) -> str:
    """The last column: why it is in this state, and how its last run ended."""
    parts = []
    if p["state"] in ("BACKOFF", "FATAL", "EXITED", "STOPPED", "STARTING", "STOPPING") and p.get("reason"):
        parts.append(p["reason"])
    if p.get("descendants"):
        parts.append(f"+{len(p['descendants'])} descendant{'s' if len(p['descendants']) != 1 else ''}")
    if p.get("last_exit") and p["state"] in ("RUNNING", "STARTING"):
        parts.append(f"last: {p['last_exit']['description']}")
    return "; ".join(parts)


# systemctl's habit: green for running, red for given up, yellow for on the way somewhere
STATE_COLOURS = {"RUNNING": "32", "STARTING": "33", "STOPPING": "33", "BACKOFF": "33;1", "FATAL": "31;1",
                 "EXITED": "31", "STOPPED": "2"}


def use_colour(stream=None) -> bool:
    """On a terminal only, never with NO_COLOR set (no-color.org) or TERM=dumb."""
    stream = stream or sys.stdout
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def print_status(status: dict, colour: bool = False, width: int | None = None) -> None:
    sup = status["supervisor"]
    redis = f"{sup.get('redis_binary')} {sup.get('redis_version')}" if sup.get("redis_binary") else \
        f"the cluster's at {sup['cluster']['redis']}" if sup.get("cluster") else "no redis"
    say(f"relayq-supervisor pid {sup['pid']}, up {format_duration(sup['uptime_s'])}, "
        f"config {sup['config']}, redis {redis}")
    for note in sup.get("notes", []):
        say(f"  {note}", width)
    print_programs(status["programs"], colour, width=width)


def print_programs(programs: list[dict], colour: bool, indent: str = "", aged: float = 0.0,
                   width: int | None = None) -> None:
    """The program table; `aged`: seconds since the status was taken (the cluster view's).
    With `width` (a terminal's) the DETAIL column is cut to fit: a reason can quote a
    sender's whole command line (kilobytes of it); `--json` keeps all of it."""
    rows: list[tuple[str, ...]] = [("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "DETAIL")]
    for p in programs:     # cells escaped before widths are measured
        uptime = p["uptime_s"] + aged if p["uptime_s"] is not None else None
        rows.append(tuple(escape(cell) for cell in (
            p["name"], p["state"], str(p["pid"] or "-"), format_duration(uptime),
            str(p["restarts"]), describe_program(p))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    detail_width = max(width - len(indent) - sum(widths) - 2 * 5, 20) if width else None
    for n, r in enumerate(rows):
        cells = [r[i].ljust(widths[i]) for i in range(5)]
        if colour and n and r[1] in STATE_COLOURS:     # padded first, so the columns stay aligned
            cells[1] = f"\x1b[{STATE_COLOURS[r[1]]}m{cells[1]}\x1b[0m"
        print(indent + "  ".join(cells) + "  " + cut(r[5], detail_width))


def show(result: dict, as_json: bool, printer) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        printer(result)


def outcome_line(o: dict) -> str:
    """`worker:1: BACKOFF (pid 813 died during the start: killed by SIGKILL, from pid 4412 ...)`"""
    return f"{o['name']}: {o['state']}" + (f" ({o['detail']})" if o.get("detail") else "")
