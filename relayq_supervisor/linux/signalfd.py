"""signalfd(2): signals as readable records on a file descriptor.

The signals are blocked in the calling thread and read, with their siginfo
(sender pid and uid), from a non-blocking fd that an event loop can poll.

Kernel facts the caller must live with:

* Standard signals (1..31) coalesce: while one is pending, another of the same
  number is dropped and only the first sender's siginfo survives. One SIGCHLD
  record may stand for many child events, so always reap with
  ``waitpid(-1, WNOHANG)`` in a loop; never count records. Real-time signals
  (SIGRTMIN..SIGRTMAX) queue, each with its own siginfo.
* The mask is per thread. Block before starting any thread (threads inherit the
  creator's mask); a thread that does not block a process-directed signal may
  take it instead of the signalfd.
* The blocked mask survives fork(2) AND execve(2): children must unblock
  (`unblock_in_child`) between fork and exec or they start deaf to these
  signals (a redis-server that ignores SIGTERM, for example).
* A signalfd always reads the signals of the process that calls read(2), not
  of its creator; the fd is close-on-exec.
* SIGCHLD must not be set to SIG_IGN: the kernel then auto-reaps children and
  sends no SIGCHLD at all.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Iterable

from relayq_supervisor.linux.siginfo import SIGINFO_SIZE, Siginfo, parse_signalfd_siginfo

SFD_NONBLOCK = os.O_NONBLOCK
SFD_CLOEXEC = os.O_CLOEXEC

# Records fetched per read(2); the kernel returns as many whole records as fit.
_RECORDS_PER_READ = 32

_libc = ctypes.CDLL(None, use_errno=True)
_libc.signalfd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.signalfd.restype = ctypes.c_int


class _SigsetT(ctypes.Structure):
    # glibc's sigset_t is 1024 bits; the signalfd() wrapper passes the kernel's
    # 64-bit prefix of it. Signal n is bit (n-1), word-wise in native order.
    _fields_ = [("val", ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong))))]


def _sigset(signals: Iterable[int]) -> _SigsetT:
    sigset = _SigsetT()
    bits = 8 * ctypes.sizeof(ctypes.c_ulong)
    for sig in signals:
        sigset.val[(sig - 1) // bits] |= 1 << ((sig - 1) % bits)
    return sigset


def unblock_in_child(signals: Iterable[int]) -> None:
    """Unblock `signals` in a freshly forked child, before it execs.

    The blocked mask is inherited across fork and exec, so without this a
    supervised program would start with SIGTERM, SIGCHLD... blocked.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, list(signals))


class SignalFd:
    """Blocks `signals` in the calling thread and reads them from a signalfd.

    Usable as a context manager; `close` restores the mask.
    """

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals: frozenset[int] = frozenset(int(s) for s in signals)
        if not self.signals:
            raise ValueError("SignalFd needs at least one signal")
        for sig in self.signals:
            if sig in (signal.SIGKILL, signal.SIGSTOP):
                raise ValueError(f"signal {sig} cannot be blocked or read from a signalfd")
        self._previously_blocked = frozenset(
            int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, self.signals))
        fd = _libc.signalfd(-1, ctypes.byref(_sigset(self.signals)), SFD_NONBLOCK | SFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            self._restore_mask()
            raise OSError(err, f"signalfd: {os.strerror(err)}")
        self._fd: int | None = fd

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("signalfd is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def read_all(self) -> list[Siginfo]:
        """Every pending record, in the kernel's order; [] when none. Never blocks."""
        fd = self.fileno()
        records: list[Siginfo] = []
        while True:
            try:
                data = os.read(fd, SIGINFO_SIZE * _RECORDS_PER_READ)
            except BlockingIOError:
                return records
            if not data:
                return records
            for offset in range(0, len(data) - SIGINFO_SIZE + 1, SIGINFO_SIZE):
                records.append(parse_signalfd_siginfo(data[offset:offset + SIGINFO_SIZE]))

    def close(self) -> list[Siginfo]:
        """Close the fd and unblock the signals this object blocked.

        Returns the records still pending, read just before unblocking, so they
        are neither lost unseen nor delivered with their default action (which
        for SIGTERM/SIGUSR1 would end the process). A signal arriving after that
        read and before the unblock is delivered normally.
        """
        if self._fd is None:
            return []
        try:
            leftover = self.read_all()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)
            self._restore_mask()
        return leftover

    def _restore_mask(self) -> None:
        # Unblock only what we blocked: another SignalFd, or the caller, may
        # rely on the rest of the mask.
        ours = self.signals - self._previously_blocked
        if ours:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, ours)

    def __enter__(self) -> SignalFd:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SignalFd fd={self._fd} signals={sorted(self.signals)}>"
