"""`relayqctl audit`: this node's audit log as a timeline (rotated files too, --follow), or
(`--cluster`) every node's, from the cluster's Redis."""
from __future__ import annotations

import collections
import json
import sys
from datetime import UTC, datetime

from relayq_supervisor.audit.filtering import EventFilter, parse_when
from relayq_supervisor.audit.late_answers import with_late_answers
from relayq_supervisor.audit.reading import follow, iter_events
from relayq_supervisor.audit.timeline_text import format_event
from relayq_supervisor.config import default_config_path
from relayq_supervisor.control.protocol import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from relayq_supervisor.ctl.local import supervisor_section
from relayq_supervisor.printable import escape


def audit_filter(args) -> EventFilter:
    now = datetime.now(UTC)
    return EventFilter(program=args.program, signal=args.signal, sender=args.sender,
                       since=parse_when(args.since, now) if args.since else None,
                       until=parse_when(args.until, now) if args.until else None,
                       blocked_only=args.blocked)


def cluster_audit(args) -> int:
    """`audit --cluster`: the merged timeline of every node, each line prefixed with its node."""
    try:
        wanted = audit_filter(args)
    except ValueError as e:
        print(f"relayqctl audit: {e}", file=sys.stderr)
        return EXIT_USAGE
    from relayq_supervisor.ctl.cluster import cluster_view  # redis-py: imported for --cluster only
    view = cluster_view(args)

    def emit(event: dict) -> None:
        if (args.node is None or event["node"] == args.node) and wanted.matches(event):
            print(json.dumps(event, default=str) if args.json else f"{escape(event['node'])} {format_event(event)}")

    last = view.last_id()       # history up to here, then what comes after: no gap, no repeat
    for _, shown in with_late_answers(view.history(wanted.since, last)):
        emit(shown)
    if args.follow:
        sys.stdout.flush()
        for event in view.follow(last):
            emit(event)
            sys.stdout.flush()
    return EXIT_OK


def audit_timeline(args) -> int:
    path = args.file or supervisor_section(args.config or default_config_path())[0].audit_log
    try:
        wanted = audit_filter(args)
    except ValueError as e:
        print(f"relayqctl audit: {e}", file=sys.stderr)
        return EXIT_USAGE
    emit = (lambda e: print(json.dumps(e, default=str))) if args.json else (lambda e: print(format_event(e)))
    # follow from before the history is read, so nothing written meanwhile is lost;
    # what both see is shown once
    live = follow(path) if args.follow else None
    recent: collections.deque[str] = collections.deque(maxlen=200)
    stream = iter_events(path)
    # late answers from other nodes shown with the denials they amend
    for event, shown in with_late_answers(stream):
        recent.append(json.dumps(event, sort_keys=True, default=str))
        if wanted.matches(event):
            emit(shown)
    if not stream.files and not args.follow:
        print(f"relayqctl audit: {path}: no audit log yet", file=sys.stderr)
        return EXIT_FAILURE
    if stream.corrupt_lines:
        print(f"relayqctl audit: skipped {stream.corrupt_lines} unreadable line(s)", file=sys.stderr)
    if live is not None:
        sys.stdout.flush()
        seen = set(recent)
        for event in live:
            if seen and json.dumps(event, sort_keys=True, default=str) in seen:
                continue
            seen = set()        # past the overlap
            if wanted.matches(event):
                emit(event)
                sys.stdout.flush()
    return EXIT_OK
