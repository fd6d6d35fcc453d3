"""relayqctl: talk to the running supervisor over its control socket.

Exit status follows systemctl: 0 all named programs RUNNING (or the action worked),
1 failure or supervisor unreachable, 2 usage, 3 some program not RUNNING, 4 unknown name.

One module per command family, imported by `run_command` only for its command: a new
interpreter starts for every relayqctl command, and what it imports is most of its time
(`status` needs no Redis client, `audit` no socket, `status --cluster` no psutil, and no
redis-py while the supervisor answers it):
  parser    the command line          client   the control socket (call, checked)
  local     [supervisor] of the config on disk, the socket's path
  display   printing: lines, durations, the program table
  programs  status (--watch), start, stop, restart, shutdown, pid, reload
  why       why NAME (--node)         cluster  status --cluster (the supervisor, else Redis)
  audit     audit, audit --cluster    logs     logs
  doctor    doctor
"""
from __future__ import annotations

import os
import sys

from relayq_supervisor.control.protocol import EXIT_FAILURE, EXIT_USAGE, exit_status_of
from relayq_supervisor.ctl.parser import build_parser
from relayq_supervisor.errors import RelayqError
from relayq_supervisor.printable import escape


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
            from relayq_supervisor.ctl.audit import audit_timeline, cluster_audit
            return cluster_audit(args) if args.cluster or args.node else audit_timeline(args)
        if args.cmd == "status" and args.cluster:
            from relayq_supervisor.ctl.cluster import cluster_status
            return cluster_status(args)
        if args.cmd == "doctor":
            from relayq_supervisor.ctl.doctor import run_doctor
            return run_doctor(args)
        if args.cmd == "logs":
            from relayq_supervisor.ctl.logs import show_logs
            return show_logs(args)
        from relayq_supervisor.ctl.local import socket_path
        if args.cmd == "why":
            from relayq_supervisor.ctl.why import run_why
            return run_why(args, socket_path)
        from relayq_supervisor.ctl.programs import run
        return run(args, socket_path(args))
    except RelayqError as e:
        print(escape(f"relayqctl: {e}"), file=sys.stderr)    # a reply may quote a port holder's argv
        return exit_status_of(e)
    except KeyboardInterrupt:
        return EXIT_FAILURE
