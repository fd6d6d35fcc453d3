"""relayqctl's command line."""
from __future__ import annotations

import argparse

LOGS_DEFAULT_LINES = 20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relayqctl", description="Show and drive relayq-supervisor.")
    # -c/--socket/--timeout work before or after the subcommand (`relayqctl -c X reload`,
    # `relayqctl reload -c X`); SUPPRESS keeps a subcommand's absent option from hiding the other
    common = argparse.ArgumentParser(add_help=False)
    for parser_, default in ((parser, None), (common, argparse.SUPPRESS)):
        parser_.add_argument("-c", "--config", default=default,
                             help="config file (default: $RELAYQ_CONFIG, else ./config.toml)")
        parser_.add_argument("--socket", default=default, help="control socket path (instead of reading the config)")
        parser_.add_argument("--timeout", type=float, default=120.0 if default is None else default,
                             help="seconds to wait for the supervisor")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    p = sub.add_parser("status", parents=[common],
                       help="what runs, since when, how it last stopped (--cluster: every node, --watch: redraw)")
    p.add_argument("names", nargs="*", metavar="NAME", help="programs or instances (worker, worker:1); default all")
    p.add_argument("--json", action="store_true", help="the whole status as JSON (reasons uncut)")
    p.add_argument("--watch", "-w", action="store_true", help="redraw every second until interrupted")
    p.add_argument("--cluster", action="store_true",
                   help="every node of the cluster ([cluster]): asked of this node's supervisor, else read "
                        "from the cluster's Redis")
    p.add_argument("--verbose", action="store_true", help="with --cluster: say when the supervisor did not answer")
    for name, text in (("start", "start programs (and what they depend on)"), ("stop", "stop programs"),
                       ("restart", "stop then start programs")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("names", nargs="+", metavar="NAME", help="programs or instances (worker = all, worker:1 one)")
        p.add_argument("--no-wait", action="store_true", help="return at once")
        if name == "stop":
            p.add_argument("--with-dependents", action="store_true", help="stop what depends on them first")
            p.add_argument("--force", action="store_true",
                           help="SIGKILL now, without a save: for a Redis whose final save fails (data since "
                                "the last successful write to disk is lost)")
    sub.add_parser("shutdown", parents=[common], help="stop everything in order and exit")
    p = sub.add_parser("pid", parents=[common], help="the supervisor's pid, or a program's")
    p.add_argument("name", nargs="?", metavar="NAME", help="a program or instance (default: the supervisor)")
    sub.add_parser("reload", parents=[common], help="re-read the config, apply what changed")
    p = sub.add_parser("why", parents=[common],
                       help="the last stop of a program, with its evidence (--node: on another node)")
    p.add_argument("name", metavar="NAME", help="a program or instance (worker:1)")
    p.add_argument("--json", action="store_true", help="the evidence as JSON")
    p.add_argument("--node", help="a node of the cluster (asked of this node's supervisor, else read from the "
                                  "cluster's Redis)")
    p.add_argument("--verbose", action="store_true", help="with --node: say when the supervisor did not answer")
    p = sub.add_parser("doctor", parents=[common], help="find rival managers of Redis and the workers")
    p.add_argument("--root", help="look at this root instead of / (the config's doctor_root)")
    p.add_argument("--json", action="store_true", help="the findings as JSON")
    p = sub.add_parser("audit", parents=[common],
                       help="the audit log as a timeline (rotated files too; --cluster: every node's)")
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    p.add_argument("--program", help="NAME (worker matches worker:0, worker:1)")
    p.add_argument("--signal", help="SIGTERM, TERM or 15")
    p.add_argument("--sender", help="a pid, or text found in the sender's command, unit or program")
    p.add_argument("--since", help="10m, 2h, 1d or an ISO time")
    p.add_argument("--until", help="same forms as --since")
    p.add_argument("--blocked", action="store_true", help="only signals the guard blocked")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--file", help="audit log path (instead of the config's audit_log)")
    p.add_argument("--cluster", action="store_true", help="every node's events, from the cluster's Redis stream")
    p.add_argument("--node", help="only this node's events (implies --cluster)")
    p = sub.add_parser("logs", parents=[common],
                       help="a program's recent output from log_dir (rotated files too; -f: follow)")
    p.add_argument("name", metavar="NAME", help="a program (all its instances), an instance (worker:1), "
                                                "redis, or supervisor (its own log)")
    p.add_argument("-n", "--lines", type=int, metavar="N",
                   help=f"the last N lines (default {LOGS_DEFAULT_LINES}; all of them with --since)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new lines, across rotations and restarts, until interrupted")
    p.add_argument("--since", help="10m, 2h, 1d or an ISO time")
    return parser
