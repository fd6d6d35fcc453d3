"""`status --cluster`: every node's programs. Asked of this node's supervisor first
(`cluster-status` on its control socket: it reads the cluster's Redis on its own
connection, as systemctl asks PID 1), else read from the cluster's Redis here ([cluster] in
the local config; redis-py, imported only then, is most of this command's time). One
printer for both. `why --node` (ctl/why.py) does the same with `cluster-why`; `audit
--cluster` (ctl/audit.py) reads the Redis here, with `cluster_view` (a timeline of up to a
million events, or --follow, is no one-line reply)."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from relayq_supervisor.cluster.layout import STALE_INTERVALS, ClusterUnreachable
from relayq_supervisor.config import default_config_path, load_config, load_supervisor_section
from relayq_supervisor.control.protocol import EXIT_NOT_RUNNING, EXIT_OK, EXIT_UNKNOWN, Refused
from relayq_supervisor.ctl.client import call, checked
from relayq_supervisor.ctl.display import format_duration, print_programs, say, use_colour
from relayq_supervisor.errors import RelayqError
from relayq_supervisor.shell_text import terminal_width

# the supervisor answers within node/clustering.py's ANSWER_TIMEOUT_S (1.5 s), or says why not
ASK_TIMEOUT_S = 2.5


def cluster_view(args):
    from relayq_supervisor.cluster.view import ClusterView  # redis-py
    return ClusterView(load_config(args.config or default_config_path(), ground=False))


def supervisor_socket(args: Any) -> str:
    if args.socket:
        return str(args.socket)
    return load_supervisor_section(os.path.abspath(args.config or default_config_path())).control_socket


def ask_supervisor(args: Any, cmd: str, **request: Any) -> dict[str, Any] | None:
    """This node's supervisor's answer to a read of the cluster view, or None (said with
    --verbose) when none answers or it cannot: no supervisor, one without [cluster] or
    without this command, its cluster Redis silent. An unknown node or program is an
    answer (exit 4), the same as relayqctl's own read would give."""
    try:
        result = checked(call(supervisor_socket(args), cmd, ASK_TIMEOUT_S, **request))
        if isinstance(result, dict):
            return result
        problem = "a reply that is not an object"
    except KeyError:
        problem = "a reply without its result"
    except Refused as e:
        if e.code == EXIT_UNKNOWN:
            raise
        problem = str(e)
    except RelayqError as e:
        problem = str(e)
    if args.verbose:
        print(f"relayqctl: the supervisor did not answer {cmd} ({problem}); reading the cluster's Redis "
              "from here", file=sys.stderr)
    return None


class ClusterStatus:
    """The cluster's status: from the supervisor when it answers, else from Redis here."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.view: Any = None

    def read(self) -> dict[str, Any]:
        result = ask_supervisor(self.args, "cluster-status")
        if result is not None and isinstance(result.get("nodes"), list) and isinstance(result.get("redis"), str):
            return result
        if self.view is None:
            self.view = cluster_view(self.args)
        status: dict[str, Any] = self.view.status()
        return status


def cluster_status(args) -> int:
    """`status --cluster`: every node's programs."""
    source = ClusterStatus(args)
    if not args.watch:
        result = source.read()
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
                print_cluster(source.read(), terminal_width())
            except ClusterUnreachable as e:
                say(f"relayqctl: {e}; retrying")
            sys.stdout.flush()
            time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
    except KeyboardInterrupt:
        return EXIT_OK


def exit_status(result: dict[str, Any]) -> int:
    """0: every program RUNNING on every live node; 3: something is not, or a node is stale."""
    for node in result["nodes"]:
        if node["stale"] or node.get("shut_down"):
            return EXIT_NOT_RUNNING
        if any(p.get("state") != "RUNNING" for p in node.get("programs") or ()):
            return EXIT_NOT_RUNNING
    return EXIT_OK


def node_line(node: dict[str, Any]) -> str:
    sup = node.get("supervisor") or {}
    seen = f"seen {node['seen_s_ago']:.1f}s ago"
    if node.get("shut_down"):
        state = "SHUT DOWN"
    elif node["stale"]:
        state = f"STALE (silent over {STALE_INTERVALS} heartbeats of {node.get('heartbeat_interval')}s)"
    else:
        state = "live"
    return (f"node {node['node']} ({node.get('host')}): {state}, {seen}; supervisor pid {node.get('pid')} "
            f"{node.get('version')}, up {format_duration(sup.get('uptime_s'))}")


def print_cluster(result: dict, width: int | None = None) -> None:
    colour = use_colour()
    say(f"cluster Redis {result['redis']}: {len(result['nodes'])} node(s)")
    for node in result["nodes"]:
        say(node_line(node), width)
        for note in (node.get("supervisor") or {}).get("notes", []):
            say(f"    {note}", width)
        live = not node["stale"] and not node.get("shut_down")
        print_programs(node.get("programs") or [], colour, "    ", node["seen_s_ago"] if live else 0.0, width)
