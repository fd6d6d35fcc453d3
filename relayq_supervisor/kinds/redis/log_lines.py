"""Redis' own log lines as the journal should rank them.

Redis (server.c, serverLogRaw) writes `PID:ROLE DD Mon YYYY HH:MM:SS.mmm L message`, where
L is its verbosity: `.` debug, `-` verbose, `*` notice, `#` warning. Each becomes the
syslog priority of its journal entry (the line itself is kept as written), so that
`journalctl -p warning RELAYQ_PROGRAM=redis` shows Redis' warnings. Other lines (its
start-up banner) are info.
"""
from __future__ import annotations

import re

_LINE = re.compile(rb"\d+:[XCSM] \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d\.\d{3} ([.\-*#]) ")
_PRIORITY = {b".": 7, b"-": 6, b"*": 5, b"#": 4}      # debug, info, notice, warning
INFO = 6


def line_priority(line: bytes) -> tuple[int, bytes]:
    m = _LINE.match(line)
    return (_PRIORITY[m.group(1)] if m else INFO), line
