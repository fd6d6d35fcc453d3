"""siginfo and wait-status decoding from bytes and integers. Real signals, tracees and
subreapers are in tests/integration/test_linux.py."""

from __future__ import annotations

import os
import signal
import struct

import pytest

from relayq_supervisor.linux import ptrace
from relayq_supervisor.linux.ptrace import decode_wait_status
from relayq_supervisor.linux.siginfo import (
    CLD_EXITED,
    CLD_KILLED,
    SI_KERNEL,
    SI_QUEUE,
    SI_TIMER,
    SI_TKILL,
    SI_USER,
    Siginfo,
    code_name,
    is_user_sent,
    parse_kernel_siginfo,
    parse_signalfd_siginfo,
    sender_is_verified,
)

# ---------------------------------------------------------------- siginfo (pure)

def test_code_names_cover_process_and_child_codes() -> None:
    assert code_name(signal.SIGTERM, SI_USER) == "SI_USER"
    assert code_name(signal.SIGTERM, SI_TKILL) == "SI_TKILL"
    assert code_name(signal.SIGKILL, SI_KERNEL) == "SI_KERNEL"
    assert code_name(signal.SIGCHLD, CLD_EXITED) == "CLD_EXITED"
    assert code_name(signal.SIGCHLD, 6) == "CLD_CONTINUED"
    assert code_name(signal.SIGSEGV, 1) == "kernel(1)"
    assert code_name(signal.SIGCHLD, SI_USER) == "SI_USER"


def test_user_sent_and_verified_sender() -> None:
    assert is_user_sent(SI_USER) and is_user_sent(SI_TKILL) and is_user_sent(SI_QUEUE)
    assert not is_user_sent(SI_KERNEL) and not is_user_sent(CLD_EXITED)
    assert sender_is_verified(SI_USER) and sender_is_verified(SI_TKILL)
    assert not sender_is_verified(SI_QUEUE) and not sender_is_verified(SI_KERNEL)


def kernel_siginfo(signo: int, code: int, *union: int) -> bytes:
    """A 64-bit siginfo_t whose union starts with (si_pid, si_uid, si_status)."""
    head = struct.pack("=iii4x", signo, 0, code) + struct.pack("=" + "iIi"[:len(union)], *union)
    return head.ljust(128, b"\0")


def test_parse_kernel_siginfo_layouts() -> None:
    kill = parse_kernel_siginfo(kernel_siginfo(signal.SIGTERM, SI_USER, 4242, 1000))
    assert (kill.signo, kill.code, kill.pid, kill.uid, kill.status) == (signal.SIGTERM, SI_USER, 4242, 1000, 0)
    assert kill.code_name == "SI_USER" and kill.signal_name == "SIGTERM"

    child = parse_kernel_siginfo(kernel_siginfo(signal.SIGCHLD, CLD_KILLED, 77, 0, signal.SIGKILL))
    assert (child.pid, child.status, child.code_name) == (77, signal.SIGKILL, "CLD_KILLED")

    # A fault keeps its address where a sender would be: no pid/uid may be read from it.
    fault = parse_kernel_siginfo(struct.pack("=iii4xQ", signal.SIGSEGV, 0, 1, 0xDEADBEEF0).ljust(128, b"\0"))
    assert (fault.pid, fault.uid) == (0, 0)
    timer = parse_kernel_siginfo(kernel_siginfo(signal.SIGALRM, SI_TIMER, 3, 9))
    assert (timer.pid, timer.uid) == (0, 0)
    with pytest.raises(ValueError):
        parse_kernel_siginfo(b"\0" * 8)


def test_parse_signalfd_siginfo_layout() -> None:
    record = struct.pack("=IiiIIiIIIIi", signal.SIGCHLD, 0, CLD_EXITED, 1234, 1000, 0, 0, 0, 0, 0, 7)
    info = parse_signalfd_siginfo(record.ljust(128, b"\0"))
    assert info == Siginfo(signo=signal.SIGCHLD, errno=0, code=CLD_EXITED, pid=1234, uid=1000, status=7)
    with pytest.raises(ValueError):
        parse_signalfd_siginfo(record)


# ---------------------------------------------------------------- decode_wait_status (pure)

def stopped(sig: int, event: int = 0) -> int:
    return (event << 16) | (sig << 8) | 0x7F


def test_decode_exit_and_death() -> None:
    exited = decode_wait_status(3 << 8)
    assert (exited.kind, exited.exit_code) == ("exited", 3)
    killed = decode_wait_status(signal.SIGTERM)
    assert (killed.kind, killed.signal, killed.core_dumped) == ("killed", signal.SIGTERM, False)
    dumped = decode_wait_status(0x80 | signal.SIGSEGV)
    assert (dumped.kind, dumped.signal, dumped.core_dumped) == ("killed", signal.SIGSEGV, True)
    assert decode_wait_status(0xFFFF).kind == "continued"


def test_decode_signal_delivery_stop() -> None:
    stop = decode_wait_status(stopped(signal.SIGUSR1))
    assert (stop.kind, stop.stopsig, stop.event) == ("signal_stop", signal.SIGUSR1, 0)
    # A plain SIGSTOP without an event is its delivery-stop, not yet a group-stop.
    assert decode_wait_status(stopped(signal.SIGSTOP)).kind == "signal_stop"
    assert os.WIFSTOPPED(stopped(signal.SIGUSR1)) and os.WSTOPSIG(stopped(signal.SIGUSR1)) == signal.SIGUSR1


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU])
def test_decode_group_stop(sig: int) -> None:
    stop = decode_wait_status(stopped(sig, ptrace.PTRACE_EVENT_STOP))
    assert (stop.kind, stop.stopsig, stop.event) == ("group_stop", sig, ptrace.PTRACE_EVENT_STOP)


@pytest.mark.parametrize("event", [ptrace.PTRACE_EVENT_CLONE, ptrace.PTRACE_EVENT_EXEC,
                                   ptrace.PTRACE_EVENT_FORK, ptrace.PTRACE_EVENT_STOP])
def test_decode_event_stop(event: int) -> None:
    stop = decode_wait_status(stopped(signal.SIGTRAP, event))
    assert (stop.kind, stop.event, stop.stopsig) == ("event_stop", event, signal.SIGTRAP)
    assert stop.event_name == ptrace.EVENT_NAMES[event]


def test_decode_syscall_stop() -> None:
    assert decode_wait_status(stopped(signal.SIGTRAP | 0x80)).kind == "syscall_stop"
