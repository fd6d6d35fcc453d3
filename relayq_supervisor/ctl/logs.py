"""`relayqctl logs`: a program's output from log_dir (rotated files too, -f); works with
the supervisor down."""
from __future__ import annotations

import sys
from datetime import UTC, datetime

from relayq_supervisor import output_log
from relayq_supervisor.audit.filtering import parse_when
from relayq_supervisor.config import SUPERVISOR_NAME, default_config_path, load_config
from relayq_supervisor.control.protocol import EXIT_OK, EXIT_UNKNOWN, EXIT_USAGE
from relayq_supervisor.ctl.display import say
from relayq_supervisor.ctl.local import supervisor_section
from relayq_supervisor.ctl.parser import LOGS_DEFAULT_LINES
from relayq_supervisor.errors import RelayqError


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
        since = parse_when(args.since, datetime.now(UTC)) if args.since else None
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
