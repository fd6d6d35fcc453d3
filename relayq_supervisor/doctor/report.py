"""What `relayqctl doctor` found, as records and as text for people."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from relayq_supervisor.printable import escape

KIND_ORDER = ("systemd-unit", "systemd-timer", "cron", "supervisor", "process", "port", "open-file")


@dataclass(frozen=True)
class Rival:
    """Something other than this supervisor that could start, stop or kill Redis or a program."""
    kind: str              # "systemd-unit" | "systemd-timer" | "cron" | "process" | "port" | "open-file" | "supervisor"
    name: str
    path: str | None       # as seen on the node (a fake root's prefix removed)
    pid: int | None
    evidence: str          # `path:line: text` lines, or `pid N: cmdline` and what else was found
    state: str | None      # "enabled", "installed", "enabled, active", "running", "could not read" ...
    disable: str           # the exact command(s) that disable it
    reason: str = ""       # one phrase: why it is a rival (the audit log's rival_manager reason)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sort_key(rival: Rival) -> tuple[int, str, int]:
    return (_kind_index(rival.kind), rival.name, rival.pid or 0)


def format_report(rivals) -> str:
    """Readable text: one block per rival, then a summary line."""
    rivals = list(rivals)
    if not rivals:
        return "no rival managers found"
    blocks = []
    for rival in rivals:
        # fields quote other processes' command lines and files: escaped, one line each
        title = f"[{rival.kind}] {escape(rival.name)}"
        if rival.pid is not None and str(rival.pid) not in rival.name:
            title += f" (pid {rival.pid})"
        if rival.state:
            title += f": {escape(rival.state)}"
        lines = [title]
        if rival.reason:
            lines.append(f"  why:      {escape(rival.reason)}")
        if rival.path:
            lines.append(f"  path:     {escape(rival.path)}")
        evidence = [escape(line) for line in rival.evidence.split("\n")] or [""]
        lines.append(f"  evidence: {evidence[0]}")
        lines.extend(f"            {more}" for more in evidence[1:])
        lines.append(f"  disable:  {escape(rival.disable)}")
        blocks.append("\n".join(lines))
    counts: dict[str, int] = {}
    for rival in rivals:
        counts[rival.kind] = counts.get(rival.kind, 0) + 1
    unreadable = sum(1 for r in rivals if r.state == "could not read")
    summary = (f"{len(rivals)} rival manager{'s' if len(rivals) != 1 else ''} found ("
               + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: _kind_index(kv[0])))
               + ")" + (f", {unreadable} could not be read" if unreadable else "")
               + ": disable each with the command shown, then run `relayqctl doctor` again")
    return "\n\n".join(blocks) + "\n\n" + summary


def _kind_index(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
