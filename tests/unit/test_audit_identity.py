"""Process identity from text: /proc/PID/stat and cgroup parsing, describe(), pid 0. The
captures of live, zombie and reaped processes are in tests/integration/test_audit_identity.py."""
import pytest

from relayq_supervisor.witness import identity
from relayq_supervisor.witness.identity import (
    Ancestor,
    ProcessIdentity,
    proc_start_ticks,
    start_ticks_from_stat,
    unit_from_cgroup,
)


def test_start_ticks_from_stat_text():
    text = "4412 (we) ird (x) S 1 4412 4412 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200 18446744073709551615"
    assert start_ticks_from_stat(text) == 987654
    assert start_ticks_from_stat("4412 (short) S 1") is None
    assert start_ticks_from_stat("garbage") is None
    assert proc_start_ticks(2**22 + 12345) is None


@pytest.mark.parametrize(
    "text, unit",
    [
        ("0::/system.slice/relayq-redis-monitor.service\n", "relayq-redis-monitor.service"),
        ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-term.scope\n", "app-term.scope"),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
        ("0::/system.slice/docker.service/payload\n", "docker.service"),
        ("0::/system.slice/logrotate.timer\n", "logrotate.timer"),
        ("0::/\n", None),
        ("0::/init.scope\n", "init.scope"),
        # cgroup v1 (legacy): the name=systemd hierarchy carries the unit
        (
            "12:memory:/system.slice/redis-server.service\n"
            "4:cpu,cpuacct:/\n"
            "1:name=systemd:/system.slice/redis-server.service\n",
            "redis-server.service",
        ),
        # hybrid: unified line is empty, v1 systemd line knows the unit
        ("1:name=systemd:/system.slice/cron.service\n0::/\n", "cron.service"),
        # v1 without name=systemd, units only visible on a controller line
        ("5:pids:/system.slice/relayq.service\n", "relayq.service"),
        ("9:name=systemd:/\n4:memory:/process_api/05f679f2\n0::/\n", None),
        ("", None),
        ("not a cgroup line", None),
    ],
)
def test_unit_from_cgroup(text, unit):
    assert unit_from_cgroup(text) == unit


def test_unified_line_wins_over_v1():
    text = "1:name=systemd:/system.slice/old.service\n0::/system.slice/new.service\n"
    assert unit_from_cgroup(text) == "new.service"


def test_with_program_and_describe():
    base = ProcessIdentity(
        pid=4412,
        uid=0,
        comm="python3",
        cmdline=("/usr/bin/python3", "/opt/relayq/monitor.py"),
        unit="relayq-redis-monitor.service",
        alive=True,
        ancestry=(Ancestor(1, "systemd", ("/sbin/init",)),),
    )
    assert base.describe() == "pid 4412 python3 /opt/relayq/monitor.py (relayq-redis-monitor.service)"
    named = base.with_program("worker:1")
    assert named.program == "worker:1" and base.program is None
    assert named.describe() == "worker:1 (pid 4412)"
    long = ProcessIdentity(pid=7, comm="java", cmdline=("java",) + ("-Dx=" + "y" * 50,) * 5, alive=True)
    text = long.describe()
    assert text.startswith("pid 7 java -Dx=") and text.endswith("...")
    assert len(text) <= len("pid 7 ") + identity.DESCRIBE_WIDTH
    kthread = ProcessIdentity(pid=2, comm="kthreadd", cmdline=(), alive=True)
    assert kthread.describe() == "pid 2 [kthreadd]"


def test_pid_zero_is_not_a_process():
    ident = ProcessIdentity.capture(0, uid_hint=0, code_hint="SI_KERNEL")
    assert ident.alive is False and ident.comm is None
    assert "kernel" in ident.note
