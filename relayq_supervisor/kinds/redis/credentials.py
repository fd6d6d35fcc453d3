"""The supervisor's own Redis credentials (the admin user, each cluster node's user): a
random password in a 0600 file of run_dir, reused while it is ours and well-formed; and
the private-file writer the ACL file shares (complete or not at all, for one owner)."""
from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import stat
from dataclasses import dataclass, field

from relayq_supervisor.errors import AclSetupError

log = logging.getLogger(__name__)

ADMIN_USER = "relayq-admin"
PASSWORD_FILE = "redis-admin.pass"
# One user per declared node of a cluster ([cluster] nodes), `relayq-node-<node>`: it
# writes only its own keys of the cluster view and answers only as itself; it runs only the
# commands cluster/ uses, so no stop command. Its password: <run_dir>/redis-node-<node>.pass.
NODE_USER_PREFIX = "relayq-node-"
# ... and `relayq-view-<node>`, with the same password: the cluster view, read-only.
VIEW_USER_PREFIX = "relayq-view-"
NODE_PASSWORD_FILE = "redis-node-{node}.pass"
# Before one user per node, every node shared one user and this password file: unused now.
SHARED_NODE_PASSWORD_FILE = "redis-node.pass"
PASSWORD_BYTES = 32

_HEX_PASSWORD_RE = re.compile(rf"^[0-9a-f]{{{PASSWORD_BYTES * 2}}}$")


@dataclass(frozen=True)
class AdminCredentials:
    """The supervisor's own Redis user; the password never appears in repr()."""

    username: str
    password: str = field(repr=False)
    path: str = ""

    @classmethod
    def load_or_create(cls, run_dir: str | os.PathLike, username: str = ADMIN_USER,
                       file_name: str = PASSWORD_FILE) -> AdminCredentials:
        """Reuse `<run_dir>/redis-admin.pass` (or `file_name`) when it is ours, 0600 and
        well-formed; otherwise (re)create it with a fresh random password and say why."""
        path = os.path.join(os.fspath(run_dir), file_name)
        password, problem = _read_password_file(path)
        if password is not None:
            return cls(username, password, path)
        if problem:
            log.warning("%s %s; creating a new password for %s", path, problem, username)
        password = secrets.token_hex(PASSWORD_BYTES)
        try:
            if problem:
                write_private_file(path, password + "\n", replace=True)
            elif not write_private_file(path, password + "\n", replace=False):
                # Another process created it between our read and our link: use theirs.
                theirs, problem = _read_password_file(path)
                if theirs is None:
                    raise AclSetupError(f"{path}: {problem or 'vanished while being created'}")
                password = theirs
        except OSError as e:
            label = "admin" if username == ADMIN_USER else username
            raise AclSetupError(f"cannot write the Redis {label} password file {path}: "
                                f"{e.strerror}") from None
        return cls(username, password, path)


def remove_shared_node_password(run_dir: str) -> str | None:
    """Delete `<run_dir>/redis-node.pass`, the shared node user's password that nothing
    reads any more; its path when there was one."""
    path = os.path.join(run_dir, SHARED_NODE_PASSWORD_FILE)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("%s: the shared node user's password, unused since each node has its own user; "
                    "cannot delete it (%s): delete it by hand", path, e.strerror)
        return None
    return path


def save_credentials(admin: AdminCredentials) -> None:
    """Write the password we run with back to its file (its directory was deleted under us)."""
    write_private_file(admin.path, admin.password + "\n", replace=True)


def _read_password_file(path: str) -> tuple[str | None, str | None]:
    """(password, None) when usable; (None, why not) when it must be replaced;
    (None, None) when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "is a symbolic link"
        raise AclSetupError(f"cannot read the Redis password file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "is not a regular file"
        if st.st_uid != os.geteuid():
            return None, f"is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"
        if st.st_mode & 0o077:
            return None, f"has mode {stat.S_IMODE(st.st_mode):04o}, looser than 0600"
        text = os.read(fd, 4096).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not _HEX_PASSWORD_RE.match(text):
        return None, f"does not hold a {PASSWORD_BYTES * 2}-digit hex password"
    return text, None


def holds_exactly(path: str, text: str, owner: int | None = None) -> bool:
    """True when `path` is a 0600 regular file of `owner` (default: us) with exactly `text`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o777 != 0o600 or \
                st.st_uid != (os.getuid() if owner is None else owner):
            return False
        return os.read(fd, len(text.encode()) + 1) == text.encode()
    finally:
        os.close(fd)


def write_private_file(path: str, text: str, replace: bool, owner: int | None = None) -> bool:
    """Write `text` to `path` with mode 0600, complete or not at all: a temporary file
    in the same directory, then rename (replace) or link (create only if absent).
    `owner`: the uid it is given (Redis' user, the only one who may read it).
    Returns False when `replace` is False and `path` already existed."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)        # the umask could only narrow it; make it exact anyway
            if owner is not None:
                os.fchown(fd, owner, -1)
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, path)
            return True
        try:
            os.link(tmp, path)          # fails with EEXIST instead of replacing
        except FileExistsError:
            return False
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass



def node_user_name(node: str) -> str:
    return NODE_USER_PREFIX + node


def view_user_name(node: str) -> str:
    """The read-only twin of node `node`'s user, with the same password (acl.view_user_line)."""
    return VIEW_USER_PREFIX + node


def node_password_file(node: str) -> str:
    return NODE_PASSWORD_FILE.format(node=node)

