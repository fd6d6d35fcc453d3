"""The supervisor's programs over its socket: status (and --watch), start, stop, restart,
shutdown, pid, reload."""
from __future__ import annotations

import os
import select
import sys
import time

from relayq_supervisor.control.protocol import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE
from relayq_supervisor.ctl.client import Unreachable, call, checked
from relayq_supervisor.ctl.display import outcome_line, print_status, say, show, use_colour
from relayq_supervisor.shell_text import terminal_width


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
