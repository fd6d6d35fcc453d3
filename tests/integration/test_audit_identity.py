"""ProcessIdentity.capture of real processes: live, zombie, reaped, reused pids. Parsing of
/proc and cgroup text is in tests/unit/test_procfs.py."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import psutil
from support import wait_for

from relayq_supervisor.linux.procfs import proc_start_ticks, unit_from_cgroup
from relayq_supervisor.witness import identity
from relayq_supervisor.witness.identity import (
    EXITED_NOTE,
    ProcessIdentity,
    boottime_now,
)


def start_sleep_under_shell(procs):
    """sh (known parent) -> sleep 30; returns (sh Popen, sleep pid)."""
    sh = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    procs.append(sh)
    sleep_pid = int(sh.stdout.readline())
    # sh forks before exec: wait until the child really is `sleep`
    wait_for(lambda: psutil.Process(sleep_pid).cmdline() == ["sleep", "30"], 10, 0.01, what="sleep to exec")
    return sh, sleep_pid


def test_capture_live_child_under_known_parent(procs):
    sh, sleep_pid = start_sleep_under_shell(procs)

    ident = ProcessIdentity.capture(sleep_pid, uid_hint=os.getuid(), code_hint="SI_USER")

    assert ident.alive is True
    assert ident.note is None
    assert ident.pid == sleep_pid
    assert ident.ppid == sh.pid
    assert ident.comm == "sleep"
    assert ident.cmdline == ("sleep", "30")
    assert ident.exe is not None and os.path.basename(ident.exe) == "sleep"
    assert ident.uid == os.getuid()
    assert ident.user == ("root" if os.getuid() == 0 else ident.user)
    assert ident.code == "SI_USER"
    assert abs(ident.start_time - time.time()) < 60
    assert ident.program is None
    # parent chain: sh, then this test process, ..., ending at pid 1
    chain = [a.pid for a in ident.ancestry]
    assert chain[0] == sh.pid and ident.ancestry[0].comm == "sh"
    assert chain[1] == os.getpid()
    assert ident.ancestry[1].cmdline == tuple(psutil.Process().cmdline())
    assert chain[-1] == 1
    assert len(set(chain)) == len(chain)
    # the other facts agree with what the kernel shows for this pid
    with open(f"/proc/{sleep_pid}/cgroup") as f:
        assert ident.unit == unit_from_cgroup(f.read())
    with open(f"/proc/{sleep_pid}/loginuid") as f:
        raw = int(f.read())
    assert ident.loginuid == (None if raw == 4294967295 else raw)
    assert ident.tty == psutil.Process(sleep_pid).terminal()


def test_capture_of_reaped_process_invents_nothing(procs):
    p = subprocess.Popen(["true"])
    procs.append(p)
    p.wait()

    ident = ProcessIdentity.capture(p.pid, uid_hint=1234, code_hint="SI_USER")

    assert ident.alive is False
    assert ident.note == "sender exited before it could be inspected"
    assert (ident.pid, ident.uid, ident.code) == (p.pid, 1234, "SI_USER")
    d = ident.to_dict()
    for key in ("user", "comm", "exe", "cmdline", "start_time", "ppid", "unit", "loginuid", "session", "tty", "program"):
        assert d[key] is None, key
    assert d["ancestry"] == []
    assert ident.describe() == f"pid {p.pid} (sender exited before it could be inspected)"


def test_capture_of_zombie_keeps_only_what_is_still_true(procs):
    p = subprocess.Popen(["true"])
    procs.append(p)
    wait_for(lambda: psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE, 10, 0.01, what="a zombie")

    ident = ProcessIdentity.capture(p.pid, code_hint="SI_USER")

    assert ident.alive is False
    assert ident.note and "exited" in ident.note
    assert ident.comm == "true"
    assert ident.ppid == os.getpid()
    assert ident.cmdline is None and ident.exe is None
    assert ident.ancestry[0].pid == os.getpid()


def test_facts_from_another_process_are_never_reported(procs, monkeypatch):
    """Recycled pid by design: facts whose start time is not the pinned process's are discarded."""
    p = subprocess.Popen(["sleep", "30"])
    procs.append(p)
    real_read = identity._read_facts
    # Pretend /proc answered for a different process: this test process, started long before.
    monkeypatch.setattr(identity, "_read_facts", lambda pid: real_read(os.getpid()))

    ident = ProcessIdentity.capture(p.pid, code_hint="SI_USER")

    assert ident.alive is False
    assert ident.note == EXITED_NOTE
    assert ident.comm is None and ident.cmdline is None and ident.start_time is None


def test_start_time_disagreeing_with_pinned_process_is_not_reported(procs, monkeypatch):
    p = subprocess.Popen(["sleep", "30"])
    procs.append(p)
    real_read = identity._read_facts
    monkeypatch.setattr(
        identity, "_read_facts", lambda pid: dataclasses.replace(real_read(pid), start_time=time.time() - 100)
    )

    ident = ProcessIdentity.capture(p.pid)

    assert ident.alive is False and ident.start_time is None and ident.comm is None


def test_process_vanishing_during_the_read_is_not_blamed(procs, monkeypatch):
    p = subprocess.Popen(["sleep", "30"])
    procs.append(p)
    real_read = identity._read_facts

    def read_then_lose_process(pid):
        facts = real_read(pid)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()  # reaped: the pid is free for reuse, the pidfd now points at nothing
        return facts

    monkeypatch.setattr(identity, "_read_facts", read_then_lose_process)

    ident = ProcessIdentity.capture(p.pid)

    assert ident.alive is False
    assert ident.comm is None


def test_start_time_changing_between_reads_is_not_blamed(procs, monkeypatch):
    p = subprocess.Popen(["sleep", "30"])
    procs.append(p)
    real_ticks = identity.proc_start_ticks
    calls = []

    def ticks_then_different(pid):
        calls.append(pid)
        value = real_ticks(pid)
        return value if len(calls) == 1 else value + 500

    monkeypatch.setattr(identity, "proc_start_ticks", ticks_then_different)

    ident = ProcessIdentity.capture(p.pid)

    assert ident.alive is False
    assert len(calls) >= 2


def test_uid_mismatch_means_pid_was_reused(procs):
    p = subprocess.Popen(["sleep", "30"])
    procs.append(p)

    ident = ProcessIdentity.capture(p.pid, uid_hint=os.getuid() + 4242)

    assert ident.alive is False
    assert ident.uid == os.getuid() + 4242  # the kernel's word, not /proc's
    assert "uid" in ident.note
    assert ident.comm is None


def test_process_started_after_the_signal_is_not_the_sender(procs):
    p = subprocess.Popen(["sleep", "30"])
    procs.append(p)
    started = proc_start_ticks(p.pid) / os.sysconf("SC_CLK_TCK")

    late = ProcessIdentity.capture(p.pid, seen_boottime=started - 5.0)
    ok = ProcessIdentity.capture(p.pid, seen_boottime=boottime_now())

    assert late.alive is False and "reused" in late.note and late.comm is None
    assert ok.alive is True and ok.comm == "sleep"


def test_ancestry_stops_where_an_ancestor_vanishes(procs, monkeypatch):
    sh, sleep_pid = start_sleep_under_shell(procs)
    real_ticks = identity.proc_start_ticks
    me = os.getpid()
    # this test process "vanishes" when the chain reaches it
    monkeypatch.setattr(identity, "proc_start_ticks", lambda pid: None if pid == me else real_ticks(pid))

    ident = ProcessIdentity.capture(sleep_pid)

    assert ident.alive is True
    assert [a.pid for a in ident.ancestry] == [sh.pid]


def test_ancestor_younger_than_child_is_a_reused_pid(procs, monkeypatch):
    sh, sleep_pid = start_sleep_under_shell(procs)
    real_ticks = identity.proc_start_ticks
    monkeypatch.setattr(identity, "proc_start_ticks", lambda pid: real_ticks(pid) + 10_000 if pid == sh.pid else real_ticks(pid))

    ident = ProcessIdentity.capture(sleep_pid)

    assert ident.alive is True and ident.ppid == sh.pid
    assert ident.ancestry == ()


def test_proc_start_ticks_with_parenthesis_in_comm(procs):
    code = "import sys; open('/proc/self/comm','w').write('a) b (c'); print('ready', flush=True); sys.stdin.read()"
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(p)
    assert p.stdout.readline().strip() == "ready"

    ticks = proc_start_ticks(p.pid)
    ident = ProcessIdentity.capture(p.pid)

    expected = psutil.Process(p.pid).create_time() - psutil.boot_time()
    assert ticks is not None and abs(ticks / os.sysconf("SC_CLK_TCK") - expected) < 0.02
    assert ident.alive and ident.comm == "a) b (c"
    p.stdin.close()


def test_dict_round_trip_and_json(procs):
    sh, sleep_pid = start_sleep_under_shell(procs)
    ident = ProcessIdentity.capture(sleep_pid, code_hint="SI_TKILL")

    d = ident.to_dict()
    again = ProcessIdentity.from_dict(json.loads(json.dumps(d)))

    assert again == ident
    assert set(d) == {f for f in ProcessIdentity.__dataclass_fields__}
    assert isinstance(d["cmdline"], list) and isinstance(d["ancestry"][0], dict)


