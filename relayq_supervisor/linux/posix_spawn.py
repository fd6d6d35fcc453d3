"""posix_spawn(3) from glibc (or musl) through ctypes, with the file actions os.posix_spawn lacks.

os.posix_spawn cannot change the child's working directory; glibc's
posix_spawn_file_actions_addchdir_np (2.29, musl 1.1.24) can. glibc's posix_spawn
is clone(CLONE_VM|CLONE_VFORK) plus a few syscalls in C before execve: no Python code
runs in the child, the parent's memory is not copied, and an error in a file action or
in execve itself comes back as posix_spawn's return value (the child writes it into
memory it shares with the parent, then exits 127 and is reaped by glibc). Nothing here
knows about programs or policy.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import sys
from collections.abc import Callable, Mapping, Sequence

# Attribute flags (<spawn.h>; the same numbers in glibc and musl).
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80           # glibc 2.26, musl 1.1.20

# The opaque libc types, over-allocated: glibc's are 80 and 336 bytes and sigset_t is
# 128 on every Linux libc; the libc functions below are the only ones to touch them.
_FILE_ACTIONS_SIZE = 256
_ATTR_SIZE = 1024
_SIGSET_SIZE = 128

_libc = ctypes.CDLL(None, use_errno=True)
_vp = ctypes.c_void_p
_argv_t = ctypes.POINTER(ctypes.c_char_p)
_libc.posix_spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, _vp, _vp, _argv_t, _argv_t]
_libc.posix_spawn.restype = ctypes.c_int
for _name, _args in (("posix_spawn_file_actions_init", [_vp]), ("posix_spawn_file_actions_destroy", [_vp]),
                     ("posix_spawn_file_actions_adddup2", [_vp, ctypes.c_int, ctypes.c_int]),
                     ("posix_spawnattr_init", [_vp]), ("posix_spawnattr_destroy", [_vp]),
                     ("posix_spawnattr_setflags", [_vp, ctypes.c_short]),
                     ("posix_spawnattr_setsigmask", [_vp, _vp]), ("posix_spawnattr_setsigdefault", [_vp, _vp]),
                     ("sigemptyset", [_vp])):
    getattr(_libc, _name).argtypes = _args
    getattr(_libc, _name).restype = ctypes.c_int


def _optional(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    """A libc function that older libcs lack, or None."""
    try:
        function = getattr(_libc, name)
    except AttributeError:
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


_addchdir = _optional("posix_spawn_file_actions_addchdir_np", [_vp, ctypes.c_char_p])    # glibc 2.29, musl 1.1.24
_addclosefrom = _optional("posix_spawn_file_actions_addclosefrom_np", [_vp, ctypes.c_int])   # glibc 2.34

CAN_CHDIR = _addchdir is not None
CAN_CLOSE_FROM = _addclosefrom is not None
_FS_ENCODING = sys.getfilesystemencoding()


def _check(result: int, what: str) -> None:
    # posix_spawn and its helpers return an error number; they do not set errno.
    if result != 0:
        raise OSError(result, f"{what}: {os.strerror(result)}")


def _strings(items: Sequence[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)


def _no_nul(value: bytes, what: str) -> bytes:
    if b"\0" in value:         # a C string would silently end there
        raise ValueError(f"embedded null byte in {what}: {value!r}")
    return value


def _environ(env: Mapping[str, str]) -> list[bytes]:
    out = []
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"illegal environment variable name or value: {key!r}")
        out.append(f"{key}={value}".encode(_FS_ENCODING, "surrogateescape"))   # os.fsencode's rule
    return out


def posix_spawn(path: str, argv: Sequence[str], env: Mapping[str, str], *, cwd: str | None = None,
                dup2: Sequence[tuple[int, int]] = (), close_from: int | None = None, setsid: bool = False,
                default_signals: bool = False, empty_sigmask: bool = False) -> int:
    """Start `path` with `argv` and exactly `env`; return its pid.

    In the child before execve: a new session (`setsid`), every signal's disposition
    SIG_DFL (`default_signals`), an empty signal mask (`empty_sigmask`), each
    (fd, target) of `dup2` in order, every fd from `close_from` up closed where the libc
    can (CAN_CLOSE_FROM; elsewhere only close-on-exec fds close), then chdir(`cwd`).
    Raises OSError with the errno of whichever step failed and `path` as its filename;
    no process is left behind then.
    """
    chdir = _addchdir
    if cwd is not None and chdir is None:
        raise OSError(errno.ENOSYS, "posix_spawn cannot change directory with this libc "
                                    "(needs glibc 2.29 or musl 1.1.24)")
    c_argv = _strings([_no_nul(os.fsencode(a), "argument") for a in argv])
    c_env = _strings(_environ(env))
    actions = ctypes.create_string_buffer(_FILE_ACTIONS_SIZE)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    sigset = ctypes.create_string_buffer(_SIGSET_SIZE)     # each setter copies it into attr
    flags = (POSIX_SPAWN_SETSID if setsid else 0) | (POSIX_SPAWN_SETSIGDEF if default_signals else 0) \
        | (POSIX_SPAWN_SETSIGMASK if empty_sigmask else 0)
    dup2, moved = _sources_above_targets(dup2)
    _libc.posix_spawn_file_actions_init(actions)
    _libc.posix_spawnattr_init(attr)
    try:
        for fd, target in dup2:
            _check(_libc.posix_spawn_file_actions_adddup2(actions, fd, target), "posix_spawn dup2")
        if close_from is not None and _addclosefrom is not None:
            _check(_addclosefrom(actions, close_from), "posix_spawn closefrom")
        if cwd is not None and chdir is not None:
            _check(chdir(actions, _no_nul(os.fsencode(cwd), "directory")), "posix_spawn chdir")
        if default_signals:
            # By hand, not sigfillset(): that leaves out the libc's own signals 32 and 33,
            # and posix_spawn then sets those to SIG_IGN, which execve keeps. Linux's
            # sigset_t is a bit array, bit n-1 for signal n (1..64).
            ctypes.memmove(sigset, b"\xff" * 8, 8)
            _check(_libc.posix_spawnattr_setsigdefault(attr, sigset), "posix_spawnattr_setsigdefault")
        if empty_sigmask:
            _libc.sigemptyset(sigset)
            _check(_libc.posix_spawnattr_setsigmask(attr, sigset), "posix_spawnattr_setsigmask")
        _check(_libc.posix_spawnattr_setflags(attr, flags), "posix_spawnattr_setflags")
        pid = ctypes.c_int(0)
        err = _libc.posix_spawn(ctypes.byref(pid), _no_nul(os.fsencode(path), "path"), actions, attr,
                                c_argv, c_env)
        if err:
            raise OSError(err, os.strerror(err), path)
        return pid.value
    finally:
        _libc.posix_spawnattr_destroy(attr)
        _libc.posix_spawn_file_actions_destroy(actions)
        for fd in moved:
            os.close(fd)


def _sources_above_targets(dup2: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, int]], list[int]]:
    """The dup2 list with every source fd above every target (temporary copies, close-on-exec,
    returned for closing): the dup2s run in order in the child, so a source at or below a
    target could be overwritten by an earlier one, or be a dup2 onto itself, which older
    libcs leave close-on-exec."""
    if not dup2:
        return [], []
    floor = max(target for _, target in dup2) + 1
    out, moved, copies = [], [], {}
    for fd, target in dup2:
        if fd < floor:
            if fd not in copies:
                copies[fd] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
                moved.append(copies[fd])
            fd = copies[fd]
        out.append((fd, target))
    return out, moved
