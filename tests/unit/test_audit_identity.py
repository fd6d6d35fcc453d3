"""Process identity from text: describe(), pid 0. The captures of live, zombie and reaped
processes are in tests/integration/test_audit_identity.py; /proc/PID/stat and cgroup parsing
in tests/unit/test_procfs.py."""
from relayq_supervisor.witness import identity
from relayq_supervisor.witness.identity import (
    Ancestor,
    ProcessIdentity,
)


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
