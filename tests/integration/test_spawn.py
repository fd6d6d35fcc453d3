"""core.spawn and linux.posix_spawn with real children: what every way of starting one gives it,
the gate, the tap at the gate, and how failures are reported.

Every child is SIGKILLed and reaped by pid at teardown; waits poll /proc with a deadline.
"""
from __future__ import annotations

import errno
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import support
from support.children import Children, reap, started_children

from relayq_supervisor.core import spawn as spawn_mod
from relayq_supervisor.core.spawn import (
    GATE_NAME,
    GATE_UNRELEASED,
    read_exec_result,
    spawn,
)
from relayq_supervisor.linux import cgroups, ptrace
from relayq_supervisor.linux import posix_spawn as libc_spawn
from relayq_supervisor.linux.siginfo import Siginfo
from relayq_supervisor.witness.tap import SignalTap

DEADLINE = 10.0
SLEEP = shutil.which("sleep")
KILL = "/bin/kill"
# read(2)'s number: a child blocked at the gate shows it first in /proc/PID/syscall
READ_SYSCALL = {"x86_64": 0, "aarch64": 63}.get(platform.machine())

needs_gate = pytest.mark.skipif(spawn_mod.GATE_SHELL is None or not libc_spawn.CAN_CHDIR,
                                reason="no dash, or a libc without posix_spawn chdir: only the fork path here")


children = pytest.fixture(started_children)


@pytest.fixture
def output() -> Iterator[tuple[int, int]]:
    """A pipe for the child's stdout/stderr: (read end, non-blocking; write end)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def wait_for(predicate: Callable[[], object], what: str, timeout: float = DEADLINE):
    return support.wait_for(predicate, timeout, 0.002, what)


def wait_exit(pid: int, timeout: float = DEADLINE) -> int:
    """The wait status of `pid`'s end; stops of a traced child are let go on the way."""
    status = reap(pid, timeout)
    assert status is not None, f"pid {pid} was reaped elsewhere"
    return status


def status_field(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(name + ":"))


def exe_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def wait_exec(pid: int, program: str) -> None:
    """Until `pid` runs `program` and its exec is done: /proc/PID/exe changes mid-execve,
    before the new argv is in place (cmdline reads empty until then)."""
    real = os.path.realpath(program)
    wait_for(lambda: exe_of(pid) == real and cmdline(pid), f"pid {pid} to exec {program}")


def wait_asleep(pid: int) -> None:
    """Until `pid` sleeps (state S): past its exec, the dynamic loader still opens and closes
    its libraries (a transient fd 3); `sleep` reaches S only in its nanosleep, after that."""
    def state() -> str:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    wait_for(lambda: state() == "S", f"pid {pid} to sleep")


def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [os.fsdecode(a) for a in f.read().split(b"\0")[:-1]]


def environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [os.fsdecode(e).split("=", 1) for e in f.read().split(b"\0") if e]
    return dict(pairs)


def blocked_in_read(pid: int) -> bool:
    """Whether `pid` sleeps in read(2), per /proc/PID/syscall (dash reads the gate through
    fd 0, its `<&3` redirection, so the fd is not checked)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        return False
    return bool(fields) and fields[0] not in ("running", "-1") and int(fields[0]) == READ_SYSCALL


WAYS = {
    # way: keyword arguments of spawn() that select it
    "gate": lambda: {"before_exec": lambda pid: None},
    "direct": dict,
    "fork": lambda: {"child_setup": lambda: None},
}


def start(children: Children, way: str, argv: list[str], env: dict[str, str], cwd: str, out: int,
          group_fd: int | None = None):
    kwargs = WAYS[way]() if way != "clone" else {"before_exec": lambda pid: None, "cgroup_fd": group_fd}
    child = spawn(argv, env, cwd, out, **kwargs)
    children.add(child.pid)
    assert child.via == way, f"expected the {way} path, got {child.via}"
    return child


@pytest.fixture
def group(tmp_path) -> Iterator[tuple[str, int]]:
    """A cgroup v2 group to be born in (path, fd on its directory); removed after the test."""
    hierarchy = cgroups.own_hierarchy()
    if hierarchy is None or hierarchy.version != 2:
        pytest.skip("the clone way needs a cgroup v2 hierarchy (none mounted where we can see it)")
    path = os.path.join(hierarchy.own, f"relayq-test-spawn-{os.getpid()}-{tmp_path.name}")
    try:
        cgroups.make_new_group(path)
    except OSError as e:
        pytest.skip(f"cannot make a cgroup under {hierarchy.own}: {e.strerror}")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield path, fd
    finally:
        os.close(fd)
        cgroups.kill_all(path, hierarchy)
        wait_for(lambda: cgroups.remove(path), f"{path} removed")


def born_in(way: str, group: tuple[str, int] | None) -> int | None:
    return group[1] if way == "clone" and group is not None else None


@pytest.fixture
def parent_signals() -> Iterator[None]:
    """The supervisor's situation: signals blocked (its signalfd) and one ignored; restored after."""
    saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD,
                                                          signal.SIGUSR1])
    saved_usr2 = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR2, saved_usr2)
        signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)


# ---------------------------------------------------------------- what every way gives the child

ALL_WAYS = [pytest.param("gate", marks=needs_gate), pytest.param("direct", marks=needs_gate), "fork",
            pytest.param("clone", marks=needs_gate)]


@pytest.fixture
def way_group(request, tmp_path) -> tuple[str, int] | None:
    """The group for the clone way (None for the others)."""
    return request.getfixturevalue("group") if request.node.callspec.params.get("way") == "clone" else None


@pytest.mark.parametrize("way", ALL_WAYS)
def test_every_way_gives_the_same_start(way, way_group, children, output, parent_signals, tmp_path):
    _, w = output
    env = {"PATH": os.path.dirname(SLEEP), "RELAYQ_PROGRAM": "w:0", "EMPTY": "", "MULTI": "a\nb c",
           "_": "/usr/bin/python3", "PWD": "/not/where/it/runs"}
    child = start(children, way, ["sleep", "30"], env, str(tmp_path), w, born_in(way, way_group))
    pid = child.pid
    assert read_exec_result(child.exec_result_fd) is None
    wait_exec(pid, SLEEP)
    wait_asleep(pid)
    # a new session and process group of its own
    assert os.getsid(pid) == pid and os.getpgid(pid) == pid
    # nothing blocked, nothing ignored: the parent's mask and SIG_IGN did not leak
    assert int(status_field(pid, "SigBlk"), 16) == 0
    assert int(status_field(pid, "SigIgn"), 16) == 0
    assert os.readlink(f"/proc/{pid}/cwd") == str(tmp_path)
    assert cmdline(pid) == ["sleep", "30"]          # argv[0] as given, found on env's PATH
    assert environ(pid) == env                      # exactly: PWD and _ untouched by the gate's shell
    fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert fds[0] == "/dev/null"
    pipe = f"pipe:[{os.fstat(w).st_ino}]"
    assert fds[1] == pipe and fds[2] == pipe
    assert set(fds) == {0, 1, 2}                    # the gate's pipe is closed before exec
    # the pidfd is this child's
    assert os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED | os.WNOHANG) is None
    os.close(child.pidfd)


@pytest.mark.parametrize("way", ALL_WAYS)
def test_stdout_and_stderr_go_to_the_output_fd(way, way_group, children, output, tmp_path):
    r, w = output
    child = start(children, way, ["/bin/sh", "-c", "echo out; echo err >&2; read x || echo stdin-empty"],
                  {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, born_in(way, way_group))
    os.close(child.pidfd)
    read_exec_result(child.exec_result_fd)
    assert os.waitstatus_to_exitcode(wait_exit(child.pid)) == 0
    os.close(w)
    got = b""
    while chunk := _read_some(r):
        got += chunk
    assert got.decode() == "out\nerr\nstdin-empty\n"


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


@needs_gate
def test_the_gate_passes_every_argument_verbatim(children, output, tmp_path):
    _, w = output
    argv = [sys.executable, "-S", "-c", "import time; time.sleep(30)", "*", "", "a  b", "$HOME", "x\ny", "-c", "'"]
    child = start(children, "gate", argv, {"PATH": "/usr/bin:/bin"}, str(tmp_path), w)
    wait_exec(child.pid, sys.executable)
    assert cmdline(child.pid) == argv
    os.close(child.pidfd)
    read_exec_result(child.exec_result_fd)


@needs_gate
def test_an_environment_the_gate_would_alter_goes_through_the_fork_path(children, output, tmp_path):
    _, w = output
    for odd in ({"NOT-A-SHELL-NAME": "1"}, {"IFS": ":"}, {"PPID": "1"}):
        env = {"PATH": os.path.dirname(SLEEP), **odd}
        child = spawn(["sleep", "30"], env, str(tmp_path), w, before_exec=lambda pid: None)
        children.add(child.pid)
        assert child.via == "fork"
        wait_exec(child.pid, SLEEP)
        assert environ(child.pid) == env
        os.close(child.pidfd)
        read_exec_result(child.exec_result_fd)


# ---------------------------------------------------------------- the gate

@pytest.mark.parametrize("way", [pytest.param("gate", marks=needs_gate), "fork"])
def test_the_gate_holds_the_child_until_before_exec_returns(way, children, output, tmp_path):
    if READ_SYSCALL is None:
        pytest.skip(f"read(2)'s syscall number on {platform.machine()} is not known to this test")
    _, w = output
    marker = tmp_path / "ran"
    seen = {}

    def before_exec(pid: int) -> None:
        children.add(pid)
        # it gets to the gate and stays there, its program not run
        wait_for(lambda: blocked_in_read(pid), "the child to wait at the gate")
        seen["cmdline"] = cmdline(pid)
        seen["ran"] = marker.exists()

    kwargs = {"child_setup": lambda: None} if way == "fork" else {}
    child = spawn(["touch", str(marker)], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, before_exec, **kwargs)
    assert child.via == way
    assert seen["ran"] is False
    if way == "gate":
        assert seen["cmdline"][0] == GATE_NAME
    # released: the program runs, in the same process
    assert os.waitstatus_to_exitcode(wait_exit(child.pid)) == 0
    assert marker.exists()
    os.close(child.pidfd)
    assert read_exec_result(child.exec_result_fd) is None


@needs_gate
def test_the_clone_way_makes_the_child_in_its_group_before_the_gate(group, children, output, tmp_path):
    if READ_SYSCALL is None:
        pytest.skip(f"read(2)'s syscall number on {platform.machine()} is not known to this test")
    path, fd = group
    hierarchy = cgroups.own_hierarchy()
    assert hierarchy is not None
    _, w = output
    seen = {}

    def before_exec(pid: int) -> None:
        children.add(pid)
        wait_for(lambda: blocked_in_read(pid), "the child to wait at the gate")
        seen["group"] = cgroups.group_of(pid, hierarchy)
        seen["cmdline"] = cmdline(pid)

    moved: list[int] = []
    child = spawn([SLEEP, "30"], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, before_exec, cgroup_fd=fd,
                  place=moved.append)
    assert child.via == "clone"
    assert moved == []                  # born there: no move
    assert seen["cmdline"][0] == GATE_NAME
    assert seen["group"] == path
    wait_exec(child.pid, SLEEP)
    assert cgroups.members(path) == [child.pid]
    os.close(child.pidfd)
    assert read_exec_result(child.exec_result_fd) is None


def test_the_fork_path_is_born_in_the_group_too(group, children, output, tmp_path):
    path, fd = group
    hierarchy = cgroups.own_hierarchy()
    assert hierarchy is not None
    _, w = output
    seen = {}

    def before_exec(pid: int) -> None:
        children.add(pid)
        seen["group"] = cgroups.group_of(pid, hierarchy)

    moved: list[int] = []
    child = spawn([SLEEP, "30"], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, before_exec, cgroup_fd=fd,
                  place=moved.append, child_setup=lambda: None)
    assert (child.via, child.born_in_group, moved) == ("fork", True, [])
    assert seen["group"] == path
    wait_exec(child.pid, SLEEP)
    assert cgroups.members(path) == [child.pid]
    os.close(child.pidfd)
    assert read_exec_result(child.exec_result_fd) is None


@needs_gate
def test_without_a_group_fd_the_child_is_moved_at_the_gate_before_before_exec(group, children, output, tmp_path):
    path, _ = group
    _, w = output
    order: list[str] = []

    def place(pid: int) -> None:
        children.add(pid)
        order.append("place")
        cgroups.place(path, pid)

    child = spawn([SLEEP, "30"], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, lambda pid: order.append("before_exec"),
                  place=place)
    assert child.via == "gate"
    assert order == ["place", "before_exec"]
    wait_exec(child.pid, SLEEP)
    assert cgroups.members(path) == [child.pid]
    os.close(child.pidfd)
    read_exec_result(child.exec_result_fd)


@pytest.mark.parametrize("way", [pytest.param("gate", marks=needs_gate), "fork"])
def test_a_gate_never_released_never_runs_the_program(way, children, output, tmp_path):
    _, w = output
    marker = tmp_path / "ran"
    pids = []

    def before_exec(pid: int) -> None:
        pids.append(children.add(pid))
        raise RuntimeError("the tap failed")

    kwargs = {"child_setup": lambda: None} if way == "fork" else {}
    with pytest.raises(RuntimeError):
        spawn(["touch", str(marker)], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, before_exec, **kwargs)
    assert os.waitstatus_to_exitcode(wait_exit(pids[0])) == GATE_UNRELEASED
    assert not marker.exists()


# ---------------------------------------------------------------- the tap at the gate

@needs_gate
def test_the_tap_sees_a_signal_sent_the_moment_spawn_returns(children, output, tmp_path):
    _, w = output
    seen: list[tuple[int, Siginfo]] = []
    tap = SignalTap(lambda tid, info: seen.append((tid, info)) or True)
    tracer = {}

    def before_exec(pid: int) -> None:
        children.add(pid)
        if not tap.attach(pid):
            pytest.skip(f"the kernel refuses PTRACE_SEIZE here: {tap.unavailable}")
        tracer["pid"] = int(status_field(pid, "TracerPid"))

    child = spawn([SLEEP, "30"], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, before_exec)
    assert child.via == "gate"
    assert tracer["pid"] == os.getpid()         # seized while still at the gate
    killer = subprocess.Popen([KILL, "-USR1", str(child.pid)])
    # the first stop is that signal's delivery: no exec stop (no PTRACE_O_TRACEEXEC) before it
    deadline = time.monotonic() + DEADLINE
    ended = None
    while ended is None:
        assert time.monotonic() < deadline, "the signal never reached the tap"
        done, status = os.waitpid(child.pid, os.WNOHANG | ptrace.WALL)
        if done == 0:
            time.sleep(0.002)
            continue
        event = ptrace.decode_wait_status(status)
        assert event.kind in ("signal_stop", "killed"), event
        ended = tap.handle(done, status)
    assert killer.wait(timeout=DEADLINE) == 0
    assert [(tid, info.signo, info.pid) for tid, info in seen] == [(child.pid, signal.SIGUSR1, killer.pid)]
    assert (ended.kind, ended.signal) == ("killed", signal.SIGUSR1)   # delivered, as the callback said
    children.pids.remove(child.pid)     # reaped above
    os.close(child.pidfd)
    read_exec_result(child.exec_result_fd)


@needs_gate
def test_the_program_runs_traced_without_stopping_at_exec(children, output, tmp_path):
    _, w = output
    tap = SignalTap(lambda tid, info: True)

    def before_exec(pid: int) -> None:
        children.add(pid)
        if not tap.attach(pid):
            pytest.skip(f"the kernel refuses PTRACE_SEIZE here: {tap.unavailable}")

    child = spawn([SLEEP, "30"], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, before_exec)
    wait_exec(child.pid, SLEEP)                 # reached without anyone resuming a stop
    assert int(status_field(child.pid, "TracerPid")) == os.getpid()
    wait_for(lambda: status_field(child.pid, "State").startswith("S"), "sleep to sleep")
    assert os.waitpid(child.pid, os.WNOHANG | ptrace.WALL) == (0, 0)
    os.close(child.pidfd)
    read_exec_result(child.exec_result_fd)


# ---------------------------------------------------------------- failures

@pytest.mark.parametrize("tap", [False, True], ids=["no-before-exec", "before-exec"])
def test_a_program_not_on_path_reports_enoent_and_exits_127(tap, children, output, tmp_path):
    _, w = output
    before_exec = children.add if tap else None
    child = spawn(["no-such-program-relayq"], {"PATH": str(tmp_path)}, str(tmp_path), w, before_exec)
    children.add(child.pid)
    assert child.via == "fork"      # the failure is reported the one way it always was
    assert read_exec_result(child.exec_result_fd) == errno.ENOENT
    assert os.waitstatus_to_exitcode(wait_exit(child.pid)) == 127
    os.close(child.pidfd)


@pytest.mark.parametrize("tap", [False, True], ids=["no-before-exec", "before-exec"])
def test_a_file_that_is_not_executable_reports_eacces(tap, children, output, tmp_path):
    _, w = output
    script = tmp_path / "prog"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o644)
    assert not os.access(script, os.X_OK)      # even for root: execve needs one x bit
    child = spawn([str(script)], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, children.add if tap else None)
    children.add(child.pid)
    assert read_exec_result(child.exec_result_fd) == errno.EACCES
    assert os.waitstatus_to_exitcode(wait_exit(child.pid)) == 127
    os.close(child.pidfd)


def test_a_missing_directory_reports_enoent(children, output, tmp_path):
    _, w = output
    child = spawn([SLEEP, "1"], {"PATH": "/usr/bin:/bin"}, str(tmp_path / "gone"), w, children.add)
    children.add(child.pid)
    assert read_exec_result(child.exec_result_fd) == errno.ENOENT
    assert os.waitstatus_to_exitcode(wait_exit(child.pid)) == 127
    os.close(child.pidfd)


@needs_gate
def test_an_exec_failure_past_the_checks_is_told_by_the_gate_shell(children, output, tmp_path):
    # executable, found, but its interpreter is missing: only execve itself can tell
    r, w = output
    script = tmp_path / "prog"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    child = spawn([str(script)], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, children.add)
    children.add(child.pid)
    assert child.via == "gate"
    assert read_exec_result(child.exec_result_fd) is None       # not known to the parent
    assert os.waitstatus_to_exitcode(wait_exit(child.pid)) == 127
    os.close(w)
    said = _read_some(r).decode()
    assert said.startswith(f"{GATE_NAME}: ") and str(script) in said, said
    os.close(child.pidfd)


def test_child_setup_runs_in_the_child_after_the_gate(children, output, tmp_path):
    _, w = output
    parent = os.umask(0)
    os.umask(parent)
    wanted = 0o077 if parent != 0o077 else 0o027
    at_gate = []

    def before_exec(pid: int) -> None:
        children.add(pid)
        at_gate.append(int(status_field(pid, "Umask"), 8))

    child = spawn([SLEEP, "30"], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, before_exec,
                  child_setup=lambda: os.umask(wanted))
    assert child.via == "fork"
    wait_exec(child.pid, SLEEP)
    assert at_gate == [parent]                  # not yet applied while the tap attaches
    assert int(status_field(child.pid, "Umask"), 8) == wanted
    assert read_exec_result(child.exec_result_fd) is None
    os.close(child.pidfd)


def test_an_oserror_in_child_setup_is_reported_like_an_exec_failure(children, output, tmp_path):
    _, w = output

    def refuse() -> None:
        raise PermissionError(errno.EPERM, "setuid refused")

    child = spawn([SLEEP, "30"], {"PATH": "/usr/bin:/bin"}, str(tmp_path), w, child_setup=refuse)
    children.add(child.pid)
    assert read_exec_result(child.exec_result_fd) == errno.EPERM
    assert os.waitstatus_to_exitcode(wait_exit(child.pid)) == 127
    os.close(child.pidfd)


# ---------------------------------------------------------------- linux.posix_spawn

def own_children() -> set[int]:
    found = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            found.update(int(p) for p in f.read().split())
    return found


@pytest.mark.skipif(not libc_spawn.CAN_CHDIR, reason="libc without posix_spawn chdir")
def test_posix_spawn_raises_the_errno_and_leaves_no_child(tmp_path):
    before = own_children()
    with pytest.raises(FileNotFoundError) as missing:
        libc_spawn.posix_spawn(str(tmp_path / "nothing"), ["nothing"], {})
    assert missing.value.filename == str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        libc_spawn.posix_spawn(SLEEP, ["sleep", "1"], {}, cwd=str(tmp_path / "no-dir"))
    assert own_children() <= before         # glibc reaped its failed child itself


def test_posix_spawn_dup2_sources_are_not_clobbered_by_earlier_targets(children):
    # (a -> b) then (b -> c): c must get the original b, and a dup2 onto itself must survive exec
    a_r, a_w = os.pipe2(os.O_CLOEXEC)
    b_r, b_w = os.pipe2(os.O_CLOEXEC)
    fds = [a_r, a_w, b_r, b_w]
    try:
        a, b, c = 200, 201, 202
        os.dup2(a_w, a, inheritable=False)
        os.dup2(b_w, b, inheritable=False)
        fds += [a, b]
        pid = children.add(libc_spawn.posix_spawn(SLEEP, ["sleep", "30"], {}, dup2=((a, b), (b, c), (a, a))))
        wait_exec(pid, SLEEP)

        def inode(fd: int) -> int:
            return os.stat(f"/proc/{pid}/fd/{fd}").st_ino

        assert inode(b) == os.fstat(a_w).st_ino
        assert inode(c) == os.fstat(b_w).st_ino
        assert inode(a) == os.fstat(a_w).st_ino
    finally:
        for fd in fds:
            os.close(fd)


def test_posix_spawn_resets_every_signal_including_the_libcs_own(children, parent_signals):
    # glibc's posix_spawn sets its internal signals (32, 33) to SIG_IGN unless asked to default them
    pid = children.add(libc_spawn.posix_spawn(SLEEP, ["sleep", "30"], {}, default_signals=True,
                                              empty_sigmask=True))
    wait_exec(pid, SLEEP)
    assert int(status_field(pid, "SigIgn"), 16) == 0
    assert int(status_field(pid, "SigBlk"), 16) == 0


# ---------------------------------------------------------------- through the supervisor

@pytest.mark.parametrize("tap", [True, False], ids=["tap", "no-tap"])
def test_a_program_gone_from_disk_is_reported_by_name_and_errno(tap, make_supervisor, port, tmp_path):
    from support import redis_config
    script = tmp_path / "prog"
    script.write_text("#!/bin/sh\nexec sleep 300\n")
    script.chmod(0o755)
    programs = f"""
    [[program]]
    name = "prog"
    command = ["{script}"]
    ready_after = 0.1
    [program.restart]
    stable_after = 0.1
    """
    sup = make_supervisor(redis_config(None, port, programs=programs,
                                       supervisor_extra=f"signal_tap = {'true' if tap else 'false'}")).start()
    first = sup.wait_state("prog", "RUNNING")
    wait_for(lambda: sup.program("prog")["uptime_s"] >= 0.2, "a stable run")
    script.unlink()
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: f"prog: exec of {script} failed: No such file or directory" in sup.log(),
             "the exec failure in the supervisor's log")
