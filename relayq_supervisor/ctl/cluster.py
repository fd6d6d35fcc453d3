"""The cluster view from its Redis ([cluster] in the local config): `status --cluster`,
`audit --cluster`; `why --node` uses `cluster_view` (ctl/why.py)."""
from __future__ import annotations

import json
import sys
import time

from relayq_supervisor.audit.late_answers import with_late_answers
from relayq_supervisor.audit.timeline_text import format_event
from relayq_supervisor.cluster.link import ClusterUnreachable
from relayq_supervisor.cluster.view import ClusterView, exit_status, node_line
from relayq_supervisor.config import default_config_path, load_config
from relayq_supervisor.control.protocol import EXIT_OK, EXIT_USAGE
from relayq_supervisor.ctl.audit import audit_filter
from relayq_supervisor.ctl.display import format_duration, print_programs, say, use_colour
from relayq_supervisor.printable import escape
from relayq_supervisor.shell_text import terminal_width


def cluster_view(args):
    return ClusterView(load_config(args.config or default_config_path(), ground=False))


def cluster_status(args) -> int:
    """`status --cluster`: every node's programs, from the cluster's Redis."""
    view = cluster_view(args)
    if not args.watch:
        result = view.status()
        if args.json:
            print(json.dumps({"nodes": result["nodes"]}, indent=2, default=str))
        else:
            print_cluster(result, terminal_width())
        return exit_status(result)
    tty = sys.stdout.isatty()
    try:
        while True:     # as `status --watch`: an unreachable Redis is said and retried
            began = time.monotonic()
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")
            print(time.strftime("%H:%M:%S") + "  every 1s, Ctrl-C to stop")
            try:
                print_cluster(view.status(), terminal_width())
            except ClusterUnreachable as e:
                say(f"relayqctl: {e}; retrying")
            sys.stdout.flush()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
    except KeyboardInterrupt:
        return EXIT_OK


def print_cluster(result: dict, width: int | None = None) -> None:
    colour = use_colour()
    say(f"cluster Redis {result['redis']}: {len(result['nodes'])} node(s)")
    for node in result["nodes"]:
        say(node_line(node, format_duration), width)
        for note in (node.get("supervisor") or {}).get("notes", []):
            say(f"    {note}", width)
        live = not node["stale"] and not node.get("shut_down")
        print_programs(node.get("programs") or [], colour, "    ", node["seen_s_ago"] if live else 0.0, width)


def cluster_audit(args) -> int:
    """`audit --cluster`: the merged timeline of every node, each line prefixed with its node."""
    try:
        wanted = audit_filter(args)
    except ValueError as e:
        print(f"relayqctl audit: {e}", file=sys.stderr)
        return EXIT_USAGE
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
