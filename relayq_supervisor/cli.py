"""Command lines: argument parsing and printing, no logic.

Exit codes: 0 ok, 1 failure, 2 usage/config error, 3 not running (status), 4 unknown name.

`relayqctl` enters here too (`ctl_main`), and a new interpreter starts for every command:
so this module imports only what both need at its top, and the supervisor's own modules
(asyncio, logging and the journal, the config) inside the functions that use them.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relayq_supervisor.config.model import Config


def describe_config(config) -> str:
    from relayq_supervisor.config.redis import redis_version
    lines = [f"config {config.path} is valid", f"run_dir {config.supervisor.run_dir}",
             f"control socket {config.supervisor.control_socket}", f"audit log {config.supervisor.audit_log}"]
    for spec in config.programs:
        user = f", as {spec.privileges.user}" if spec.privileges.user else ""
        if spec.redis is not None:
            r = spec.redis
            lines.append(f"redis: {r.binary} (version {redis_version(r.binary)}) on {','.join(r.bind)}:{r.port}, "
                         f"dir {r.dir}, protect={'yes' if spec.protect else 'no'}{user}")
        else:
            names = ", ".join(spec.instance_names())
            deps = f", after {', '.join(spec.depends_on)}" if spec.depends_on else ""
            lines.append(f"{spec.name}: {' '.join(spec.command)} x{spec.numprocs} ({names}){deps}{user}")
    c = config.cluster
    if c is not None:
        from relayq_supervisor.cluster.link import display_url
        where = display_url(c.redis_url) if c.redis_url else "this node's [redis]"
        from relayq_supervisor.cluster.link import node_user
        who = node_user(c.node) if c.password_file else "the workers' credentials"
        remote = " (redis is remote: workers wait for it)" if config.remote_dependencies else ""
        lines.append(f"cluster: node {c.node} publishes to {where} as {who} every "
                     f"{c.heartbeat_interval:g}s{remote}")
        if c.nodes:
            lines.append(f"cluster: Redis users for nodes {', '.join(c.nodes)} (passwords in "
                         f"{config.supervisor.run_dir}/redis-node-<node>.pass)")
    return "\n".join(lines)


def supervisor_main(argv: list[str] | None = None) -> int:
    import asyncio

    from relayq_supervisor.config.load import default_config_path, load_config
    from relayq_supervisor.control.protocol import EXIT_OK, exit_status_of
    from relayq_supervisor.errors import RelayqError
    from relayq_supervisor.printable import escape
    from relayq_supervisor.supervisor_log import setup_logging

    parser = argparse.ArgumentParser(prog="relayq-supervisor",
                                     description="Run Redis and the relayq workers under one owner.")
    parser.add_argument("-c", "--config", default=None,
                        help="config file (default: $RELAYQ_CONFIG, else ./config.toml)")
    parser.add_argument("--check", action="store_true", help="validate the config, print what would run, exit")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    path = args.config or default_config_path()
    try:
        config = load_config(path)
        if args.check:
            print(describe_config(config))
            return EXIT_OK
        setup_logging(args.verbose, config.supervisor.log_target)
        asyncio.run(supervise(config))
    except RelayqError as e:
        print(escape(str(e)), file=sys.stderr)     # may name a port holder's command line
        return exit_status_of(e)
    return EXIT_OK


async def supervise(config: Config) -> None:
    from relayq_supervisor.node import Node
    await Node(config).run()


def ctl_main(argv: list[str] | None = None) -> int:
    from relayq_supervisor.ctl import main
    return main(argv)
