"""relayqctl: talk to the running supervisor over its control socket.

Exit status follows systemctl: 0 all named programs RUNNING (or the action worked),
1 failure or supervisor unreachable, 2 usage, 3 some program not RUNNING, 4 unknown name.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import select
import socket
import sys
import time
from datetime import UTC, datetime

import psutil

from relayq_supervisor import output_log
from relayq_supervisor.audit import review
from relayq_supervisor.config import (
    SUPERVISOR_NAME,
    SupervisorSpec,
    default_config_path,
    load_config,
    load_supervisor_section,
    salvage_supervisor_section,
)
from relayq_supervisor.control import protocol
from relayq_supervisor.control.protocol import (
    EXIT_FAILURE,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    Refused,
)
from relayq_supervisor.core.locks import read_owner
from relayq_supervisor.errors import ConfigSyntaxError, RelayqError
from relayq_supervisor.printable import escape
from relayq_supervisor.shell_text import command_line, cut, terminal_width


class Unreachable(RelayqError):
    """No supervisor answers on the socket (exit status 1)."""


def call(socket_path: str, cmd: str, timeout: float = 30.0, **args) -> dict:
    """One request, one reply. Unreachable names the socket and why."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(socket_path)
        except FileNotFoundError:
            raise Unreachable(f"{socket_path}: no supervisor is listening (no socket file)") from None
        except ConnectionRefusedError:
            raise Unreachable(f"{socket_path}: no supervisor is listening (stale socket)") from None
        except PermissionError:
            raise Unreachable(f"{socket_path}: permission denied") from None
        except OSError as e:
            raise Unreachable(f"{socket_path}: {e.strerror}") from None
        s.sendall(protocol.request(cmd, **args))
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise Unreachable(f"{socket_path}: no reply within {timeout:g}s") from None
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    if not data:
        raise Unreachable(f"{socket_path}: the supervisor closed the connection without a reply")
    return protocol.parse_reply(data)


def say(line: str, width: int | None = None) -> None:
    """Print one human-readable line: text from other processes in it (argv, comm,
    a child's output) is escaped so it cannot break or recolour the line; with `width`
    (a terminal's), cut to fit it."""
    print(cut(escape(line), width))


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d {h}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def describe_program(p: dict) -> str:
    """The last column: why it is in this state, and how its last run ended."""
    parts = []
    if p["state"] in ("BACKOFF", "FATAL", "EXITED", "STOPPED", "STARTING", "STOPPING") and p.get("reason"):
        parts.append(p["reason"])
    if p.get("descendants"):
        parts.append(f"+{len(p['descendants'])} descendant{'s' if len(p['descendants']) != 1 else ''}")
    if p.get("last_exit") and p["state"] in ("RUNNING", "STARTING"):
        parts.append(f"last: {p['last_exit']['description']}")
    return "; ".join(parts)


# systemctl's habit: green for running, red for given up, yellow for on the way somewhere
STATE_COLOURS = {"RUNNING": "32", "STARTING": "33", "STOPPING": "33", "BACKOFF": "33;1", "FATAL": "31;1",
                 "EXITED": "31", "STOPPED": "2"}


def use_colour(stream=None) -> bool:
    """On a terminal only, never with NO_COLOR set (no-color.org) or TERM=dumb."""
    stream = stream or sys.stdout
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def print_status(status: dict, colour: bool = False, width: int | None = None) -> None:
    sup = status["supervisor"]
    redis = f"{sup.get('redis_binary')} {sup.get('redis_version')}" if sup.get("redis_binary") else \
        f"the cluster's at {sup['cluster']['redis']}" if sup.get("cluster") else "no redis"
    say(f"relayq-supervisor pid {sup['pid']}, up {format_duration(sup['uptime_s'])}, "
        f"config {sup['config']}, redis {redis}")
    for note in sup.get("notes", []):
        say(f"  {note}", width)
    print_programs(status["programs"], colour, width=width)


def print_programs(programs: list[dict], colour: bool, indent: str = "", aged: float = 0.0,
                   width: int | None = None) -> None:
    """The program table; `aged`: seconds since the status was taken (the cluster view's).
    With `width` (a terminal's) the DETAIL column is cut to fit: a reason can quote a
    sender's whole command line (kilobytes of it); `--json` keeps all of it."""
    rows: list[tuple[str, ...]] = [("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "DETAIL")]
    for p in programs:     # cells escaped before widths are measured
        uptime = p["uptime_s"] + aged if p["uptime_s"] is not None else None
        rows.append(tuple(escape(cell) for cell in (
            p["name"], p["state"], str(p["pid"] or "-"), format_duration(uptime),
            str(p["restarts"]), describe_program(p))))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    detail_width = max(width - len(indent) - sum(widths) - 2 * 5, 20) if width else None
    for n, r in enumerate(rows):
        cells = [r[i].ljust(widths[i]) for i in range(5)]
        if colour and n and r[1] in STATE_COLOURS:     # padded first, so the columns stay aligned
            cells[1] = f"\x1b[{STATE_COLOURS[r[1]]}m{cells[1]}\x1b[0m"
        print(indent + "  ".join(cells) + "  " + cut(r[5], detail_width))


def cluster_view(args):
    from relayq_supervisor.cluster.view import ClusterView
    return ClusterView(load_config(args.config or default_config_path(), ground=False))


def cluster_status(args) -> int:
    """`status --cluster`: every node's programs, from the cluster's Redis."""
    from relayq_supervisor.cluster.link import ClusterUnreachable
    from relayq_supervisor.cluster.view import exit_status
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
    from relayq_supervisor.cluster.view import node_line
    colour = use_colour()
    say(f"cluster Redis {result['redis']}: {len(result['nodes'])} node(s)")
    for node in result["nodes"]:
        say(node_line(node, format_duration), width)
        for note in (node.get("supervisor") or {}).get("notes", []):
            say(f"    {note}", width)
        live = not node["stale"] and not node.get("shut_down")
        print_programs(node.get("programs") or [], colour, "    ", node["seen_s_ago"] if live else 0.0, width)


def supervisor_section(config_path: str) -> tuple[SupervisorSpec, bool]:
    """[supervisor] of the config on disk, and whether it was only salvaged: a file
    broken mid-edit must not cut the operator off from the supervisor that runs."""
    try:
        return load_supervisor_section(config_path), False
    except ConfigSyntaxError as e:
        print(f"relayqctl: warning: {e} (reading its [supervisor] table as far as it goes)", file=sys.stderr)
        return salvage_supervisor_section(config_path), True


def socket_path(args) -> str:
    if args.socket:
        return args.socket
    config_path = os.path.abspath(args.config or default_config_path())
    sup, salvaged = supervisor_section(config_path)
    if salvaged:
        # the running supervisor's own record of its socket beats a guess from a broken file
        owner = read_owner(os.path.join(sup.run_dir, "supervisor.lock")) or {}
        if owner.get("config") == config_path and isinstance(owner.get("control_socket"), str):
            return owner["control_socket"]
    return sup.control_socket


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
    p.add_argument("--cluster", action="store_true", help="every node of the cluster, from its Redis ([cluster])")
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
    p.add_argument("--node", help="a node of the cluster (read from the cluster's Redis)")
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


def main(argv: list[str] | None = None) -> int:
    try:
        code = run_command(argv)
        sys.stdout.flush()      # inside the try: a closed pipe shows here for buffered output
        return code
    except BrokenPipeError:
        # the reader went away (`relayqctl status | head -1`): end quietly as cat does;
        # stdout now points at /dev/null so the interpreter's last flush cannot complain
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_FAILURE


def run_command(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.cmd:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.cmd == "audit":
            return cluster_audit(args) if args.cluster or args.node else audit_timeline(args)
        if args.cmd == "status" and args.cluster:
            return cluster_status(args)
        if args.cmd == "why" and args.node:
            show(cluster_view(args).why(args.node, args.name), args.json, print_why)
            return EXIT_OK
        if args.cmd == "doctor":
            return run_doctor(args)
        if args.cmd == "logs":
            return show_logs(args)
        path = socket_path(args)
        return run(args, path)
    except RelayqError as e:
        print(escape(f"relayqctl: {e}"), file=sys.stderr)    # a reply may quote a port holder's argv
        return protocol.exit_status_of(e)
    except KeyboardInterrupt:
        return EXIT_FAILURE


def checked(reply: dict) -> dict:
    if not reply.get("ok"):
        raise Refused(reply.get("error", "the supervisor refused the request"), code=reply.get("code", 1))
    return reply["result"]


def show(result: dict, as_json: bool, printer) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        printer(result)


def run(args, path: str) -> int:
    cmd = args.cmd
    if cmd == "status":
        if args.watch:
            return watch_status(args, path)
        result = checked(call(path, "status", args.timeout, names=args.names))
        show(result, args.json, lambda r: print_status(r, use_colour(), terminal_width()))
        return EXIT_OK if all(p["state"] == "RUNNING" for p in result["programs"]) else EXIT_NOT_RUNNING
    if cmd in ("start", "stop", "restart"):
        extra = {"with_dependents": args.with_dependents, "force": args.force} if cmd == "stop" else {}
        result = checked(call(path, cmd, args.timeout, names=args.names, wait=not args.no_wait, **extra))
        ok = True
        for o in result["outcomes"]:
            ok &= o["ok"]
            say(outcome_line(o), terminal_width())
        return EXIT_OK if ok else EXIT_FAILURE
    if cmd == "shutdown":
        pid = None
        try:
            pid = checked(call(path, "pid", args.timeout))["pid"]
            pidfd = os.pidfd_open(pid)      # before asking: the pid cannot be recycled under us
        except OSError:
            pidfd = None
        checked(call(path, "shutdown", args.timeout))
        if pidfd is None:
            print("relayq-supervisor: shutdown requested")
            return EXIT_OK
        # a pidfd turns readable when the process has exited (zombie or not)
        done, _, _ = select.select([pidfd], [], [], args.timeout)
        os.close(pidfd)
        print(f"relayq-supervisor pid {pid}: " + ("stopped" if done else f"still stopping after {args.timeout:g}s"))
        return EXIT_OK if done else EXIT_FAILURE
    if cmd == "pid":
        result = checked(call(path, "pid", args.timeout, name=args.name))
        if args.name and len(result.get("pids", {})) > 1:
            for name, pid in result["pids"].items():
                print(f"{name} {pid or '-'}")
            return EXIT_OK
        if result["pid"] is None:
            print("-")
            return EXIT_NOT_RUNNING
        print(result["pid"])
        return EXIT_OK
    if cmd == "reload":
        changes = checked(call(path, "reload", args.timeout)).get("changes", {})
        lines = [f"{what}: {', '.join(names)}" for what, names in changes.items() if names and what != "not_applied"]
        lines += changes.get("not_applied", [])
        for line in lines or ["reloaded: nothing changed"]:
            say(line)
        return EXIT_OK
    if cmd == "why":
        show(checked(call(path, "why", args.timeout, name=args.name)), args.json, print_why)
        return EXIT_OK
    return EXIT_USAGE


def watch_status(args, path: str, interval: float = 1.0) -> int:
    """Redraw the status every second until interrupted; an unreachable supervisor is
    said on screen and retried, not the end of the watch."""
    tty = sys.stdout.isatty()
    try:
        while True:
            began = time.monotonic()
            try:
                result = checked(call(path, "status", min(args.timeout, 5.0), names=args.names))
                text = None
            except Unreachable as e:
                result, text = None, f"relayqctl: {e}; retrying"
            if tty:
                sys.stdout.write("\x1b[H\x1b[2J")        # home, clear: redraw in place
            print(time.strftime("%H:%M:%S") + f"  every {interval:g}s, Ctrl-C to stop")
            if result is not None:
                print_status(result, use_colour(), terminal_width())
            else:
                print(text)
            sys.stdout.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - began)))
    except KeyboardInterrupt:
        return EXIT_OK      # the way to end a watch


def outcome_line(o: dict) -> str:
    """`worker:1: BACKOFF (pid 813 died during the start: killed by SIGKILL, from pid 4412 ...)`"""
    return f"{o['name']}: {o['state']}" + (f" ({o['detail']})" if o.get("detail") else "")


def print_why(result: dict) -> None:
    p, stop = result["program"], result.get("last_stop")
    node = f"node {result['node']}: " if result.get("node") else ""
    # its uptime, not only the reason it entered its state ("ready: still running 1s after its start")
    up = f", pid {p['pid']}, up {format_duration(p['uptime_s'])}" if p["pid"] and p.get("uptime_s") is not None else ""
    say(f"{node}{p['name']}: {p['state']}" + (up or (f", pid {p['pid']}" if p["pid"] else "")) + f" ({p['reason']})")
    if p.get("user"):
        say(f"  runs as: {p['user']}")
    recent = [e for e in result.get("recent_events") or [] if not stop or e not in (stop.get("events") or [])]
    if recent:
        say("  since (signals, denied commands):")
        for event in recent:
            say(f"    {review.format_event(event)}")
    if not stop:
        say("  no run of it has ended yet")
        return
    say(f"  last stop: {review.format_event(stop['exit'])}")
    sender = stop.get("sender")
    if sender:
        say(f"  sent by: {review.describe_sender(sender)}")
        for key in ("uid", "user", "exe", "cmdline", "unit", "loginuid", "session", "tty", "alive", "note"):
            if sender.get(key) not in (None, [], ""):
                value = command_line(sender[key]) if key == "cmdline" else sender[key]
                say(f"    {key}: {value}")
        for anc in sender.get("ancestry") or []:
            say(f"    parent: pid {anc['pid']} {anc.get('comm') or ''} {command_line(anc.get('cmdline') or [])}")
    if stop.get("events"):
        say("  what happened to it before (signals, denied commands):")
        for event in stop["events"]:
            say(f"    {review.format_event(event)}")
    if stop.get("output_tail"):
        say("  its last output:")
        for line in stop["output_tail"][-12:]:
            say(f"    {line}")


LOGS_DEFAULT_LINES = 20


def known_names(config_path: str) -> tuple[list[str], set[str]] | None:
    """Programs, instances, redis and supervisor from the config, and those whose output goes
    to the journal only (`log = "journal"`); None if it cannot be loaded (then only the files
    in log_dir say what exists)."""
    try:
        config = load_config(config_path)
    except RelayqError:
        return None
    names = [SUPERVISOR_NAME]
    journal_only: set[str] = set()
    for spec in config.programs:
        mine = [spec.name] + [i for i in spec.instance_names() if i != spec.name]
        names += mine
        if spec.log == "journal":
            journal_only.update(mine)
    return names, journal_only


def show_logs(args) -> int:
    """Files only: works with the supervisor down."""
    if args.lines is not None and args.lines < 0:
        print("relayqctl logs: -n must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    try:
        since = review.parse_when(args.since, datetime.now(UTC)) if args.since else None
    except ValueError as e:
        print(f"relayqctl logs: --since: {e}", file=sys.stderr)
        return EXIT_USAGE
    config_path = args.config or default_config_path()
    log_dir = supervisor_section(config_path)[0].log_dir     # a file broken mid-edit still names log_dir
    limit = args.lines if args.lines is not None else (None if since else LOGS_DEFAULT_LINES)
    name = args.name
    found = known_names(config_path)
    known, journal_only = found if found is not None else (None, set())
    follower = output_log.Follower(log_dir, name) if args.follow else None     # before the history: no gap
    by_instance = output_log.files_of(log_dir, name)
    if not by_instance:
        if known is not None and name not in known:
            print(f"relayqctl logs: no program or instance named {name!r} (known: {', '.join(known)})",
                  file=sys.stderr)
            return EXIT_UNKNOWN
        if known is None and not args.follow:
            print(f"relayqctl logs: no log of {name!r} in {log_dir} (and the config cannot be read to say "
                  "whether it is a program)", file=sys.stderr)
            return EXIT_UNKNOWN
        if name in journal_only:
            match = f"RELAYQ_PROGRAM={name}" if ":" in name else f"-t {name}"      # an instance, or all of them
            print(f"relayqctl logs: {name}: its output goes to the journal only (log = \"journal\"): "
                  f"journalctl -u relayq-supervisor {match}", file=sys.stderr)
            return EXIT_OK
        print(f"relayqctl logs: {name}: no output yet (nothing in {log_dir})"
              + ("; waiting for some" if args.follow else ""), file=sys.stderr)
        if not args.follow:
            return EXIT_OK
    # one instance asked for by its own name: its lines as they are; else say whose each line is
    with_instance = set(by_instance) != {name} or (known is not None and any(
        output_log.instance_of(name, k) and k != name for k in known))
    ends = follower.history_ends() if follower is not None else None
    lines = output_log.recent(by_instance, limit, since, ends)
    for line in lines:
        say(line.render(with_instance))
    if by_instance and not lines and follower is None:
        print(f"relayqctl logs: {name}: nothing" + (f" since {args.since}" if since else ""), file=sys.stderr)
    if follower is None:
        return EXIT_OK
    sys.stdout.flush()
    try:
        for line in follower.lines():
            say(line.render(with_instance))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return EXIT_OK      # the way to end -f
    finally:
        follower.close()
    return EXIT_OK


def run_doctor(args) -> int:
    from relayq_supervisor import doctor
    from relayq_supervisor.doctor.privilege import root_program_warnings
    from relayq_supervisor.node import doctor_target
    config = load_config(args.config or default_config_path())
    own = set()
    supervisor_uid = os.geteuid()       # not running: as whoever would start it now
    try:        # what the running supervisor owns is not a rival
        pid = checked(call(args.socket or config.supervisor.control_socket, "pid", 5.0))["pid"]
        own = {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
        supervisor_uid = psutil.Process(pid).uids().effective
    except (RelayqError, psutil.Error):
        pass
    root = args.root or config.supervisor.doctor_root
    rivals = doctor.find_rivals(doctor_target(config, own), root=root, scan_processes=root == "/")
    warnings = root_program_warnings(config, supervisor_uid)
    if args.json:
        print(json.dumps({"root": root, "rivals": [r.to_dict() for r in rivals], "warnings": warnings}, indent=2))
    else:
        print(doctor.format_report(rivals))
        for warning in warnings:
            say(f"warning: {warning}")
    return EXIT_FAILURE if rivals else EXIT_OK


def audit_filter(args) -> review.EventFilter:
    now = datetime.now(UTC)
    return review.EventFilter(program=args.program, signal=args.signal, sender=args.sender,
                              since=review.parse_when(args.since, now) if args.since else None,
                              until=review.parse_when(args.until, now) if args.until else None,
                              blocked_only=args.blocked)


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
            print(json.dumps(event, default=str) if args.json else f"{escape(event['node'])} {review.format_event(event)}")

    last = view.last_id()       # history up to here, then what comes after: no gap, no repeat
    for _, shown in review.with_late_answers(view.history(wanted.since, last)):
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
    emit = (lambda e: print(json.dumps(e, default=str))) if args.json else (lambda e: print(review.format_event(e)))
    # follow from before the history is read, so nothing written meanwhile is lost;
    # what both see is shown once
    live = review.follow(path) if args.follow else None
    recent: collections.deque[str] = collections.deque(maxlen=200)
    stream = review.iter_events(path)
    # late answers from other nodes shown with the denials they amend
    for event, shown in review.with_late_answers(stream):
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


if __name__ == "__main__":
    sys.exit(main())
