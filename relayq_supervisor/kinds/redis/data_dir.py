"""Redis' data directory when Redis runs as its own user: made by the supervisor for
that user (0750, so no other program's user can read or rewrite the dump and the AOF),
never taken over from another owner."""
from __future__ import annotations

import os

from relayq_supervisor.config.model import Privileges
from relayq_supervisor.errors import StartupError

DATA_DIR_MODE = 0o750


def prepare_data_dir(path: str, priv: Privileges) -> None:
    """Create `path` (and missing parents, 0755 by the umask); with a user to run as, the
    last directory is created for that user with DATA_DIR_MODE. StartupError when it
    exists and belongs to someone else: config/ground.py refuses the same at --check, this is
    for a directory that changed since."""
    if priv.uid is None:
        os.makedirs(path, exist_ok=True)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mkdir(path, DATA_DIR_MODE)
    except FileExistsError:
        owner = os.stat(path).st_uid
        if owner != priv.uid:
            raise StartupError(f"relayq-supervisor: Redis dir {path} is owned by uid {owner}, not by Redis' user "
                               f"{priv.user}: `chown -R {priv.user}: {path}` or set another dir") from None
        return
    os.chown(path, priv.uid, priv.gid if priv.gid is not None else -1)
    os.chmod(path, DATA_DIR_MODE)      # exact, whatever the umask
