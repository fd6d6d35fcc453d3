"""fork + exec of one child, with a gate between them.

The child starts a new session (so its process group id is its pid), resets what Python
changed (ignored SIGPIPE/SIGXFSZ, the blocked signal mask the supervisor reads through
signalfd), and waits on a pipe until the parent has done what must happen before exec
(the signal tap attaches there with PTRACE_SEIZE). Exec failures come back on a
close-on-exec pipe: EOF means exec succeeded, 4 bytes are the errno.
"""
from __future__ import annotations

import os
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass

_RESET_TO_DEFAULT = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM,
                     signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True)
class Spawned:
    pid: int
    pidfd: int
    exec_result_fd: int     # readable once: EOF = exec succeeded, else errno (4 bytes)


def spawn(argv: list[str], env: dict[str, str], cwd: str, output_fd: int,
          before_exec: Callable[[int], None] | None = None) -> Spawned:
    """Start argv; `output_fd` becomes its stdout and stderr, stdin is /dev/null."""
    gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
    result_r, result_w = os.pipe2(os.O_CLOEXEC)
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: only plain syscalls from here to exec
        try:
            os.setsid()
            for sig in _RESET_TO_DEFAULT:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.dup2(devnull, 0)
            os.dup2(output_fd, 1)
            os.dup2(output_fd, 2)
            os.chdir(cwd)
            os.close(gate_w)
            os.read(gate_r, 1)          # EOF once the parent has attached
            os.execvpe(argv[0], argv, env)
        except OSError as e:
            os.write(result_w, struct.pack("i", e.errno or 0))
        except BaseException:
            os.write(result_w, struct.pack("i", 0))
        finally:
            os._exit(127)
    os.close(gate_r)
    os.close(result_w)
    os.close(devnull)
    try:
        pidfd = os.pidfd_open(pid)
        if before_exec is not None:
            before_exec(pid)
    finally:
        os.close(gate_w)
    return Spawned(pid=pid, pidfd=pidfd, exec_result_fd=result_r)


def read_exec_result(fd: int) -> int | None:
    """None when exec succeeded, else the errno the child saw. Closes fd."""
    try:
        data = os.read(fd, 4)
    finally:
        os.close(fd)
    return struct.unpack("i", data)[0] if len(data) == 4 else None
