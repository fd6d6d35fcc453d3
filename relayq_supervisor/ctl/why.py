"""`relayqctl why NAME`: the last stop of a program with its evidence, from the supervisor,
or (`--node`) from the cluster's Redis."""
from __future__ import annotations

from relayq_supervisor.audit.timeline_text import describe_sender, format_event
from relayq_supervisor.control.protocol import EXIT_OK
from relayq_supervisor.ctl.client import call, checked
from relayq_supervisor.ctl.display import format_duration, say, show
from relayq_supervisor.shell_text import command_line


def run_why(args, socket_path) -> int:
    """`socket_path`: a function giving the socket (read only without --node)."""
    if args.node:       # asked of this node's supervisor, else read from the cluster's Redis here
        from relayq_supervisor.ctl.cluster import ask_supervisor, cluster_view
        result = ask_supervisor(args, "cluster-why", node=args.node, name=args.name)
        if result is None or not isinstance(result.get("program"), dict):
            result = cluster_view(args).why(args.node, args.name)
        show(result, args.json, print_why)
    else:
        show(checked(call(socket_path(args), "why", args.timeout, name=args.name)), args.json, print_why)
    return EXIT_OK


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
            say(f"    {format_event(event)}")
    if not stop:
        say("  no run of it has ended yet")
        return
    say(f"  last stop: {format_event(stop['exit'])}")
    sender = stop.get("sender")
    if sender:
        say(f"  sent by: {describe_sender(sender)}")
        for key in ("uid", "user", "exe", "cmdline", "unit", "loginuid", "session", "tty", "alive", "note"):
            if sender.get(key) not in (None, [], ""):
                value = command_line(sender[key]) if key == "cmdline" else sender[key]
                say(f"    {key}: {value}")
        for anc in sender.get("ancestry") or []:
            say(f"    parent: pid {anc['pid']} {anc.get('comm') or ''} {command_line(anc.get('cmdline') or [])}")
    if stop.get("events"):
        say("  what happened to it before (signals, denied commands):")
        for event in stop["events"]:
            say(f"    {format_event(event)}")
    if stop.get("output_tail"):
        say("  its last output:")
        for line in stop["output_tail"][-12:]:
            say(f"    {line}")
