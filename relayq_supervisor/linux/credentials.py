"""A program's user, groups, limits, niceness, umask and no_new_privs, set in the
child between spawn's gate and exec (core/spawn.py's `child_setup`, the fork path).

Order matters. Limits and niceness come first: raising a hard limit or lowering
niceness takes CAP_SYS_RESOURCE / CAP_SYS_NICE, which the change of user drops.
Then setgroups, setresgid, setresuid: the first two need CAP_SETGID, gone once the
uid is not 0 (setresuid(2): a change away from uid 0 clears the permitted and
effective capabilities). no_new_privs last: it is one-way and harmless after.

The signal tap has seized the child before this runs; a tracee that changes its uid
stays traced when its tracer has CAP_SYS_PTRACE (the supervisor as root), so no
signal to the program goes unseen (tests/integration/test_privilege.py checks it).
"""
from __future__ import annotations

import errno
import os
import resource
from collections.abc import Callable

from relayq_supervisor.config.model import RLIMITS, Privileges
from relayq_supervisor.linux import prctl


def apply(priv: Privileges) -> None:
    """In the child: plain syscalls only (the names were resolved at config load). A step
    that fails is named on the child's stderr (its log, and `why`'s last output) and
    raised as OSError, which spawn reports like an exec failure."""
    step = ""
    try:
        for name, soft, hard in priv.limits:
            step = f"limits.{name}"
            try:
                resource.setrlimit(getattr(resource, RLIMITS[name]), (soft, hard))
            except ValueError as e:     # Python's word for setrlimit's EPERM (and EINVAL)
                raise OSError(errno.EPERM, str(e)) from None
        if priv.nice is not None:
            step = "nice"
            os.setpriority(os.PRIO_PROCESS, 0, priv.nice)
        if priv.uid is not None and priv.gid is not None:
            step = f"user {priv.user}"
            os.setgroups(list(priv.groups))
            os.setresgid(priv.gid, priv.gid, priv.gid)
            os.setresuid(priv.uid, priv.uid, priv.uid)
        if priv.umask is not None:
            os.umask(priv.umask)
        if priv.no_new_privileges:
            step = "no_new_privileges"
            prctl.set_no_new_privs()
    except OSError as e:
        os.write(2, f"relayq-supervisor: cannot set {step} before exec: {e.strerror or e}\n".encode())
        raise


def child_setup(priv: Privileges) -> Callable[[], None] | None:
    """spawn()'s `child_setup` for a program, or None when nothing needs changing (the
    program then keeps the fast posix_spawn gate)."""
    return (lambda: apply(priv)) if priv.in_child else None
