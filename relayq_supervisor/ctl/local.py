"""Where this node's supervisor keeps things, from the config on disk: its [supervisor]
table (salvaged from a file broken mid-edit) and its control socket."""
from __future__ import annotations

import os
import sys

from relayq_supervisor.config import (
    SupervisorSpec,
    default_config_path,
    load_supervisor_section,
    salvage_supervisor_section,
)
from relayq_supervisor.errors import ConfigSyntaxError


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
        from relayq_supervisor.core.locks import read_owner
        # the running supervisor's own record of its socket beats a guess from a broken file
        owner = read_owner(os.path.join(sup.run_dir, "supervisor.lock")) or {}
        if owner.get("config") == config_path and isinstance(owner.get("control_socket"), str):
            return owner["control_socket"]
    return sup.control_socket
