"""prctl(2) calls the supervisor needs: child subreaper, parent-death signal, thread name, no_new_privs.

All raise OSError(errno, message) on failure.
"""

from __future__ import annotations

import ctypes
import os

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

# The kernel keeps a thread's name in 16 bytes, NUL included.
TASK_COMM_LEN = 16

_REQUEST_NAMES = {
    PR_SET_PDEATHSIG: "PR_SET_PDEATHSIG",
    PR_GET_PDEATHSIG: "PR_GET_PDEATHSIG",
    PR_SET_NAME: "PR_SET_NAME",
    PR_GET_NAME: "PR_GET_NAME",
    PR_SET_CHILD_SUBREAPER: "PR_SET_CHILD_SUBREAPER",
    PR_GET_CHILD_SUBREAPER: "PR_GET_CHILD_SUBREAPER",
    PR_SET_NO_NEW_PRIVS: "PR_SET_NO_NEW_PRIVS",
    PR_GET_NO_NEW_PRIVS: "PR_GET_NO_NEW_PRIVS",
}

_libc = ctypes.CDLL(None, use_errno=True)
# Declared variadic in glibc; every argument here is an integer or a pointer,
# which x86_64 and aarch64 pass the same way either way.
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int


def _prctl(option: int, arg2: int = 0) -> int:
    result = _libc.prctl(option, arg2, 0, 0, 0)
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({_REQUEST_NAMES.get(option, option)}): {os.strerror(err)}")
    return result


def set_child_subreaper(on: bool = True) -> None:
    """Make this process adopt its orphaned descendants instead of init.

    Adopted processes must be reaped by us (waitpid), or they stay zombies.
    The flag is not inherited by fork(2) children and survives execve(2).
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def is_child_subreaper() -> bool:
    """Whether this process is a child subreaper."""
    flag = ctypes.c_int(0)
    _prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(flag))
    return bool(flag.value)


def set_pdeathsig(sig: int) -> None:
    """Ask for `sig` when the parent *thread* that forked us exits (0 clears it).

    Call it in the child after fork, then compare os.getppid() with the
    expected parent: if the parent died before the prctl, no signal will come.
    Cleared in fork(2) children and by exec of a set-user-ID program.
    """
    _prctl(PR_SET_PDEATHSIG, int(sig))


def get_pdeathsig() -> int:
    """The parent-death signal of this process, 0 if none."""
    sig = ctypes.c_int(0)
    _prctl(PR_GET_PDEATHSIG, ctypes.addressof(sig))
    return sig.value


def set_name(name: str) -> None:
    """Set the calling thread's name (comm, shown by ps/top), cut to 15 bytes by the kernel."""
    raw = name.encode("utf-8", "replace")[:TASK_COMM_LEN - 1]
    buf = ctypes.create_string_buffer(raw, TASK_COMM_LEN)
    _prctl(PR_SET_NAME, ctypes.addressof(buf))


def get_name() -> str:
    """The calling thread's name (comm)."""
    buf = ctypes.create_string_buffer(TASK_COMM_LEN)
    _prctl(PR_GET_NAME, ctypes.addressof(buf))
    return buf.value.decode("utf-8", "replace")


def set_no_new_privs() -> None:
    """From now on execve(2) grants nothing: no set-user-ID bit, no file capability.
    One way only (it cannot be unset), inherited by fork(2) and kept across execve(2)."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def get_no_new_privs() -> bool:
    return bool(_prctl(PR_GET_NO_NEW_PRIVS))
