"""Commands shown to people as a shell would quote them (imports nothing of ours).

`shlex.join` quotes spaces and shell characters, so `--save ""` stays visible as an
argument; an argument with control characters (a newline, an escape sequence that
would repaint the terminal) is written in bash's `$'...'` form instead, so no
process can forge a line of our output through its argv.
"""
from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Iterable
from typing import TextIO

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def quote(arg: str) -> str:
    if arg.isprintable():
        return shlex.quote(arg)
    out = []
    for ch in arg:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "$'" + "".join(out) + "'"


def command_line(argv: Iterable[object]) -> str:
    """`redis-server --save '' --appendonly yes`: one line, every argument recoverable."""
    return " ".join(quote(str(a)) for a in argv)


def cut(text: str, width: int | None) -> str:
    """At most `width` characters (None: all), `...` marking the cut."""
    if width is None or len(text) <= width:
        return text
    return text[: max(0, width - 3)] + "..."


def terminal_width(stream: TextIO | None = None) -> int | None:
    """The terminal's columns when `stream` (stdout) is one, else None: piped output and
    `--json` keep every character; `COLUMNS` overrides, as for `ls`."""
    stream = stream or sys.stdout
    return shutil.get_terminal_size().columns if stream.isatty() else None
