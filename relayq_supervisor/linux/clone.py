"""clone3(2) with CLONE_INTO_CGROUP through ctypes: a fork whose child is born in a cgroup.

Moving a process into a cgroup (writing cgroup.procs) takes cgroup_threadgroup_rwsem for
writing, which waits for an RCU grace period (several ms, more on a busy machine) unless
the hierarchy is mounted with favordynmods; a child created with CLONE_INTO_CGROUP is
placed by the fork itself, which takes that lock only for reading (clone(2), Linux 5.7,
cgroup v2 only). glibc gained posix_spawnattr_setcgroup_np for this in 2.41; older libcs
have no wrapper, so the syscall is made directly.

The call is a fork of this process without glibc's or Python's fork handlers: the child
has only the calling thread, and a lock another thread held at the call stays held in
the child. So callers use it only while this process runs a single thread, and the child
runs a few plain syscalls and execs. The GIL is held across the call (PyDLL).
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import struct

CLONE_INTO_CGROUP = 0x200000000
# clone3's number is the same on every architecture (the unified syscall table, 5.3+)
_SYS_CLONE3 = 435
# struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2): eleven u64 fields
_ARGS = struct.Struct("=11Q")

_libc = ctypes.PyDLL(None, use_errno=True)      # PyDLL: the GIL stays held; the child returns holding it
_libc.syscall.restype = ctypes.c_long

# where the kernel or its policy refuses clone3 or CLONE_INTO_CGROUP: the caller moves the child instead
REFUSED = frozenset({errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.E2BIG})


def fork_into_cgroup(cgroup_fd: int) -> int:
    """fork(2) with the child born in the cgroup (v2) whose directory `cgroup_fd` is open on.
    Returns 0 in the child, the child's pid in the parent; raises OSError (no child made)."""
    args = ctypes.create_string_buffer(_ARGS.pack(CLONE_INTO_CGROUP, 0, 0, 0, int(signal.SIGCHLD),
                                                  0, 0, 0, 0, 0, cgroup_fd), _ARGS.size)
    pid = _libc.syscall(_SYS_CLONE3, args, ctypes.c_size_t(_ARGS.size))
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"clone3 into cgroup: {os.strerror(err)}")
    return int(pid)
