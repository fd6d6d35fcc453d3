"""ptrace(2), just the parts a signal tap needs: seize, observe stops, resume.

The supervisor seizes its children so that every signal sent to them stops
them first (signal-delivery-stop), which lets it read the sender's siginfo
while the sender is usually still alive, then deliver or suppress the signal.

Thread rule: a tracee is attached to the *thread* that seized it, not to the
process. Every ptrace request for it must come from that thread (others get
ESRCH), and only that thread reliably waits for its stops; the supervisor's
loop thread does both.

waitpid() needs ``__WALL`` to see stops of traced threads (clone children that
are not processes) and ``WNOHANG`` to stay off the loop's critical path.
A tracee in any stop stays stopped until resumed: a tracer that forgets one
leaves a frozen process, and a tracer that exits detaches its tracees (they
resume; pending stops are not replayed).

All requests use the generic numbers shared by x86_64 and aarch64 and raise
OSError(errno, message) on failure.
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass

from relayq_supervisor.linux.siginfo import SIGINFO_SIZE, Siginfo, parse_kernel_siginfo

# Requests (<sys/ptrace.h>, identical on x86_64 and aarch64).
PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208

# Options for PTRACE_SEIZE / PTRACE_SETOPTIONS.
PTRACE_O_TRACESYSGOOD = 0x01
PTRACE_O_TRACEFORK = 0x02
PTRACE_O_TRACEVFORK = 0x04
PTRACE_O_TRACECLONE = 0x08
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEEXIT = 0x40
# Kills every tracee with SIGKILL when the tracer exits. Never use it in the
# supervisor: a supervisor crash or restart must not take Redis down with it.
PTRACE_O_EXITKILL = 0x100000

# Event numbers, found in bits 16..23 of a waitpid status.
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_STOP = 128

EVENT_NAMES: dict[int, str] = {
    PTRACE_EVENT_FORK: "PTRACE_EVENT_FORK",
    PTRACE_EVENT_VFORK: "PTRACE_EVENT_VFORK",
    PTRACE_EVENT_CLONE: "PTRACE_EVENT_CLONE",
    PTRACE_EVENT_EXEC: "PTRACE_EVENT_EXEC",
    PTRACE_EVENT_VFORK_DONE: "PTRACE_EVENT_VFORK_DONE",
    PTRACE_EVENT_EXIT: "PTRACE_EVENT_EXIT",
    PTRACE_EVENT_STOP: "PTRACE_EVENT_STOP",
}

# waitpid() option: wait for all children, threads (clone) included.
__WALL = 0x40000000
# The same value under a name Python does not mangle: inside a class body,
# `ptrace.__WALL` would be rewritten to `ptrace._ClassName__WALL`.
WALL = __WALL

_REQUEST_NAMES = {
    PTRACE_CONT: "PTRACE_CONT",
    PTRACE_DETACH: "PTRACE_DETACH",
    PTRACE_SETOPTIONS: "PTRACE_SETOPTIONS",
    PTRACE_GETEVENTMSG: "PTRACE_GETEVENTMSG",
    PTRACE_GETSIGINFO: "PTRACE_GETSIGINFO",
    PTRACE_SEIZE: "PTRACE_SEIZE",
    PTRACE_INTERRUPT: "PTRACE_INTERRUPT",
    PTRACE_LISTEN: "PTRACE_LISTEN",
}

_libc = ctypes.CDLL(None, use_errno=True)
# glibc declares ptrace variadic; on x86_64 and aarch64 Linux variadic integer
# and pointer arguments travel exactly like fixed ones, so a fixed prototype is safe.
_libc.ptrace.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def _request(request: int, pid: int, addr: int | None, data: int | ctypes.c_void_p | None) -> None:
    # Only PEEK* requests return data through the return value; for the ones
    # here -1 always means failure.
    if _libc.ptrace(request, pid, addr, data) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({_REQUEST_NAMES.get(request, request)}, {pid}): {os.strerror(err)}")


def seize(pid: int, options: int = 0) -> None:
    """Attach to `pid` (a thread id) without stopping it, with PTRACE_O_* `options`."""
    _request(PTRACE_SEIZE, pid, None, options)


def setoptions(pid: int, options: int) -> None:
    """Replace the PTRACE_O_* options of a stopped tracee."""
    _request(PTRACE_SETOPTIONS, pid, None, options)


def cont(pid: int, sig: int = 0) -> None:
    """Resume a stopped tracee; in a signal-delivery-stop, deliver `sig` (0 suppresses it)."""
    _request(PTRACE_CONT, pid, None, sig)


def listen(pid: int) -> None:
    """Leave a tracee in group-stop (stopped, as SIGSTOP meant) while its tracer keeps
    receiving its events; it reports PTRACE_EVENT_STOP again when the stop ends."""
    _request(PTRACE_LISTEN, pid, None, None)


def interrupt(pid: int) -> None:
    """Ask a running tracee to enter a PTRACE_EVENT_STOP (stopsig SIGTRAP) soon."""
    _request(PTRACE_INTERRUPT, pid, None, None)


def detach(pid: int, sig: int = 0) -> None:
    """Release a stopped tracee, delivering `sig` (0: none) as it resumes."""
    _request(PTRACE_DETACH, pid, None, sig)


def getsiginfo(pid: int) -> Siginfo:
    """The siginfo of the signal (or event) the stopped tracee is stopped on."""
    buf = ctypes.create_string_buffer(SIGINFO_SIZE)
    _request(PTRACE_GETSIGINFO, pid, None, ctypes.cast(buf, ctypes.c_void_p))
    return parse_kernel_siginfo(buf.raw)


def geteventmsg(pid: int) -> int:
    """The message of the last event stop: the new tid/pid for CLONE/FORK/VFORK,
    the former thread id for EXEC, the exit status for EXIT."""
    message = ctypes.c_ulong(0)
    _request(PTRACE_GETEVENTMSG, pid, None, ctypes.cast(ctypes.byref(message), ctypes.c_void_p))
    return message.value


_GROUP_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})

WAIT_KINDS = frozenset({"exited", "killed", "signal_stop", "group_stop", "event_stop",
                        "syscall_stop", "continued"})


@dataclass(frozen=True)
class WaitEvent:
    """A decoded waitpid() status of a (possibly traced) child.

    kind: "exited" (exit_code), "killed" (signal, core_dumped), "signal_stop"
    (a signal-delivery-stop of stopsig: resume with cont(pid, stopsig) to
    deliver it, cont(pid, 0) to suppress it), "group_stop" (stopsig is the
    stopping signal; resume with listen()), "event_stop" (event is a
    PTRACE_EVENT_*), "syscall_stop" (only with PTRACE_O_TRACESYSGOOD and
    PTRACE_SYSCALL), "continued" (WCONTINUED).
    """

    kind: str
    status: int
    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False
    stopsig: int | None = None
    event: int = 0

    @property
    def event_name(self) -> str | None:
        return EVENT_NAMES.get(self.event, f"event({self.event})") if self.event else None


def decode_wait_status(status: int) -> WaitEvent:
    """Classify a waitpid() status following ptrace(2)'s rules for seized tracees."""
    if status & 0xFFFF == 0xFFFF:
        return WaitEvent(kind="continued", status=status)
    if status & 0xFF == 0x7F:
        stopsig = (status >> 8) & 0xFF
        event = (status >> 16) & 0xFF
        if event == 0:
            if stopsig == signal.SIGTRAP | 0x80:
                return WaitEvent(kind="syscall_stop", status=status, stopsig=stopsig)
            return WaitEvent(kind="signal_stop", status=status, stopsig=stopsig)
        if event == PTRACE_EVENT_STOP and stopsig in _GROUP_STOP_SIGNALS:
            return WaitEvent(kind="group_stop", status=status, stopsig=stopsig, event=event)
        # PTRACE_EVENT_STOP with SIGTRAP: PTRACE_INTERRUPT, a new clone's first
        # stop, or the end of a listened group-stop; other events likewise.
        return WaitEvent(kind="event_stop", status=status, stopsig=stopsig, event=event)
    termsig = status & 0x7F
    if termsig == 0:
        return WaitEvent(kind="exited", status=status, exit_code=(status >> 8) & 0xFF)
    return WaitEvent(kind="killed", status=status, signal=termsig, core_dumped=bool(status & 0x80))
