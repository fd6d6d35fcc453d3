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

import fcntl
import hashlib
import json
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relayq_supervisor.config.model import Privileges
from relayq_supervisor.config.redis import DATA_DIR_MARK, data_dir_made_for
from relayq_supervisor.errors import StartupError

log = logging.getLogger(__name__)

DATA_DIR_MODE = 0o750
DATA_DIR_LOCK = "relayq.lock"


def record_name(path: str) -> str:
    """`redis-dir@<hash>.lock`: the record's file in run_dir for data dir `path` (its real
    path hashed, so that every spelling of one dir names one record; '@' is not allowed in a
    program name, so no program's `<name>.lock` can be it)."""
    return f"redis-dir@{hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]}.lock"


RECORD_GLOB = ("redis-dir@", ".lock")


def remove_stale_records(run_dir: str, keep: str, running: Callable[[dict[str, Any]], bool]) -> list[str]:
    """Delete the owner records in `run_dir` of data dirs no longer configured (the [redis]
    dir changed): each only when it is ours (trusted_record), held by nobody (flock taken
    while it is unlinked) and names no Redis that still `running`. Those removed."""
    try:
        names = sorted(n for n in os.listdir(run_dir) if n.startswith(RECORD_GLOB[0]) and n.endswith(RECORD_GLOB[1]))
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(run_dir, name)
        if path == keep:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # a supervisor holds it: not stale
            record = trusted_record(path)
            redis = (record or {}).get("redis")
            if record is None or (isinstance(redis, dict) and running(redis)):
                continue            # not ours to judge, or the trail to a Redis that still runs
            os.unlink(path)
            removed.append(path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


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


@dataclass(frozen=True)
class Handover:
    """What a start gave Redis' user in its data dir (audited as `redis_dir_given`)."""

    path: str
    from_uid: int       # whose entries they were
    uid: int            # Redis' user now
    changed: int        # entries that changed owner
    skipped: int        # regular files with several links: not given (another name may be outside the dir)
    why: str


def prepare_data_dir(path: str, priv: Privileges, give: bool = True) -> Handover | None:
    """Create `path` (and missing parents, 0755 by the umask); with a user to run as, the
    last directory is created for that user with DATA_DIR_MODE and marked as made for it
    (without one, as root, marked as made for root). What a start gives Redis' user (`give`,
    when no Redis of the previous user still runs there), as systemd does for a
    StateDirectory= whose User= changed, returned for the audit:
    - a directory marked as made for Redis' previous user (or for root, while Redis had no
      `user`): the previous owner's entries;
    - Redis' own directory holding entries of the supervisor's uid (a Redis that ran as root
      while `user` was unset): those, or the new user could not append to its AOF.
    StartupError when it belongs to someone else: config/ground.py refuses the same at
    --check, this is for a directory that changed since."""
    if priv.uid is None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            os.mkdir(path)
        except FileExistsError:
            return None
        if os.geteuid() == 0:
            _mark(path, 0)      # so that a `user` set later is given it
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mkdir(path, DATA_DIR_MODE)
    except FileExistsError:
        owner, made_for = os.stat(path).st_uid, data_dir_made_for(path)
        root = os.geteuid() == 0
        if owner == priv.uid:
            if not (root and give and made_for == priv.uid and priv.uid != 0):
                return None
            changed, skipped = give_tree(path, 0, priv.uid, priv.gid, old_gid=os.getegid())
            return Handover(path, 0, priv.uid, changed, skipped,
                            "files a Redis without `user` (run as root) left there") if changed else None
        if made_for == owner and root and give:
            changed, skipped = give_tree(path, owner, priv.uid, priv.gid)
            _mark(path, priv.uid)
            return Handover(path, owner, priv.uid, changed, skipped, "Redis' user changed")
        made = "" if made_for == owner else ", and the supervisor did not make it"
        raise StartupError(f"relayq-supervisor: Redis dir {path} is owned by uid {owner}, not by Redis' user "
                           f"{priv.user}{made}: `chown -R {priv.user}: {path}` or set another dir") from None
    os.chown(path, priv.uid, priv.gid if priv.gid is not None else -1)
    os.chmod(path, DATA_DIR_MODE)      # exact, whatever the umask
    _mark(path, priv.uid)
    return None


def _mark(path: str, uid: int) -> None:
    try:
        os.setxattr(path, DATA_DIR_MARK, str(uid).encode(), follow_symlinks=False)
    except OSError as e:    # no extended attributes here: a change of user will need a chown by hand
        log.info("redis: cannot mark %s as made for uid %d (%s)", path, uid, e.strerror)


def give_tree(top: str, old_uid: int, uid: int, gid: int | None, old_gid: int | None = None) -> tuple[int, int]:
    """chown to uid (and gid, where the group was `old_gid`: by default the one `top` has, the
    old user's, given with it) everything under `top` that old_uid owns: (entries changed,
    regular files skipped for having several links). By directory fd and without following
    symbolic links, so that a link or a renamed directory planted by the old user leads
    nowhere else; a hard link (another name of a file maybe outside the dir) is not given,
    and of root's entries only directories and regular files are, never the data dir's own
    lock file (the supervisor's)."""
    if old_gid is None:
        old_gid = os.lstat(top).st_gid
    changed = skipped = 0
    for where, dirs, files, dir_fd in os.fwalk(top, follow_symlinks=False):
        # the directory itself, then its entries (a subdirectory is given here and found given
        # when visited; a symbolic link itself, never what it points to)
        for name in (".", *dirs, *files):
            if where == top and name == DATA_DIR_LOCK:
                continue
            done = _give(name, dir_fd, old_uid, old_gid, uid, gid)
            changed += done > 0
            skipped += done < 0
    return changed, skipped


def _give(name: str, dir_fd: int, old_uid: int, old_gid: int | None, uid: int, gid: int | None) -> int:
    """1: given; 0: not old_uid's; -1: old_uid's but not given (several links)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if st.st_uid != old_uid:
            return 0
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            return -1
        if old_uid == 0 and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return 0
        new_gid = gid if gid is not None and st.st_gid == old_gid else -1
        os.chown(name, uid, new_gid, dir_fd=dir_fd, follow_symlinks=False)
        return 1
    except FileNotFoundError:
        return 0
