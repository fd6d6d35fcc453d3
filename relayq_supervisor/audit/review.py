"""Reading the audit log for people: `relayqctl audit` and `relayqctl why`.

The parts live in their own modules, and relayqctl imports those (a command pays only for
what it uses); this module re-exports their public names for other readers:
  reading        log_files, iter_events (EventStream), parse_line, follow
  filtering      parse_when, parse_timestamp, signal_number, EventFilter
  timeline_text  format_event, describe_sender
  late_answers   with_late_answers, join_attribution, attributions_by_denial
"""

from relayq_supervisor.audit.filtering import WHEN_FORMS, EventFilter, parse_timestamp, parse_when, signal_number
from relayq_supervisor.audit.late_answers import (
    LATE_WINDOW_S,
    attributions_by_denial,
    join_attribution,
    with_late_answers,
)
from relayq_supervisor.audit.reading import EventStream, follow, iter_events, log_files, parse_line
from relayq_supervisor.audit.timeline_text import describe_sender, format_event

__all__ = [
    "LATE_WINDOW_S", "WHEN_FORMS", "EventFilter", "EventStream", "attributions_by_denial", "describe_sender",
    "follow", "format_event", "iter_events", "join_attribution", "log_files", "parse_line", "parse_timestamp",
    "parse_when", "signal_number", "with_late_answers",
]
