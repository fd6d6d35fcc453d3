"""The kernel witness with real processes: short-lived `sh -c kill` senders named with their
parent, SIGKILL included; the tracefs instance's life; the filter following a restart.

Needs root and tracefs in the initial pid namespace; skipped (with the reason) elsewhere.
tracefs is mounted for the module if it was not, and unmounted afterwards.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import textwrap

import pytest
from support import wait_for

from relayq_supervisor.linux import tracefs
from relayq_supervisor.witness.trace_instance import in_initial_pid_namespace

# above PID_MAX_LIMIT (2^22): no process ever has it; one per test run, since the system's tracefs
# is shared by every run on the machine (two runs at once collided on one fixed name)
GONE_PID = 4_200_000 + os.getpid()
FIXTURE_MOUNTED = False     # tracefs was mounted for these tests (not the system's)


@pytest.fixture(scope="module")
def tracing_root():
    if os.geteuid() != 0:
        pytest.skip("the kernel witness needs root (tracefs instances)")
    if not in_initial_pid_namespace():
        pytest.skip("tests run in a child pid namespace: tracepoint pids are not ours")
    root = tracefs.find_mount()
    mounted = None
    if root is None:
        try:
            tracefs.mount(tracefs.DEFAULT_MOUNT)
        except OSError as e:
            pytest.skip(f"cannot mount tracefs: {e}")
        root = mounted = tracefs.DEFAULT_MOUNT
        global FIXTURE_MOUNTED
        FIXTURE_MOUNTED = True
    if not os.path.isdir(os.path.join(root, "instances")):
        pytest.skip(f"{root} has no instances directory (kernel too old?)")
    yield root
    if mounted:
        # the supervisors under test removed their instances; EBUSY would mean one leaked
        remove_instances_of_dead_supervisors(mounted)
        tracefs.umount(mounted)


def remove_instances_of_dead_supervisors(root: str) -> None:
    """Instances left by supervisors killed with SIGKILL (here or by another test run on the
    machine); a live supervisor's instance is never touched."""
    for name in tracefs.list_instances(root):
        pid = name.removeprefix("relayq-")
        if name.startswith("relayq-") and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            tracefs.remove_instance(tracefs.instance_path(root, name))


def program_config(*, protect: bool = False, tap: bool = True) -> str:
    return textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"
        signal_tap = {"true" if tap else "false"}

        [[program]]
        name = "target"
        command = ["/bin/sleep", "100000"]
        protect = {"true" if protect else "false"}
        ready_after = 0.2
        [program.restart]
        stable_after = 0.5
        backoff_initial = 0.1
        """)


def audit_events(sup, kind=None):
    return sup.audit_events(kind)


def signals_to(sup, pid, name):
    return [e for e in audit_events(sup, "signal") if e["target"]["pid"] == pid and e["signal"] == name]


def start(make_supervisor, tracing_root, **kw):
    sup = make_supervisor(program_config(**kw)).start()
    st = sup.wait_state("target", "RUNNING")
    status = sup.status()["supervisor"]
    assert status["kernel_trace"] == "watching", status
    return sup, st["pid"]


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("TracerPid:")).split()[1])


def short_lived_kill(signame: str, pid: int, sup=None) -> tuple[int, int]:
    """`sh -c "sh -c 'kill ...'"`: the inner sh sends the signal and exits, reaped by the
    outer one. With `sup`, the supervisor is stopped meanwhile, so both shells are gone
    before it can look at /proc: only the trace can name them. (inner pid, outer pid)."""
    if sup is not None:
        os.kill(sup.pid, signal.SIGSTOP)
        wait_for(lambda: proc_state(sup.pid) == "T", what="supervisor stopped")
    try:
        outer = subprocess.Popen(["sh", "-c", f"sh -c 'echo $$; kill -{signame} {pid}'; true"],
                                 stdout=subprocess.PIPE, text=True)
        out, _ = outer.communicate(timeout=10)
    finally:
        if sup is not None:
            os.kill(sup.pid, signal.SIGCONT)
    return int(out.split()[0]), outer.pid


def test_sigkill_from_a_short_lived_sh_is_named_with_its_parent(make_supervisor, tracing_root):
    sup, pid = start(make_supervisor, tracing_root)
    sh_pid, outer = short_lived_kill("9", pid, sup)
    again = sup.wait_state("target", "RUNNING", restarts=1)
    [event] = signals_to(sup, pid, "SIGKILL")
    sender = event["sender"]
    assert (event["via"], event["code"], event["action"]) == ("tracefs", "SI_USER", "delivered")
    assert (sender["pid"], sender["comm"], sender["alive"], sender["seen_by"]) == (sh_pid, "sh", False, "tracefs")
    assert sender["exe"].endswith("sh")
    assert [(a["pid"], a["comm"]) for a in sender["ancestry"][:1]] == [(outer, "sh")]
    assert sender["ancestry"][1]["pid"] == os.getpid()     # alive: read from /proc, up to pid 1
    assert sender["ancestry"][-1]["pid"] == 1
    assert f"from pid {sh_pid} sh <- pid {outer} " in again["last_exit"]["description"]
    why = sup.ctl("why", "target", check=True).stdout
    assert f"sent by: pid {sh_pid} sh" in why and f"parent: pid {outer} sh" in why
    [exit_event] = [e for e in audit_events(sup, "exit") if e["pid"] == pid]
    assert exit_event["sender"]["pid"] == sh_pid


def test_an_unprotected_program_is_not_seized_and_its_sigterm_named_from_the_trace(make_supervisor, tracing_root):
    sup, pid = start(make_supervisor, tracing_root)         # the tap is on; the witness attributes
    assert tracer_of(pid) == 0
    sh_pid, outer = short_lived_kill("TERM", pid, sup)
    again = sup.wait_state("target", "RUNNING", restarts=1)
    assert tracer_of(again["pid"]) == 0
    assert f"killed by SIGTERM, from pid {sh_pid} sh <- pid {outer} " in again["last_exit"]["description"]
    [event] = signals_to(sup, pid, "SIGTERM")
    assert (event["via"], event["sender"]["pid"], event["sender"]["comm"]) == ("tracefs", sh_pid, "sh")
    assert (event["sender"]["ancestry"][0]["pid"], event["sender"]["ancestry"][0]["comm"]) == (outer, "sh")
    assert event["sender"]["ancestry"][1]["pid"] == os.getpid()


def test_sigterm_to_a_protected_program_is_blocked_and_its_gone_sender_named(make_supervisor, tracing_root):
    sup, pid = start(make_supervisor, tracing_root, protect=True)
    assert tracer_of(pid) == sup.pid                        # protected: seized, the guard needs the tap
    sh_pid, outer = short_lived_kill("TERM", pid, sup)
    event = wait_for(lambda: signals_to(sup, pid, "SIGTERM"), what="the SIGTERM recorded")[0]
    assert (event["via"], event["action"]) == ("ptrace", "blocked")       # the tap still guards
    # the tap found the sender gone: the trace named it
    assert (event["sender"]["pid"], event["sender"]["comm"], event["sender"]["seen_by"]) == (sh_pid, "sh", "tracefs")
    assert event["sender"]["ancestry"][0]["pid"] == outer
    assert sup.program("target")["pid"] == pid


def test_a_script_gone_before_the_supervisor_looked_is_named_with_the_command_line_read_at_its_exec(
        make_supervisor, tracing_root):
    sup, pid = start(make_supervisor, tracing_root)
    command = f"read go; kill -TERM {pid}"
    script = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: proc_state(script.pid) == "S", what="the script waiting")
        before = sup.status()["supervisor"]["kernel_trace_stats"]["exec_captures"]
        # a capture pass after this moment has read the script's exec (the loop answers
        # status between passes); ctl's own python execs make one happen
        wait_for(lambda: sup.status()["supervisor"]["kernel_trace_stats"]["exec_captures"] > before,
                 what="a capture pass")
        os.kill(sup.pid, signal.SIGSTOP)        # the script signals and exits unseen
        wait_for(lambda: proc_state(sup.pid) == "T", what="supervisor stopped")
        script.communicate("go\n", timeout=10)
    finally:
        os.kill(sup.pid, signal.SIGCONT)
    again = sup.wait_state("target", "RUNNING", restarts=1)
    [event] = signals_to(sup, pid, "SIGTERM")
    sender = event["sender"]
    assert (sender["pid"], sender["seen_by"], sender["alive"], sender["captured"]) == \
        (script.pid, "tracefs", False, True)
    assert sender["cmdline"] == ["sh", "-c", command] and sender["uid"] == os.geteuid()
    assert f"from pid {script.pid} sh -c 'read go; kill -TERM {pid}'" in again["last_exit"]["description"]


def test_the_filter_follows_a_restarted_child(make_supervisor, tracing_root):
    sup, pid = start(make_supervisor, tracing_root)
    instance = tracefs.instance_path(tracing_root, f"relayq-{sup.pid}")
    filter_file = os.path.join(instance, "events/signal/signal_generate/filter")
    assert f"pid == {pid}" in tracefs.read_file(filter_file)
    os.kill(pid, signal.SIGKILL)
    new_pid = sup.wait_state("target", "RUNNING", restarts=1)["pid"]
    text = tracefs.read_file(filter_file)
    assert f"pid == {new_pid}" in text and f"pid == {pid}" not in text
    sh_pid, _ = short_lived_kill("KILL", new_pid, sup)
    sup.wait_state("target", "RUNNING", restarts=2)
    [event] = signals_to(sup, new_pid, "SIGKILL")
    assert event["sender"]["pid"] == sh_pid
    [first] = signals_to(sup, pid, "SIGKILL")
    assert first["sender"]["pid"] == os.getpid()        # alive: named from /proc, with its argv
    assert first["sender"]["cmdline"]


def test_instance_removed_at_exit_and_a_stale_one_cleaned_at_start(make_supervisor, tracing_root):
    stale = tracefs.instance_path(tracing_root, f"relayq-{GONE_PID}")
    tracefs.create_instance(tracing_root, f"relayq-{GONE_PID}")
    try:
        sup, _ = start(make_supervisor, tracing_root)
        assert not os.path.exists(stale)
        mine = tracefs.instance_path(tracing_root, f"relayq-{sup.pid}")
        assert os.path.isdir(mine)
        assert sup.terminate() == 0
        assert not os.path.exists(mine)
    finally:
        if os.path.exists(stale):
            tracefs.remove_instance(stale)


def test_kernel_witness_off_by_config(make_supervisor, tracing_root):
    sup = make_supervisor(program_config().replace("signal_tap = true", "signal_tap = true\nkernel_trace = false"))
    sup.start()
    sup.wait_state("target", "RUNNING")
    assert sup.status()["supervisor"]["kernel_trace"] == "off (kernel_trace = false)"
    assert not os.path.exists(tracefs.instance_path(tracing_root, f"relayq-{sup.pid}"))


def test_without_a_system_tracefs_the_supervisor_mounts_its_own_and_removes_it(make_supervisor, tracing_root):
    if not FIXTURE_MOUNTED:
        pytest.skip("tracefs is the system's mount here: not unmounting it for a test")
    remove_instances_of_dead_supervisors(tracing_root)
    try:
        tracefs.umount(tracing_root)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        pytest.skip(f"the kernel refuses to unmount tracefs while it is in use ({e}): another live tracer")
    try:
        sup, pid = start(make_supervisor, tracing_root)
        private = str(sup.dir / "run" / "tracefs")
        assert tracefs.mounts() == [private]            # nothing shared was mounted
        assert os.path.isdir(tracefs.instance_path(private, f"relayq-{sup.pid}"))
        sh_pid, _ = short_lived_kill("9", pid, sup)
        sup.wait_state("target", "RUNNING", restarts=1)
        assert signals_to(sup, pid, "SIGKILL")[0]["sender"]["pid"] == sh_pid
        assert sup.terminate() == 0
        assert tracefs.mounts() == [] and not os.path.exists(private)
    finally:
        if tracefs.find_mount() is None:
            tracefs.mount(tracing_root)


def test_in_a_child_pid_namespace_the_witness_stands_down_and_says_why(tmp_path):
    import shutil
    import sys

    from support import Supervisor
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a pid namespace")
    if os.geteuid() != 0:
        pytest.skip("unshare --pid needs root")
    sup = Supervisor(tmp_path, program_config())
    sup.log_file = open(sup.log_path, "ab")
    # the supervisor is pid 1 of a new pid namespace, with its own /proc
    sup.proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
                                 sys.executable, "-m", "relayq_supervisor", "-c", str(sup.config)],
                                stdout=sup.log_file, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        sup.wait_state("target", "RUNNING")
        header = sup.status()["supervisor"]
        assert header["kernel_trace"].startswith("unavailable (the supervisor runs in a child pid namespace")
        human = sup.ctl("status").stdout
        assert "kernel trace: unavailable (the supervisor runs in a child pid namespace" in human
    finally:
        # unshare(1) does not pass SIGTERM on, and relayqctl shutdown would wait on "pid 1" of
        # the namespace as the host sees it: signal the supervisor, unshare's only child, by pid
        import psutil
        for child in psutil.Process(sup.proc.pid).children():
            os.kill(child.pid, signal.SIGTERM)
        try:
            sup.proc.wait(30)
        except subprocess.TimeoutExpired:
            sup.proc.kill()                          # --kill-child: the namespace goes with it
            sup.proc.wait()
        sup.log_file.close()
    # kernel_trace = true: no supervision without the witness; the reason, nothing started
    required = tmp_path / "required"
    required.mkdir()
    (required / "config.toml").write_text(program_config().replace("signal_tap = true",
                                                                    "signal_tap = true\nkernel_trace = true"))
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable, "-m",
                        "relayq_supervisor", "-c", "config.toml"], cwd=required, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert ("kernel_trace = true, but the kernel trace is unavailable: the supervisor runs in a child pid "
            "namespace") in r.stderr
    assert "Traceback" not in r.stderr and not (required / "log" / "target.log").exists()


def test_after_a_crash_the_adopted_redis_is_watched_and_the_old_instance_removed(make_supervisor, tracing_root,
                                                                                 port):
    from support import REDIS_SERVER, redis_config
    if REDIS_SERVER is None:
        pytest.skip("no redis-server")
    sup = make_supervisor(redis_config(None, port)).start()
    redis_pid = sup.wait_state("redis", "RUNNING")["pid"]
    try:
        sup.proc.kill()
        sup.proc.wait(30)
        assert os.path.isdir(tracefs.instance_path(tracing_root, f"relayq-{sup.pid}"))   # left by the crash
        again = make_supervisor(sup.config.read_text()).start()
        assert again.wait_state("redis", "RUNNING")["pid"] == redis_pid                 # adopted, not started
        assert not os.path.exists(tracefs.instance_path(tracing_root, f"relayq-{sup.pid}"))
        instance = tracefs.instance_path(tracing_root, f"relayq-{again.pid}")
        text = tracefs.read_file(os.path.join(instance, "events/signal/signal_generate/filter"))
        assert f"pid == {redis_pid}" in text
    finally:
        try:
            os.kill(redis_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- Redis clients ---------------------------------------------------------------------------

REDIS_CLI = "/usr/bin/redis-cli"        # Debian's; a path, so the exec event names it exactly


def redis_denials(sup):
    return audit_events(sup, "redis_denied")


def start_redis(make_supervisor, tracing_root, port, health_interval=3600):
    """A supervised Redis whose periodic ACL LOG read is an hour away: a denial recorded
    within seconds was read because the witness saw the client's connection close."""
    from support import REDIS_SERVER, redis_config
    if REDIS_SERVER is None:
        pytest.skip("no redis-server")
    if not os.access(REDIS_CLI, os.X_OK):
        pytest.skip(f"no {REDIS_CLI}")
    sup = make_supervisor(redis_config(None, port, supervisor_extra=f"health_interval = {health_interval}")).start()
    redis_pid = sup.wait_state("redis", "RUNNING")["pid"]
    assert sup.status()["supervisor"]["kernel_trace"] == "watching"
    return sup, redis_pid


def oneshot_clis(port: int, n: int, sup) -> tuple[list[int], int]:
    """`sh -c` running `redis-cli shutdown` n times in a row, each a child of that sh, while
    the supervisor is stopped: every cli has exited before the supervisor can look at /proc
    or ACL LOG. (cli pids, sh pid)."""
    os.kill(sup.pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(sup.pid) == "T", what="supervisor stopped")
    try:
        script = "; ".join([f"{REDIS_CLI} -p {port} shutdown >&2 & echo $!; wait $!"] * n)
        sh = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = sh.communicate(timeout=30)
    finally:
        os.kill(sup.pid, signal.SIGCONT)
    assert err.count("NOPERM") == n, err
    return [int(p) for p in out.split()], sh.pid


def test_a_oneshot_redis_cli_shutdown_is_named_after_it_exited(make_supervisor, tracing_root, port):
    sup, redis_pid = start_redis(make_supervisor, tracing_root, port)
    [cli], sh = oneshot_clis(port, 1, sup)
    assert not os.path.exists(f"/proc/{cli}")
    # health_interval is an hour: only the read prompted by the connection's close reports it
    [denied] = wait_for(lambda: redis_denials(sup), timeout=10, what="redis_denied, read after the close")
    sender = denied["sender"]
    assert (denied["command"], denied["count"]) == ("shutdown", 1)
    assert (sender["pid"], sender["comm"], sender["exe"], sender["alive"], sender["seen_by"]) == \
        (cli, "redis-cli", REDIS_CLI, False, "tracefs")
    assert sender["connection"]["addr"] == denied["client_addr"]
    assert (sender["ancestry"][0]["pid"], sender["ancestry"][0]["comm"]) == (sh, "sh")
    assert sender["ancestry"][1]["pid"] == os.getpid()     # alive: from /proc, up to pid 1
    assert f"pid {cli} redis-cli" in sup.log()
    audit = sup.ctl("audit", "--program", "redis", check=True).stdout
    assert f"DENIED shutdown by user default from {denied['client_addr']} (pid {cli} redis-cli" in audit
    assert f"<- pid {sh} " in audit
    assert sup.program("redis")["pid"] == redis_pid


def test_a_client_still_connected_keeps_its_pinned_identity(make_supervisor, tracing_root, port, procs):
    sup, _ = start_redis(make_supervisor, tracing_root, port, health_interval=0.2)
    holder = subprocess.Popen([REDIS_CLI, "-p", str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(holder)
    holder.stdin.write("shutdown\n")
    holder.stdin.flush()
    assert "NOPERM" in holder.stdout.readline()
    [denied] = wait_for(lambda: redis_denials(sup), what="redis_denied")
    assert (denied["sender"]["pid"], denied["sender"]["seen_by"], denied["sender"]["alive"]) == \
        (holder.pid, "procfs", True)


def test_folded_denials_name_every_client_and_say_redis_kept_the_last(make_supervisor, tracing_root, port):
    sup, _ = start_redis(make_supervisor, tracing_root, port)
    clis, sh = oneshot_clis(port, 3, sup)
    # one ACL LOG entry, count 3, naming only the last cli: the three closes prompt one read
    [denied] = wait_for(lambda: redis_denials(sup), timeout=10, what="redis_denied")
    assert denied["count"] == 3 and denied["sender"]["pid"] == clis[-1]
    assert [c["pid"] for c in denied["folded"]["clients"]] == clis and denied["folded"]["exact"]
    assert all(c["seen_by"] == "tracefs" for c in denied["folded"]["clients"])
    assert f"x3: pids {', '.join(map(str, clis))}; Redis recorded the last" in sup.log()
    audit = sup.ctl("audit", "--program", "redis", check=True).stdout
    assert f"x3: pids {', '.join(map(str, clis))}; Redis recorded the last" in audit


def test_a_trace_buffer_overrun_is_counted_and_said(tracing_root):
    """The witness's own instance, its buffer shrunk to one page a CPU, and a few hundred
    short processes (3 events each) before it reads: the kernel's LOST lines are counted."""
    from relayq_supervisor.witness.trace_instance import buffer_kb_per_cpu
    from relayq_supervisor.witness.tracefs import KernelWitness
    lost: list[int] = []
    w = KernelWitness(lambda seen: None, root=tracing_root)
    w.on_lost = lost.append
    assert w.start(), w.unavailable
    try:
        assert int(tracefs.read_file(os.path.join(w.instance, "buffer_size_kb")).split()[0]) >= buffer_kb_per_cpu()
        tracefs.set_value(w.instance, "buffer_size_kb", "4")
        for _ in range(400):
            os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0)
        while w.drain():
            pass
        assert w.stats()["lost"] > 0 and sum(lost) == w.stats()["lost"]
    finally:
        w.close()
    assert not os.path.exists(os.path.join(tracing_root, "instances", f"relayq-{os.getpid()}"))
