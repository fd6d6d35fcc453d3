"""Redis' data directory when Redis runs as its own user: made by the supervisor for
that user (0750, so no other program's user can read or rewrite the dump and the AOF),
never taken over from another owner; and where the record of the Redis running in it
lives, out of reach of Redis' user.

Redis' user owns its data dir, so it may delete or replace any file in it (write
permission on a directory is enough to unlink its entries: path_resolution(7),
unlink(2)). The owner record (the supervisor and the Redis it started, which the next
supervisor adopts after a crash) is therefore kept in run_dir, which only the supervisor
writes, under a name derived from the data dir's real path; the data dir keeps a plain
flock file (`relayq.lock`) for other tools, trusted for nothing.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any

from relayq_supervisor.config.model import Privileges
from relayq_supervisor.errors import StartupError

DATA_DIR_MODE = 0o750
DATA_DIR_LOCK = "relayq.lock"


def record_name(path: str) -> str:
    """`redis-dir@<hash>.lock`: the record's file in run_dir for data dir `path` (its real
    path hashed, so that every spelling of one dir names one record; '@' is not allowed in a
    program name, so no program's `<name>.lock` can be it)."""
    return f"redis-dir@{hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]}.lock"


def trusted_record(path: str) -> dict[str, Any] | None:
    """The JSON record at `path` when only we could have written it: a regular file (not a
    symbolic link) of our own uid that nobody else may write. None otherwise: a file Redis'
    user made in its data dir says nothing about which Redis to adopt."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        record = json.loads(os.read(fd, 1 << 16) or b"null")
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return record if isinstance(record, dict) else None


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
