"""Tests for relayq_supervisor.linux: real signals, real tracees, real subreapers (the pure
siginfo and wait-status decoding is in tests/unit/test_linux.py).

ptrace calls stay on the test's main thread (tracees belong to the thread that
seized them). Every child is SIGKILLed and reaped by pid in a fixture, so a
test that fails mid-way cannot leave a stopped process behind.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from support.children import Children, started_children

from relayq_supervisor.linux import prctl, ptrace
from relayq_supervisor.linux.ptrace import decode_wait_status
from relayq_supervisor.linux.siginfo import CLD_EXITED, SI_USER, Siginfo
from relayq_supervisor.linux.signalfd import SignalFd, unblock_in_child

KILL = "/bin/kill"
SLEEP = "/bin/sleep"
DEADLINE = 10.0


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def signal_mask() -> Iterator[None]:
    """Restores the test process's signal mask and SIGUSR1/SIGRTMIN handlers.

    No-op Python handlers stand in for the defaults while the test runs, so a
    signal left pending when a mask is restored cannot kill pytest.
    """
    saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    saved = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGUSR1, signal.SIGRTMIN)}
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


children = pytest.fixture(started_children)


def wait_event(pid: int, timeout: float = DEADLINE) -> ptrace.WaitEvent:
    """The next waitpid() report for `pid` (a pid or a traced tid), polled with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, ptrace.WALL | os.WNOHANG)
        if done == pid:
            return decode_wait_status(status)
        time.sleep(0.001)
    raise AssertionError(f"no wait status from {pid} within {timeout}s")


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    return text[text.rindex(")") + 2]


def wait_state(pid: int, states: str, timeout: float = DEADLINE) -> str:
    deadline = time.monotonic() + timeout
    state = proc_state(pid)
    while state not in states:
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} stayed in state {state!r}, expected one of {states!r}")
        time.sleep(0.002)
        state = proc_state(pid)
    return state


def tracer_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    raise AssertionError("no TracerPid line")


def fork_held_exec(children: Children, argv: list[str]) -> tuple[int, int]:
    """Fork a child that execs `argv` once the returned pipe fd is written or closed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(write_end)
            os.read(read_end, 1)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    os.close(read_end)
    children.add(pid)
    return pid, write_end


def seize_or_skip(pid: int, options: int) -> None:
    try:
        ptrace.seize(pid, options)
    except PermissionError as exc:
        pytest.skip(f"the kernel refuses PTRACE_SEIZE here: {exc}")


def seized_exec(children: Children, argv: list[str]) -> int:
    """A child seized before it execs `argv`, resumed past its PTRACE_EVENT_EXEC stop."""
    pid, release = fork_held_exec(children, argv)
    seize_or_skip(pid, ptrace.PTRACE_O_TRACECLONE | ptrace.PTRACE_O_TRACEEXEC)
    os.close(release)
    stop = wait_event(pid)
    assert (stop.kind, stop.event) == ("event_stop", ptrace.PTRACE_EVENT_EXEC)
    ptrace.cont(pid, 0)
    return pid


def run_in_child(children: Children, body: Callable[[], object]) -> object:
    """Run `body` in a forked child (so process-wide settings stay out of pytest); return its JSON result."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                payload = {"ok": body()}
            except BaseException as exc:  # reported to the parent, which fails the test
                payload = {"error": repr(exc)}
            os.write(write_end, json.dumps(payload).encode())
        finally:
            os._exit(0)
    children.add(pid)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + DEADLINE
    try:
        while True:
            ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "child did not report in time"
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    result = json.loads(b"".join(chunks))
    assert "error" not in result, result["error"]
    return result["ok"]


def read_records(sfd: SignalFd, count: int, timeout: float = DEADLINE) -> list[Siginfo]:
    records: list[Siginfo] = []
    deadline = time.monotonic() + timeout
    while len(records) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(records)} of {count} signal records arrived: {records}"
        ready, _, _ = select.select([sfd], [], [], remaining)
        if ready:
            records.extend(sfd.read_all())
    return records


def blocked_signals() -> set[int]:
    return {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])}


# ---------------------------------------------------------------- signalfd

def test_signalfd_reads_own_kill_with_sender(signal_mask: None) -> None:
    before = blocked_signals()
    with SignalFd([signal.SIGUSR1]) as sfd:
        assert signal.SIGUSR1 in blocked_signals()
        assert sfd.read_all() == []  # nothing pending: returns at once
        os.kill(os.getpid(), signal.SIGUSR1)
        (record,) = read_records(sfd, 1)
    assert record.signo == signal.SIGUSR1
    assert (record.pid, record.uid) == (os.getpid(), os.getuid())
    assert record.code == SI_USER and record.code_name == "SI_USER"
    assert sfd.closed
    assert blocked_signals() == before


def test_signalfd_reports_the_kill_process_pid(signal_mask: None) -> None:
    with SignalFd([signal.SIGUSR1]) as sfd:
        killer = subprocess.Popen([KILL, "-USR1", str(os.getpid())])
        assert killer.wait(timeout=DEADLINE) == 0
        (record,) = read_records(sfd, 1)
    assert record.pid == killer.pid
    assert record.code_name == "SI_USER"


def test_signalfd_sigchld_carries_child_exit(signal_mask: None, children: Children) -> None:
    with SignalFd([signal.SIGCHLD]) as sfd:
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        children.add(pid)
        records = read_records(sfd, 1)
        (_, status) = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 7
    record = next(r for r in records if r.pid == pid)
    assert (record.signo, record.code, record.code_name, record.status) == (
        signal.SIGCHLD, CLD_EXITED, "CLD_EXITED", 7)


def test_standard_signals_coalesce_realtime_signals_queue(signal_mask: None) -> None:
    rt = signal.SIGRTMIN
    with SignalFd([signal.SIGUSR1, rt]) as sfd:
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), rt)
        records = read_records(sfd, 4)
        records += sfd.read_all()
    assert sum(r.signo == signal.SIGUSR1 for r in records) == 1
    assert sum(r.signo == rt for r in records) == 3


def test_close_returns_pending_records_and_unblocks_only_its_own(signal_mask: None) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    sfd = SignalFd([signal.SIGUSR1, signal.SIGUSR2])
    os.kill(os.getpid(), signal.SIGUSR1)
    select.select([sfd], [], [], DEADLINE)
    leftover = sfd.close()
    assert [r.signo for r in leftover] == [signal.SIGUSR1]
    mask = blocked_signals()
    assert signal.SIGUSR1 not in mask
    assert signal.SIGUSR2 in mask  # was blocked before this SignalFd: stays blocked
    assert sfd.close() == []
    with pytest.raises(ValueError):
        sfd.fileno()


def test_signalfd_refuses_unblockable_signals(signal_mask: None) -> None:
    with pytest.raises(ValueError):
        SignalFd([signal.SIGKILL])
    with pytest.raises(ValueError):
        SignalFd([])


def sigblk_of(preexec: Callable[[], None] | None) -> int:
    # grep exec'd directly: shells such as dash clear the mask at startup and would hide it.
    out = subprocess.run(["/bin/grep", "^SigBlk:", "/proc/self/status"],
                         preexec_fn=preexec, capture_output=True, text=True, check=True, timeout=DEADLINE)
    return int(out.stdout.split()[1], 16)


def test_children_inherit_the_mask_unless_unblocked(signal_mask: None) -> None:
    bit = 1 << (signal.SIGUSR1 - 1)
    with SignalFd([signal.SIGUSR1, signal.SIGTERM]) as sfd:
        assert sigblk_of(None) & bit, "the blocked mask is inherited across fork and exec"
        assert not sigblk_of(lambda: unblock_in_child(sfd.signals)) & bit


# ---------------------------------------------------------------- ptrace

def test_ptrace_exec_event_then_suppress_then_deliver(children: Children) -> None:
    pid, release = fork_held_exec(children, [SLEEP, "30"])
    seize_or_skip(pid, ptrace.PTRACE_O_TRACECLONE | ptrace.PTRACE_O_TRACEEXEC)
    assert tracer_pid(pid) == os.getpid()
    os.close(release)

    exec_stop = wait_event(pid)
    assert (exec_stop.kind, exec_stop.event, exec_stop.stopsig) == (
        "event_stop", ptrace.PTRACE_EVENT_EXEC, signal.SIGTRAP)
    assert ptrace.geteventmsg(pid) == pid  # the exec'ing thread was the leader
    ptrace.cont(pid, 0)

    killer = subprocess.Popen([KILL, "-USR1", str(pid)])
    delivery = wait_event(pid)
    assert (delivery.kind, delivery.stopsig) == ("signal_stop", signal.SIGUSR1)
    info = ptrace.getsiginfo(pid)
    assert (info.signo, info.pid, info.uid, info.code_name) == (
        signal.SIGUSR1, killer.pid, os.getuid(), "SI_USER")
    assert killer.wait(timeout=DEADLINE) == 0

    ptrace.cont(pid, 0)  # suppressed: SIGUSR1 would have killed sleep
    wait_state(pid, "SR")  # still alive, sleeping
    assert os.waitpid(pid, ptrace.WALL | os.WNOHANG) == (0, 0)

    os.kill(pid, signal.SIGTERM)
    term = wait_event(pid)
    assert (term.kind, term.stopsig) == ("signal_stop", signal.SIGTERM)
    assert ptrace.getsiginfo(pid).pid == os.getpid()
    ptrace.cont(pid, signal.SIGTERM)
    death = wait_event(pid)
    assert (death.kind, death.signal) == ("killed", signal.SIGTERM)


def test_ptrace_group_stop_and_listen(children: Children) -> None:
    pid = seized_exec(children, [SLEEP, "30"])

    os.kill(pid, signal.SIGSTOP)
    delivery = wait_event(pid)
    assert (delivery.kind, delivery.stopsig) == ("signal_stop", signal.SIGSTOP)
    ptrace.cont(pid, signal.SIGSTOP)
    group = wait_event(pid)
    assert (group.kind, group.stopsig, group.event) == ("group_stop", signal.SIGSTOP, ptrace.PTRACE_EVENT_STOP)

    ptrace.listen(pid)
    # Under PTRACE_LISTEN the kernel shows a traced group-stop as 't' (tracing stop), not 'T'.
    wait_state(pid, "Tt")
    assert os.waitpid(pid, ptrace.WALL | os.WNOHANG) == (0, 0)  # listening counts as running

    os.kill(pid, signal.SIGCONT)
    # Ending the group-stop first re-traps the listener (PTRACE_EVENT_STOP, SIGTRAP);
    # the SIGCONT itself follows as a signal-delivery-stop.
    seen = []
    for _ in range(4):
        stop = wait_event(pid)
        seen.append(stop)
        if stop.kind == "signal_stop":
            break
        assert (stop.kind, stop.event, stop.stopsig) == ("event_stop", ptrace.PTRACE_EVENT_STOP, signal.SIGTRAP)
        ptrace.cont(pid, 0)
    assert (seen[-1].kind, seen[-1].stopsig) == ("signal_stop", signal.SIGCONT), seen
    assert ptrace.getsiginfo(pid).pid == os.getpid()
    ptrace.cont(pid, signal.SIGCONT)
    assert wait_state(pid, "S") == "S"


def test_ptrace_clone_event_traces_new_thread(children: Children) -> None:
    script = "import threading; t = threading.Thread(target=lambda: None); t.start(); t.join()"
    pid = seized_exec(children, [sys.executable, "-c", script])

    clone = wait_event(pid)
    assert (clone.kind, clone.event) == ("event_stop", ptrace.PTRACE_EVENT_CLONE), clone
    tid = ptrace.geteventmsg(pid)
    children.add(tid)
    assert tid != pid and os.path.exists(f"/proc/{pid}/task/{tid}")
    ptrace.cont(pid, 0)

    # The auto-attached thread starts in a PTRACE_EVENT_STOP; until it is resumed
    # the thread never runs and join() never returns.
    first = wait_event(tid)
    assert (first.kind, first.event, first.stopsig) == ("event_stop", ptrace.PTRACE_EVENT_STOP, signal.SIGTRAP)
    assert tracer_pid(tid) == os.getpid()
    ptrace.cont(tid, 0)

    assert wait_event(tid).kind == "exited"
    end = wait_event(pid)
    assert (end.kind, end.exit_code) == ("exited", 0)


def test_ptrace_interrupt_and_detach(children: Children) -> None:
    pid = seized_exec(children, [SLEEP, "30"])
    with pytest.raises(OSError) as not_stopped:
        ptrace.cont(pid, 0)  # requests other than INTERRUPT need a stopped tracee
    assert not_stopped.value.errno == errno.ESRCH
    assert "PTRACE_CONT" in str(not_stopped.value)

    ptrace.interrupt(pid)
    stop = wait_event(pid)
    assert (stop.kind, stop.event, stop.stopsig) == ("event_stop", ptrace.PTRACE_EVENT_STOP, signal.SIGTRAP)
    ptrace.setoptions(pid, ptrace.PTRACE_O_TRACEEXEC)
    ptrace.detach(pid, 0)
    assert tracer_pid(pid) == 0
    assert wait_state(pid, "S") == "S"


# ---------------------------------------------------------------- prctl

def test_subreaper_adopts_orphaned_grandchild(children: Children) -> None:
    def subreaper() -> dict[str, object]:
        before = prctl.is_child_subreaper()
        prctl.set_child_subreaper(True)
        hold_read, hold_write = os.pipe()
        report_read, report_write = os.pipe()
        middle = os.fork()
        if middle == 0:
            grandchild = os.fork()
            if grandchild == 0:
                os.close(hold_write)
                os.read(hold_read, 1)  # held until the subreaper has looked at it
                os._exit(0)
            os.write(report_write, str(grandchild).encode())
            os._exit(0)
        os.close(report_write)
        os.close(hold_read)
        grandchild = int(os.read(report_read, 32))
        os.waitpid(middle, 0)
        # Reparenting happens as the middle process exits, before it is reaped.
        with open(f"/proc/{grandchild}/stat") as stat:
            text = stat.read()
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        os.close(hold_write)
        reaped, status = os.waitpid(grandchild, 0)  # ECHILD unless it is ours now
        return {"before": before, "after": prctl.is_child_subreaper(), "me": os.getpid(),
                "middle": middle, "grandchild": grandchild, "ppid": ppid,
                "reaped": reaped, "exit": os.waitstatus_to_exitcode(status)}

    result = run_in_child(children, subreaper)
    assert result["before"] is False and result["after"] is True
    assert result["ppid"] == result["me"] != result["middle"]
    assert (result["reaped"], result["exit"]) == (result["grandchild"], 0)


def test_pdeathsig_and_name(children: Children) -> None:
    def body() -> dict[str, object]:
        prctl.set_pdeathsig(signal.SIGTERM)
        deathsig = prctl.get_pdeathsig()
        prctl.set_name("relayq-test-thread-name")
        with open("/proc/self/comm") as comm:
            shown = comm.read().strip()
        return {"deathsig": deathsig, "name": prctl.get_name(), "comm": shown}

    result = run_in_child(children, body)
    assert result["deathsig"] == signal.SIGTERM
    assert result["name"] == result["comm"] == "relayq-test-thr"
