"""Programs that escape: a daemon that double-forks and setsid()s is stopped with its
program, on stop and on restart, with cgroups and without (the fallback by process tree
and environment marker). Real processes, as root."""
from __future__ import annotations

import os
import textwrap

import psutil
import pytest
from support import PYTHON, wait_for

# The program: double-fork a setsid daemon that records its pid, then keep running.
DAEMONIZING = textwrap.dedent("""\
    import os, sys, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(sys.argv[1], "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(1000)
        os._exit(0)
    time.sleep(1000)
    """)


def config(tmp_path, cgroups: bool) -> str:
    (tmp_path / "daemonize.py").write_text(DAEMONIZING)
    return textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"
        signal_tap = false
        kernel_trace = false
        cgroups = {'true' if cgroups else 'false'}

        [[program]]
        name = "forker"
        command = ["{PYTHON}", "{tmp_path / 'daemonize.py'}", "{tmp_path / 'daemons'}"]
        stop_timeout = 5
        """)


def daemon_pids(tmp_path) -> list[int]:
    path = tmp_path / "daemons"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def our_cgroups(sup) -> list[str]:
    status = sup.status()["supervisor"]
    return [w for w in status["descendants_by"].split() if w.startswith("/sys/fs/cgroup")]


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "fallback"])
def test_daemon_stopped_with_its_program(tmp_path, make_supervisor, cgroups):
    if os.geteuid() != 0:
        pytest.skip("needs root: cgroups and another process' environ")
    sup = make_supervisor(config(tmp_path, cgroups)).start()
    sup.wait_state("forker", "RUNNING")
    first = wait_for(lambda: daemon_pids(tmp_path), what="the first daemon")[0]
    st = sup.status()
    by = st["supervisor"]["descendants_by"]
    if cgroups and not by.startswith("cgroup"):
        pytest.skip(f"the kernel gives no cgroup here: {by}")
    assert by.startswith("cgroup") == cgroups, by
    groups = our_cgroups(sup)
    p = wait_for(lambda: (q := sup.program("forker"))["descendants"] == [first] and q, what="+1 descendant")
    assert p["descendants"] == [first]
    assert "+1 descendant" in sup.ctl("status").stdout

    # restart: the old daemon goes, one new one runs
    sup.ctl("restart", "forker", check=True)
    wait_for(lambda: not alive(first), what=f"daemon {first} killed on restart")
    second = wait_for(lambda: len(daemon_pids(tmp_path)) == 2 and daemon_pids(tmp_path)[1], what="second daemon")
    wait_for(lambda: sup.program("forker")["descendants"] == [second], what="the new run's daemon counted")

    sup.ctl("stop", "forker", check=True)
    wait_for(lambda: not alive(second), what=f"daemon {second} killed on stop")
    killed = wait_for(lambda: sup.audit_events("leftovers_killed"), what="leftovers_killed events")
    assert [e["pids"] for e in killed[:2]] == [[first], [second]]
    assert sup.program("forker")["descendants"] == []
    assert sup.terminate() == 0
    for g in groups:
        assert not os.path.exists(g), f"cgroup {g} left behind"


@pytest.mark.parametrize("version", [2, 1])
def test_group_emptied_by_killing_each_member(tmp_path, procs, version):
    """The way without cgroup.kill (v1, v2 before 5.14): SIGKILL to each member, again until
    empty, while a shell keeps forking; then the group is removed."""
    import subprocess

    from relayq_supervisor.linux import cgroups
    if os.geteuid() != 0:
        pytest.skip("needs root to make cgroups")
    own = cgroups.own_hierarchy()
    hierarchy = own if own is not None and own.version == version else None
    if hierarchy is None and version == 1:
        mountinfo = open("/proc/self/mountinfo").read()
        proc_cgroup = "\n".join(line for line in open("/proc/self/cgroup").read().splitlines()
                                if not line.startswith("0::"))
        mountinfo = "\n".join(line for line in mountinfo.splitlines() if " - cgroup2 " not in line)
        hierarchy = cgroups.parse_hierarchy(mountinfo, proc_cgroup)
    if hierarchy is None:
        pytest.skip(f"no cgroup v{version} hierarchy mounted here")
    group = os.path.join(hierarchy.own, f"relayq-test-{os.getpid()}", "forker@1")
    try:
        cgroups.make_group(group)
    except OSError as e:
        pytest.skip(f"cannot make a v{version} cgroup here: {e}")
    try:
        gate_r, gate_w = os.pipe()
        # enters the group before it forks anything: it waits on the pipe first
        proc = subprocess.Popen(["/bin/sh", "-c", "read x; while :; do sleep 100 & sleep 0.01; done"],
                                stdin=gate_r, start_new_session=True)
        procs.append(proc)
        os.close(gate_r)
        cgroups.place(group, proc.pid)
        os.write(gate_w, b"go\n")
        os.close(gate_w)
        wait_for(lambda: len(cgroups.all_members(group)) >= 4, what="the shell's children in the group")
        wait_for(lambda: cgroups.kill_all(group, hierarchy, use_kill_file=False) == 0
                 and not cgroups.all_members(group), what="an empty group")
        proc.wait(10)
        assert proc.returncode == -9
        assert cgroups.remove(os.path.dirname(group))
        assert not os.path.exists(os.path.dirname(group))
    finally:        # a failed test leaves no process and no group behind
        wait_for(lambda: cgroups.kill_all(group, hierarchy, use_kill_file=False) == 0, what="leftovers killed")
        wait_for(lambda: cgroups.remove(os.path.dirname(group)), what="the test's cgroup removed")


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "fallback"])
def test_a_program_that_daemonizes_and_exits_leaves_no_pile_up(tmp_path, make_supervisor, cgroups):
    """The incident's shape: each run double-forks a daemon and exits; restarts must not
    accumulate daemons (each run's leftovers die with its main process)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: cgroups and another process' environ")
    # the same daemon, but the program itself exits soon after
    (tmp_path / "exits.py").write_text(DAEMONIZING.rsplit("time.sleep(1000)", 1)[0] + "time.sleep(0.3)\n")
    text = config(tmp_path, cgroups).replace("daemonize.py", "exits.py") + textwrap.dedent("""\
        [program.restart]
        policy = "always"
        backoff_initial = 0.05
        backoff_max = 0.1
        start_limit_burst = 0
        """)
    sup = make_supervisor(text).start()
    wait_for(lambda: len(daemon_pids(tmp_path)) >= 4, timeout=30, what="four runs, each with its daemon")
    earlier = daemon_pids(tmp_path)[:3]
    wait_for(lambda: not any(alive(p) for p in earlier), what=f"the daemons of earlier runs {earlier} gone")
    sup.ctl("stop", "forker", check=True)
    everyone = daemon_pids(tmp_path)
    wait_for(lambda: not any(alive(p) for p in everyone), what="no daemon left after stop")
