"""The signal tap: sees every signal sent to a supervised child, and who sent it.

The supervisor is the parent of every child, so it may trace them. It seizes each
child while it waits at spawn's gate, before the program's first instruction, with
TRACECLONE so every thread, including ones made later, is traced. Not TRACEEXEC: a
PTRACE_SEIZEd tracee gets no SIGTRAP on exec without it (only PTRACE_ATTACH/TRACEME
tracees do), the former thread id it reports after an exec from a non-leader thread is
of no use to a tap that keeps no per-thread state, and with it every start would stop
at exec until the loop answered.
At each signal-delivery-stop the kernel's siginfo names the sender; the decision to
deliver or suppress is the caller's (`on_signal`), and must be quick: the tracee is
resumed (with the signal, or without it) before anything slow happens. Reading who the
sender is comes after (`Decision.then`), the sender pinned by a pidfd opened in the stop:
a storm of signals then costs the tracee one getsiginfo and one resume per signal, not
an inspection of /proc. Everything here is ptrace(2):
- group-stop (SIGSTOP/SIGTSTP/...) of a seized tracee is reported as PTRACE_EVENT_STOP
  and must be answered with PTRACE_LISTEN, so the process really stays stopped and a
  later SIGCONT still reaches us;
- other event stops (clone, a new thread's first stop, PTRACE_INTERRUPT) resume with no signal;
- a tracee belongs to the thread that seized it: all calls come from the loop thread;
- PTRACE_O_EXITKILL is never set: a supervisor crash must not take Redis with it.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import NamedTuple

from relayq_supervisor.linux import ptrace
from relayq_supervisor.linux.siginfo import Siginfo

OPTIONS = ptrace.PTRACE_O_TRACECLONE


class Decision(NamedTuple):
    deliver: bool
    then: Callable[[], None] | None = None      # run once the tracee is resumed


class SignalTap:
    def __init__(self, on_signal: Callable[[int, Siginfo], bool | Decision]):
        self.on_signal = on_signal          # (tid, siginfo) -> deliver? (and what to do after)
        self.unavailable: str | None = None
        self.signal_stops = 0

    @property
    def state(self) -> str:
        return f"unavailable ({self.unavailable})" if self.unavailable else "attached"

    def attach(self, pid: int) -> bool:
        """Seize a freshly spawned child (still waiting at spawn's gate)."""
        if self.unavailable:
            return False
        try:
            ptrace.seize(pid, OPTIONS)
            return True
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EINVAL):
                self.unavailable = f"ptrace refused: {e.strerror}"
                return False
            raise

    def attach_running(self, pid: int) -> bool:
        """Seize a running process that is not our child (adopted after a crash): every
        thread, since PTRACE_SEIZE attaches one thread and only later clones follow."""
        if self.unavailable:
            return False
        try:
            tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        except OSError:
            return False
        for tid in tids:
            try:
                ptrace.seize(tid, OPTIONS)
            except ProcessLookupError:
                continue            # a thread that ended meanwhile
            except OSError:
                if tid == pid:
                    return False    # refused for this one (not root?): children may still be seized
        return True

    def handle(self, tid: int, status: int) -> ptrace.WaitEvent | None:
        """Take one waitpid() result. Stops are answered here and give None; exits
        (of any thread) come back to the caller."""
        ev = ptrace.decode_wait_status(status)
        if ev.kind in ("exited", "killed"):
            return ev
        try:
            if ev.kind == "signal_stop" and ev.stopsig is not None:
                self.deliver_or_suppress(tid, ev.stopsig)
            elif ev.kind == "group_stop":
                ptrace.listen(tid)
            else:                           # event stops, syscall stops
                ptrace.cont(tid, 0)
        except ProcessLookupError:
            pass                            # killed (SIGKILL) while stopped: its exit follows
        return None

    def deliver_or_suppress(self, tid: int, stopsig: int) -> None:
        try:
            info = ptrace.getsiginfo(tid)
        except ProcessLookupError:
            return
        self.signal_stops += 1
        decision = Decision(True)
        try:
            answer = self.on_signal(tid, info)
            decision = answer if isinstance(answer, Decision) else Decision(bool(answer))
        finally:        # whatever the callback did, never leave a tracee stopped
            try:
                ptrace.cont(tid, stopsig if decision.deliver else 0)
            except ProcessLookupError:
                pass    # killed (SIGKILL) while stopped: its exit follows; the record still is made
        if decision.then is not None:
            decision.then()
