"""Starting one child: one call, three ways to get there.

Every way gives the child the same start (the tests check it on real children): a new
session (pgid == sid == pid); stdin /dev/null; stdout and stderr on `output_fd`; every
signal's disposition SIG_DFL and an empty mask (the supervisor blocks signals for its
signalfd, and a blocked mask survives exec); `cwd`; exactly `env`; argv unchanged, argv[0]
looked up on env's PATH as os.execvpe does; no other fd open (with glibc < 2.34 the
posix_spawn ways rely on close-on-exec for that). When `before_exec` is given it runs
with the child's pid before the program's first instruction: the signal tap seizes the
child there, so no signal to the program goes unseen.

gate (before_exec given): posix_spawn(3) of dash running GATE_SCRIPT, which blocks
    reading a pipe; before_exec(pid) runs; one newline releases the gate, which execs the
    program in place (same pid). posix_spawn is vfork-like: nothing of the supervisor's
    ~35 MiB is copied and no Python runs in the child. It costs about 0.5 ms more than
    posix_spawn of the program itself, the fork path about 3 ms (bench/spawn_cost.py).
clone (before_exec and a cgroup v2 group given): the same gate, but the child is made by
    clone3(CLONE_INTO_CGROUP), a fork born in its run's group, then execs the gate at
    once: a move into the group at the gate (`place`) waits for an RCU grace period, about
    10 ms (core/containment.py), where this fork costs about 1 ms. Taken only while this
    process runs one thread (linux/clone.py says why); else, or where the kernel refuses
    it, the gate path and `place`.
direct (no before_exec, no place): posix_spawn of the program itself.
fork: os.fork() of the supervisor (clone3 into the group, as the clone way, where a group
    is given and that way can be taken), Python in the child up to the same kind of gate,
    then os.execvpe. Taken
    - when `child_setup` is given: the only way to run code in the child between the gate
      and exec: linux/credentials.py's user, groups, rlimits, nice, umask and
      PR_SET_NO_NEW_PRIVS for a program that sets any of them (issue 17);
    - when the fast ways cannot keep the contract: no dash, a libc without posix_spawn
      chdir (glibc < 2.29), or an environment or argv[0] dash would alter (gate_is_exact);
    - when the program cannot be started: nothing executable on PATH, or posix_spawn
      failed (a missing cwd, say). The fork path then tries the same exec and reports it
      as it always has, errno on exec_result_fd and exit status 127, so an exec failure
      reaches the caller as an exit, under its restart rules.

Left to the gate's shell: an exec that fails after those checks (an executable file that
is not a valid binary, a #! interpreter that is missing). dash writes
`relayq-gate: 1: exec: PROG: REASON` to the program's output and exits 126 or 127; the
parent learns no errno. Like execvp(3), dash runs an executable text file without #! as a
shell script.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import signal
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NoReturn

from relayq_supervisor.linux import clone
from relayq_supervisor.linux import posix_spawn as libc_spawn

# Every signal a disposition can be set for (SIGKILL and SIGSTOP cannot be caught or ignored).
_RESET_TO_DEFAULT = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))

# dash, not whatever /bin/sh is: bash would add SHLVL and _ to the program's environment and
# read $BASH_ENV. dash starts in ~0.3 ms and links only libc.
GATE_SHELL = next((p for p in ("/usr/bin/dash", "/bin/dash") if os.access(p, os.X_OK)), None)
GATE_NAME = "relayq-gate"       # the gate's $0: names it in ps and in its error messages
# fd 3 is the gate pipe; the supervisor writes one newline to release it and otherwise
# closes it, so a supervisor that dies mid-spawn leaves no untraced program behind (exit
# 125). dash sets PWD at start-up: $1 puts back the caller's value ("=VALUE") or its
# absence ("-"). Then fd 3 is closed and the program replaces the shell.
GATE_SCRIPT = ('read -r relayq_gate <&3 || exit 125; exec 3<&-; '
               'case $1 in -) unset PWD ;; *) PWD=${1#=} ;; esac; shift; exec "$@"')
GATE_UNRELEASED = 125
# Names dash reassigns at start-up whatever the environment says, and the gate's variable.
_DASH_OWNS = frozenset({"IFS", "OPTIND", "PPID", "relayq_gate"})
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Spawned:
    pid: int
    pidfd: int
    exec_result_fd: int     # readable once: EOF = no exec failure known, else errno (4 bytes)
    via: str = "fork"       # "clone", "gate", "direct" or "fork": which way it started (see the module doc)
    born_in_group: bool = False     # made in the group of cgroup_fd: no move was needed


# Why the clone way is not tried any more (the kernel refused clone3 or CLONE_INTO_CGROUP), or None.
clone_refused: str | None = None


def spawn(argv: list[str], env: dict[str, str], cwd: str, output_fd: int,
          before_exec: Callable[[int], None] | None = None, *,
          child_setup: Callable[[], None] | None = None,
          cgroup_fd: int | None = None, place: Callable[[int], None] | None = None) -> Spawned:
    """Start argv in cwd with env; `output_fd` becomes its stdout and stderr, stdin is /dev/null.

    before_exec(pid) runs in this process while the child waits at the gate (the signal
    tap attaches there). child_setup() runs in the forked child after the gate, just
    before exec: plain syscalls only; an OSError from it is reported like an exec failure.
    The child's group: it is born in the group `cgroup_fd` is open on (a cgroup v2
    directory) where the clone way can be taken; otherwise place(pid) moves it there at
    the gate, before before_exec.
    Raises what before_exec or place raises (the child then exits at the gate, its
    program never run), or OSError when no process could be made at all (fork or pipe failed).
    """
    path = _startable(argv[0], env, cwd) if child_setup is None and libc_spawn.CAN_CHDIR else None
    spawned = None
    at_gate = _placed_then(place, before_exec)
    born_in = cgroup_fd if _can_clone() else None
    if path is not None:
        if at_gate is None:
            spawned = _spawn_direct(path, argv, env, cwd, output_fd)
        elif GATE_SHELL is not None and gate_is_exact(env, argv[0]):
            if born_in is not None:
                spawned = _spawn_cloned(GATE_SHELL, argv, env, cwd, output_fd, born_in, before_exec)
            spawned = spawned or _spawn_gated(GATE_SHELL, argv, env, cwd, output_fd, at_gate)
    return spawned or _spawn_forked(argv, env, cwd, output_fd, at_gate, child_setup,
                                    born_in if clone_refused is None else None, before_exec)


def _can_clone() -> bool:
    """clone3 forks without glibc's and Python's fork handlers: only while this process runs
    one thread (linux/clone.py), from the main one (the child resets signal handlers)."""
    return clone_refused is None and threading.active_count() == 1 \
        and threading.current_thread() is threading.main_thread()


def _clone_into(cgroup_fd: int) -> int | None:
    """clone.fork_into_cgroup, or None where the kernel refuses it (remembered: not tried again)."""
    global clone_refused
    try:
        return clone.fork_into_cgroup(cgroup_fd)
    except OSError as e:
        if e.errno in clone.REFUSED:
            clone_refused = e.strerror or str(e)
        return None


def _placed_then(place: Callable[[int], None] | None,
                 before_exec: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """What runs at the gate of a child that is not born in its group: the move, then before_exec."""
    if place is None:
        return before_exec

    def at_gate(pid: int) -> None:
        place(pid)
        if before_exec is not None:
            before_exec(pid)
    return at_gate


def read_exec_result(fd: int) -> int | None:
    """None when exec succeeded (or no failure is known), else the errno the child saw. Closes fd."""
    try:
        data = os.read(fd, 4)
    finally:
        os.close(fd)
    return struct.unpack("i", data)[0] if len(data) == 4 else None


def find_executable(name: str, env: Mapping[str, str], cwd: str) -> str:
    """The absolute path of the file os.execvpe(name, ..., env) would run from `cwd`.

    Raises OSError like execvp(3): EACCES when a candidate exists but is not an executable
    regular file and none further on is, ENOENT when there is no candidate at all."""
    candidates = [name] if "/" in name else [os.path.join(d, name) for d in os.get_exec_path(env)]
    refused: OSError | None = None
    for candidate in candidates:
        # absolute: posix_spawn changes directory before execve, so a relative path would move
        full = os.path.abspath(os.path.join(cwd, candidate))
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            refused = refused or e
            continue
        if stat.S_ISREG(st.st_mode) and os.access(full, os.X_OK):
            return full
        refused = refused or OSError(errno.EACCES, os.strerror(errno.EACCES), full)
    raise refused or OSError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _startable(name: str, env: Mapping[str, str], cwd: str) -> str | None:
    try:
        return find_executable(name, env, cwd)
    except OSError:
        return None                 # the fork path tries, and reports the errno as it always did


def gate_is_exact(env: Mapping[str, str], program: str) -> bool:
    """Whether the program exec'd by the dash gate gets exactly `env` and its own argv[0]:
    dash drops names that are not shell identifiers and rewrites a few of its own; without
    PATH it would search its built-in path rather than os.defpath; and a later dash could
    take a leading "-" for an option of `exec` (0.5.12 does not)."""
    if program.startswith("-") or ("/" not in program and "PATH" not in env):
        return False
    return all(_SHELL_NAME.match(k) and k not in _DASH_OWNS for k in env)


def _no_exec_result() -> int:
    """A result fd that reads EOF at once: posix_spawn already reported any exec failure."""
    r, w = os.pipe2(os.O_CLOEXEC)
    os.close(w)
    return r


def _spawn_direct(path: str, argv: list[str], env: dict[str, str], cwd: str, output_fd: int) -> Spawned | None:
    result = _no_exec_result()
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = libc_spawn.posix_spawn(path, argv, env, cwd=cwd, dup2=((devnull, 0), (output_fd, 1), (output_fd, 2)),
                                     close_from=3, setsid=True, default_signals=True, empty_sigmask=True)
    except OSError:
        os.close(result)
        return None
    finally:
        os.close(devnull)
    try:
        return Spawned(pid=pid, pidfd=os.pidfd_open(pid), exec_result_fd=result, via="direct")
    except BaseException:
        os.kill(pid, signal.SIGKILL)    # our unreaped child: the pid cannot name another process
        os.close(result)
        raise


def _spawn_gated(shell: str, argv: list[str], env: dict[str, str], cwd: str, output_fd: int,
                 before_exec: Callable[[int], None]) -> Spawned | None:
    result = _no_exec_result()
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = libc_spawn.posix_spawn(shell, _gate_argv(argv, env), env,
                                     cwd=cwd, dup2=((devnull, 0), (output_fd, 1), (output_fd, 2), (gate_r, 3)),
                                     close_from=4, setsid=True, default_signals=True, empty_sigmask=True)
    except OSError:
        os.close(gate_w)
        os.close(result)
        return None
    finally:
        os.close(gate_r)
        os.close(devnull)
    return _release(pid, gate_w, before_exec, result, via="gate")


def _gate_argv(argv: list[str], env: dict[str, str]) -> list[str]:
    pwd = "=" + env["PWD"] if "PWD" in env else "-"
    return [GATE_NAME, "-c", GATE_SCRIPT, GATE_NAME, pwd, *argv]


def _spawn_cloned(shell: str, argv: list[str], env: dict[str, str], cwd: str, output_fd: int, cgroup_fd: int,
                  before_exec: Callable[[int], None] | None) -> Spawned | None:
    """The gate, in a child born in its group (clone3 CLONE_INTO_CGROUP). None where the
    kernel refuses (the caller takes the gate path and moves the child)."""
    gate_argv = _gate_argv(argv, env)
    # exec sets caught signals to SIG_DFL itself, but not ignored ones; and a caught one must not
    # run our handler in the child before exec: both are reset, the rest already are SIG_DFL (every
    # page the child touches before exec is a copy of ours)
    reset = [sig for sig in _RESET_TO_DEFAULT if signal.getsignal(sig) != signal.SIG_DFL]
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    result_r, result_w = os.pipe2(os.O_CLOEXEC)
    if result_w <= 3:       # fd 3 becomes the gate pipe in the child
        result_w, low = fcntl.fcntl(result_w, fcntl.F_DUPFD_CLOEXEC, 4), result_w
        os.close(low)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    pid = _clone_into(cgroup_fd)
    if pid is None:
        for fd in (gate_r, gate_w, result_r, result_w, devnull):
            os.close(fd)
        return None
    if pid == 0:    # child: one thread, a copy of ours; plain syscalls, then the gate's exec
        def to_gate() -> None:
            os.dup2(gate_r, 3)
            os.set_inheritable(3, True)     # dup2 onto itself would keep close-on-exec
            os.chdir(cwd)
            os.closerange(4, result_w)      # all but the result pipe, itself close-on-exec
            os.closerange(result_w + 1, os.sysconf("SC_OPEN_MAX"))
            os.execve(shell, gate_argv, env)
        _child(reset, devnull, output_fd, result_w, to_gate)
    os.close(gate_r)
    os.close(result_w)
    os.close(devnull)
    return _release(pid, gate_w, before_exec, result_r, via="clone", born_in_group=True)


def _child(reset: Iterable[int], devnull: int, output_fd: int, result_w: int, then: Callable[[], None]) -> NoReturn:
    """A forked child's start, whichever fork made it: a session of its own, signals at their
    defaults and unblocked, stdin /dev/null, stdout and stderr the output; then `then`, which
    execs. A failure is written to the result pipe (its errno, or 0) and the child exits 127:
    nothing may return into the parent's Python."""
    try:
        os.setsid()
        for sig in reset:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.dup2(devnull, 0)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        then()
    except OSError as e:
        os.write(result_w, struct.pack("i", e.errno or 0))
    except BaseException:   # noqa: BLE001
        os.write(result_w, struct.pack("i", 0))
    finally:
        os._exit(127)


def _release(pid: int, gate_w: int, before_exec: Callable[[int], None] | None, result: int, via: str,
             born_in_group: bool = False) -> Spawned:
    """The parent's side of a gate: pidfd, before_exec, then open the gate. If anything
    here fails the gate is closed unopened, so the child exits without running the program."""
    pidfd = -1
    try:
        pidfd = os.pidfd_open(pid)
        if before_exec is not None:
            before_exec(pid)
        try:
            os.write(gate_w, b"\n")
        except BrokenPipeError:
            pass        # it died at the gate (a signal, say): an exit the caller reaps like any other
        return Spawned(pid=pid, pidfd=pidfd, exec_result_fd=result, via=via, born_in_group=born_in_group)
    except BaseException:
        if pidfd >= 0:
            os.close(pidfd)
        os.close(result)
        raise
    finally:
        os.close(gate_w)


def _spawn_forked(argv: list[str], env: dict[str, str], cwd: str, output_fd: int,
                  at_gate: Callable[[int], None] | None, child_setup: Callable[[], None] | None,
                  cgroup_fd: int | None = None, before_exec: Callable[[int], None] | None = None) -> Spawned:
    """fork + exec with the gate in Python. Exec failures come back on a close-on-exec
    pipe: EOF means exec succeeded, 4 bytes are the errno. With `cgroup_fd` the fork is
    clone3's into that group where the kernel allows, and only before_exec runs at the
    gate (no move); else os.fork() and at_gate (the move, then before_exec)."""
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    result_r, result_w = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    cloned = _clone_into(cgroup_fd) if cgroup_fd is not None else None
    pid = cloned if cloned is not None else os.fork()
    if pid == 0:  # child: only plain syscalls from here to exec
        def at_gate_then_exec() -> None:
            os.chdir(cwd)
            os.close(gate_w)
            if os.read(gate_r, 1) != b"\n":
                os._exit(GATE_UNRELEASED)
            if child_setup is not None:
                child_setup()
            os.closerange(3, result_w)      # all but the result pipe, itself close-on-exec
            os.closerange(result_w + 1, os.sysconf("SC_OPEN_MAX"))
            os.execvpe(argv[0], argv, env)
        _child(_RESET_TO_DEFAULT, devnull, output_fd, result_w, at_gate_then_exec)
    os.close(gate_r)
    os.close(result_w)
    os.close(devnull)
    if cloned is not None:
        return _release(pid, gate_w, before_exec, result_r, via="fork", born_in_group=True)
    return _release(pid, gate_w, at_gate, result_r, via="fork")
