"""A run's cgroup made ahead of its restart, always a new one, removed once its successor
started; and max_rss's reading of a run (its cgroup's processes, else its process group).
Real processes and real cgroups, as root."""
from __future__ import annotations

import asyncio
import os
import subprocess
import textwrap

import pytest
from support import PYTHON, wait_for

from relayq_supervisor.core.containment import Containment
from relayq_supervisor.core.spawn import spawn
from relayq_supervisor.linux import cgroups
from relayq_supervisor.witness.evidence import Probe

MIB = 2**20
# Touches 50 MiB (bytes * n writes every page) in the process named by argv[2] ("main", or
# "daemon": a double-forked setsid() child), writes its pid to argv[1] once it has.
HOG = textwrap.dedent("""\
    import os, sys, time
    def hog():
        block = b"x" * (50 * 2**20)
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        time.sleep(1000)
    if sys.argv[2] == "daemon" and os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            hog()
        os._exit(0)
    if sys.argv[2] == "main":
        hog()
    time.sleep(1000)
    """)


@pytest.fixture
def containment():
    if os.geteuid() != 0:
        pytest.skip("needs root to make cgroups")
    made = Containment.open(True, f"test-{os.getpid()}")
    if made.hierarchy is None:
        pytest.skip(f"no cgroups here: {made.why_none}")
    yield made
    assert made.base is not None and made.hierarchy is not None
    wait_for(lambda: cgroups.kill_all(made.base, made.hierarchy) in (0, -1) and not cgroups.all_members(made.base),
             what="the test's processes gone")
    made.close()
    assert not os.path.exists(made.base), f"cgroup {made.base} left behind"


def start(containment: Containment, instance: str, argv: list[str]):
    run = containment.new_run(instance)
    out = os.open(os.devnull, os.O_WRONLY)
    try:
        child = spawn(argv, {"PATH": "/usr/bin:/bin"}, "/", out, before_exec=lambda pid: containment.place(run, pid))
    finally:
        os.close(out)
    os.close(child.exec_result_fd)
    return run, child


def test_next_run_group_is_made_ahead_and_is_always_new(containment):
    assert containment.base is not None
    # a predecessor's group of the same name (adopted, or its leftovers still draining)
    stale = os.path.join(containment.base, "w@1")
    cgroups.make_group(stale)
    containment.prepare("w")
    ahead = containment.prepared["w"]
    assert ahead.group is not None and ahead.group != stale and os.path.isdir(ahead.group)
    assert ahead.id == os.path.basename(ahead.group)

    run, child = start(containment, "w", ["sleep", "1000"])
    assert run == ahead and "w" not in containment.prepared
    assert cgroups.members(ahead.group) == [child.pid]
    assert cgroups.members(stale) == []

    os.kill(child.pid, 9)
    os.waitpid(child.pid, 0)
    os.close(child.pidfd)

    async def end_then_restart() -> tuple[bool, bool]:
        assert containment.end_run(run) == 0
        still_there = os.path.isdir(ahead.group or "")      # removed after what is due now (a restart)
        await asyncio.sleep(0)
        return still_there, os.path.isdir(ahead.group or "")
    assert asyncio.run(end_then_restart()) == (True, False)

    containment.prepare("w")
    gone = containment.prepared["w"].group
    assert gone is not None and os.path.isdir(gone)
    containment.discard("w")
    assert not os.path.exists(gone) and "w" not in containment.prepared
    assert cgroups.remove(stale)


def test_rss_of_a_run_counts_its_setsid_daemon(containment, tmp_path):
    (tmp_path / "hog.py").write_text(HOG)
    ready = tmp_path / "hog.pid"
    run, child = start(containment, "hog", [PYTHON, str(tmp_path / "hog.py"), str(ready), "daemon"])
    try:
        daemon = wait_for(lambda: ready.exists() and int(ready.read_text()), timeout=30, what="the daemon's 50 MiB")
        members = containment.members(run)
        assert daemon in members and child.pid in members
        assert os.getpgid(daemon) != child.pid          # it left the program's process group
        probe = Probe()
        whole = probe.rss(child.pid, members)
        group_only = probe.rss(child.pid)
        assert whole is not None and whole >= 50 * MIB
        assert group_only is not None and whole - group_only >= 50 * MIB
    finally:
        assert run.group is not None and containment.hierarchy is not None
        cgroups.kill_all(run.group, containment.hierarchy)
        os.waitpid(child.pid, 0)
        os.close(child.pidfd)


def test_rss_of_a_process_group_without_cgroup(tmp_path, procs):
    (tmp_path / "hog.py").write_text(HOG)
    ready = tmp_path / "hog.pid"
    proc = subprocess.Popen([PYTHON, str(tmp_path / "hog.py"), str(ready), "main"], start_new_session=True)
    procs.append(proc)
    wait_for(lambda: ready.exists(), timeout=30, what="the program's 50 MiB")
    probe = Probe()
    reading = probe.rss(proc.pid)
    assert reading is not None and reading >= 50 * MIB
    proc.kill()
    proc.wait()
    assert probe.rss(proc.pid) is None


def test_warm_up_moves_nothing(containment):
    assert containment.hierarchy is not None
    before = cgroups.group_of(os.getpid(), containment.hierarchy)
    containment.warm_up()
    if containment.hierarchy.favordynmods:
        assert containment._warming is None        # moves are cheap there: nothing to begin
        return
    assert containment._warming is not None
    containment._warming.join(timeout=10)
    assert not containment._warming.is_alive()      # short-lived: spawn's clone way needs a single thread
    assert not containment._warm_refused, "writing our own pid into our own group was refused"
    assert cgroups.group_of(os.getpid(), containment.hierarchy) == before
    run, child = start(containment, "w", ["sleep", "1000"])      # and a move right after it works
    assert cgroups.members(run.group or "") == [child.pid]
    os.kill(child.pid, 9)
    os.waitpid(child.pid, 0)
    os.close(child.pidfd)
