"""The cluster view from its Redis ([cluster] in the local config): `status --cluster`;
`audit --cluster` (ctl/audit.py) and `why --node` (ctl/why.py) read it with `cluster_view`."""
from __future__ import annotations

import json
import sys
import time

from relayq_supervisor.cluster.link import ClusterUnreachable
from relayq_supervisor.cluster.view import ClusterView, exit_status, node_line
from relayq_supervisor.config import default_config_path, load_config
from relayq_supervisor.control.protocol import EXIT_OK
from relayq_supervisor.ctl.display import format_duration, print_programs, say, use_colour
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
