"""One escaping rule for every human-readable line: text that came from another
process (argv, comm, exe, client names, ACL LOG fields, a child's output) must not
be able to start a line of its own, forge a journald priority (`\n<2>...`), move the
cursor or recolour a terminal. JSON output is never escaped: it stays exact.

Imports nothing of ours: the log formatter (cli), relayqctl's printers (ctl), the
audit timeline (audit/review) and the doctor's report all use it.
"""
from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Unicode's own line breaks and the bidirectional overrides that reorder what a
# reader sees ("Trojan source"); control characters (Cc) are found by category.
_INVISIBLE = {"\u2028", "\u2029", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def _escape_char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:        # a byte that was not UTF-8 (surrogateescape): show the byte
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every control character shown as an escape (`\\n`, `\\x1b`, `\\u2028`),
    so that it prints as exactly one line; printable text (any script) is unchanged."""
    if text.isprintable():              # the common case, and a fast one
        return text
    return "".join(_escape_char(c) if _needs_escape(c) else c for c in text)


def _needs_escape(c: str) -> bool:
    if c == " ":
        return False
    return c in _INVISIBLE or unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")
