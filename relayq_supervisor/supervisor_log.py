"""The supervisor's own log lines: one per event, to stderr or the journal."""
from __future__ import annotations

import logging
import sys

from relayq_supervisor.core.journal import INFO, PRIORITY, JournalSink, SupervisorJournal
from relayq_supervisor.linux.journal import stderr_is_journal
from relayq_supervisor.printable import escape

ROOT_LOGGER = "relayq_supervisor"


class JournalFormatter(logging.Formatter):
    """One line per event, `module: message`: `<N>` priority prefixes when stderr is
    journald's stream (JOURNAL_STREAM names it), else a timestamp; never colour."""

    def __init__(self, journal: bool):
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        # escaped whole: a sender's argv or a child's output quoted in a message must not
        # start a journal entry of its own (`\n<2>FORGED`); tracebacks below are ours
        msg = escape(f"{record.name.removeprefix(ROOT_LOGGER + '.')}: {record.getMessage()}")
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        if self.journal:
            return f"<{PRIORITY.get(record.levelno, INFO)}>{msg}"
        stamp = self.formatTime(record, "%Y-%m-%d %H:%M:%S") + f".{int(record.msecs):03d}"
        level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        return f"{stamp} {level}{msg}"


def setup_logging(verbose: bool = False, target: str = "auto") -> None:
    """Our lines to stderr, or to the journal by its native protocol (see core/journal.py):
    each with its priority, and a line the journal does not take to stderr after all."""
    on_stream = stderr_is_journal()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JournalFormatter(on_stream))
    handler: logging.Handler = stderr
    if target == "journal" or (target == "auto" and on_stream):
        handler = SupervisorJournal(JournalSink(), ROOT_LOGGER, stderr)
    root = logging.getLogger(ROOT_LOGGER)
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
