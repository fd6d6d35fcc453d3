"""The one escaping rule for human-readable lines."""
from __future__ import annotations

import os
import unicodedata

import pytest

from relayq_supervisor.printable import escape


@pytest.mark.parametrize("raw, shown", [
    ("python3 monitor.py", "python3 monitor.py"),
    ("x\n<2>FORGED: data lost", "x\\n<2>FORGED: data lost"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("a\rb\tc\x00d\x7f", "a\\rb\\tc\\x00d\\x7f"),
    ("csi\x9b", "csi\\x9b"),
    ("line\u2028sep", "line\\u2028sep"),
    ("evil\u202egnp.exe", "evil\\u202egnp.exe"),
    ("Grüße 東京", "Grüße 東京"),
    ("C:\\path", "C:\\path"),
])
def test_escape(raw, shown):
    assert escape(raw) == shown


def test_bytes_that_were_not_utf8_show_as_bytes_and_can_be_printed():
    raw = os.fsdecode(b"name\xff\xfe")          # what psutil and os give for such argv
    shown = escape(raw)
    assert shown == "name\\xff\\xfe"
    shown.encode("utf-8")                       # no lone surrogate left to crash a writer


def test_one_line_always():
    text = "".join(chr(c) for c in range(0x0, 0x3000))
    shown = escape(text)
    assert len(shown.splitlines()) == 1         # str.splitlines knows every line break Unicode has
    assert not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in shown)
