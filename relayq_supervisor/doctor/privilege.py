"""Doctor's warning about who the programs run as: a program that runs jobs (every
[[program]]: the workers take shell jobs off the queue) should not run as root, where a
job could read the supervisor's secrets, kill Redis or rewrite its data."""
from __future__ import annotations

from relayq_supervisor.config.model import Config


def root_program_warnings(config: Config, supervisor_uid: int) -> list[str]:
    """One line per program that runs jobs as root. `supervisor_uid`: the running
    supervisor's effective uid (what a program without `user` runs as)."""
    warnings = []
    for spec in config.programs:
        if spec.redis is not None:
            continue
        priv = spec.privileges
        # a `user` with no uid is the supervisor's own user (config/privileges.py: only root changes user)
        uid = supervisor_uid if priv.user is None else priv.uid
        if uid == 0:
            via = "with no 'user' set, as the supervisor" if priv.user is None else "as user root"
            warnings.append(f"program '{spec.name}' runs jobs as root ({via}): a job can read the supervisor's "
                            "secrets, kill Redis and rewrite its data; set user = \"relayq\" (or another unprivileged "
                            "user) in its [[program]] table (README: Least privilege)")
    return warnings
