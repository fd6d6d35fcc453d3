"""The signal tap and guard with real senders, a real Redis and real workers."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import textwrap

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import PYTHON, WORKER, find_redis_tool, redis_config, wait_for


def ping(port: int) -> bool:
    # a Redis that is up answers at once, but a loaded 2-core machine can hold a reply past 0.5 s;
    # no retry: redis-py's default one backs off ~4 s before a refused port counts as down
    try:
        return redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0)).ping()
    except redis.RedisError:
        return False


def audit_events(sup, kind=None):
    return sup.audit_events(kind)


def signal_events(sup, target_pid=None, signame=None, via="ptrace"):
    return [e for e in audit_events(sup, "signal")
            if e["via"] == via and (target_pid is None or e["target"]["pid"] == target_pid)
            and (signame is None or e["signal"] == signame)]


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


UNPROTECTED_WORKER = WORKER.replace("numprocs = 2", "numprocs = 1")


@pytest.fixture
def running(make_supervisor, port):
    # the tap's own tests: with the kernel witness watching, only Redis (protected) is seized
    sup = make_supervisor(redis_config(None, port, programs=UNPROTECTED_WORKER,
                                       supervisor_extra="kernel_trace = false")).start()
    st = sup.wait_all_running()
    assert st["supervisor"]["signal_tap"] == "attached"
    return sup


def test_health_monitor_sigterm_to_redis_is_blocked_and_named(running, port, procs, tmp_path):
    redis_pid = running.program("redis")["pid"]
    monitor = tmp_path / "monitor.py"
    monitor.write_text(textwrap.dedent(f"""
        import os, signal, sys, time
        os.kill({redis_pid}, signal.SIGTERM)
        print("sent", flush=True)
        time.sleep(120)
    """))
    parent = subprocess.Popen(["sh", "-c", f"{PYTHON} {monitor}; true"], stdout=subprocess.PIPE, text=True)
    procs.append(parent)
    assert parent.stdout.readline().strip() == "sent"
    event = wait_for(lambda: signal_events(running, redis_pid, "SIGTERM"), what="audit event")[0]
    assert event["action"] == "blocked"
    assert event["code"] == "SI_USER"
    sender = event["sender"]
    assert sender["alive"] is True
    assert sender["cmdline"][-1] == str(monitor)
    assert sender["ppid"] == parent.pid
    assert sender["ancestry"][0]["pid"] == parent.pid and sender["ancestry"][0]["comm"] == "sh"
    assert sender["ancestry"][-1]["pid"] == 1
    assert ping(port)
    assert running.program("redis")["pid"] == redis_pid
    log = running.log()
    assert f"redis: blocked SIGTERM from pid {sender['pid']}" in log
    assert "use `relayqctl stop redis`" in log
    # the review tools show it
    r = running.ctl("audit", "--blocked", "--program", "redis")
    assert r.returncode == 0
    assert f"redis pid {redis_pid} <- SIGTERM from pid {sender['pid']}" in r.stdout and "BLOCKED" in r.stdout


def test_signal_to_a_redis_thread_is_blocked_too(running, port):
    redis_pid = running.program("redis")["pid"]
    def blocks_sigint(tid):
        with open(f"/proc/{redis_pid}/task/{tid}/status") as f:
            mask = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
        return mask & (1 << (signal.SIGINT - 1))

    # jemalloc's background thread blocks every signal: a signal aimed at it stays pending
    tids = sorted(int(t) for t in os.listdir(f"/proc/{redis_pid}/task"))
    others = [t for t in tids if t != redis_pid and not blocks_sigint(t)]
    if not others:
        pytest.skip("this redis-server has no second thread that accepts SIGINT")
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.tgkill(redis_pid, others[-1], signal.SIGINT) == 0
    wait_for(lambda: signal_events(running, others[-1], "SIGINT"), what="thread-directed signal recorded")
    assert signal_events(running, others[-1], "SIGINT")[0]["code"] == "SI_TKILL"
    assert ping(port)


def test_unprotected_worker_dies_restarts_and_why_names_the_sender(running, procs):
    worker = running.program("worker")
    killer = subprocess.Popen([PYTHON, "-c", f"import os, time; os.kill({worker['pid']}, 15); time.sleep(60)"])
    procs.append(killer)
    again = running.wait_state("worker", "RUNNING", restarts=1)
    assert again["pid"] != worker["pid"]
    assert f"after SIGTERM from pid {killer.pid}" in again["last_exit"]["description"]
    status = running.ctl("status", "worker").stdout
    assert f"SIGTERM from pid {killer.pid}" in status
    why = running.ctl("why", "worker")
    assert why.returncode == 0
    assert f"sent by: pid {killer.pid}" in why.stdout
    assert "parent: pid" in why.stdout
    exits = [e for e in audit_events(running, "exit") if e["pid"] == worker["pid"]]
    assert exits and exits[0]["sender"]["pid"] == killer.pid


def test_sigkill_is_recorded_as_not_visible_without_the_kernel_witness(make_supervisor, port):
    # the tap never stops at SIGKILL; the kernel witness (tests/integration/test_witness.py) names it
    sup = make_supervisor(redis_config(None, port, programs=UNPROTECTED_WORKER,
                                       supervisor_extra="kernel_trace = false")).start()
    assert sup.wait_all_running()["supervisor"]["kernel_trace"] == "off (kernel_trace = false)"
    worker = sup.program("worker")
    os.kill(worker["pid"], signal.SIGKILL)
    again = sup.wait_state("worker", "RUNNING", restarts=1)
    assert again["last_exit"]["description"] == "killed by SIGKILL, sender not visible to the tap"


def test_sigstop_and_sigcont_from_outside_really_stop_and_resume(running):
    pid = running.program("worker")["pid"]
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(pid) in ("T", "t"), what="worker stopped")
    os.kill(pid, signal.SIGCONT)
    wait_for(lambda: proc_state(pid) in ("S", "R"), what="worker resumed")
    wait_for(lambda: signal_events(running, pid, "SIGCONT"), what="SIGCONT recorded")
    stop = signal_events(running, pid, "SIGSTOP")
    assert stop and stop[0]["action"] == "delivered" and stop[0]["sender"]["pid"] == os.getpid()
    assert running.program("worker")["state"] == "RUNNING"


COUNTER = """
import os, signal, sys
# set_wakeup_fd gets one byte per delivery at C level, where a Python handler
# would fold deliveries that arrive before it runs into one call
r, w = os.pipe()
os.set_blocking(w, False)
signal.signal(signal.SIGUSR1, lambda *a: None)
signal.set_wakeup_fd(w)
seen = 0
while True:
    try:
        data = os.read(r, 4096)
    except InterruptedError:
        continue
    seen += data.count(bytes([signal.SIGUSR1]))
    with open("usr1.count.tmp", "w") as f:
        f.write(str(seen))
    os.replace("usr1.count.tmp", "usr1.count")
"""


def test_burst_of_user_signals_loses_none_that_were_delivered(make_supervisor, port, procs, tmp_path):
    (tmp_path / "counter.py").write_text(COUNTER)
    programs = f"""
    [[program]]
    name = "counter"
    command = ["{PYTHON}", "counter.py"]
    ready_after = 0.2
    """
    sup = make_supervisor(redis_config(None, port, programs=programs, supervisor_extra="kernel_trace = false")).start()
    pid = sup.wait_state("counter", "RUNNING")["pid"]
    sender = subprocess.Popen([PYTHON, "-c", textwrap.dedent(f"""
        import os, signal
        for _ in range(200):
            os.kill({pid}, signal.SIGUSR1)
    """)])
    procs.append(sender)
    assert sender.wait(30) == 0
    count_file = tmp_path / "usr1.count"

    def counts():
        seen = int(count_file.read_text()) if count_file.exists() else 0
        recorded = sum(e.get("count", 1) for e in signal_events(sup, pid, "SIGUSR1"))   # bursts carry a count
        return (seen, recorded) if seen == recorded and seen > 0 else None

    seen, recorded = wait_for(counts, timeout=30, what="delivered count == audit count")
    assert seen == recorded
    assert all(e["sender"]["pid"] == sender.pid and e["action"] == "delivered"
               for e in signal_events(sup, pid, "SIGUSR1"))


def test_a_sender_gone_before_inspection_is_recorded_honestly(make_supervisor, port):
    # without the kernel witness, which would have named it (tests/integration/test_witness.py)
    running = make_supervisor(redis_config(None, port, programs=UNPROTECTED_WORKER,
                                           supervisor_extra="kernel_trace = false")).start()
    running.wait_all_running()
    pid = running.program("worker")["pid"]
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(pid) in ("T", "t"), what="worker stopped")
    # while it is stopped the signal stays pending; its sender exits and is reaped
    gone = subprocess.Popen([PYTHON, "-c", f"import os; os.kill({pid}, {int(signal.SIGUSR1)})"])
    assert gone.wait(30) == 0
    os.kill(pid, signal.SIGCONT)
    event = wait_for(lambda: signal_events(running, pid, "SIGUSR1"), what="pending signal delivered")[0]
    sender = event["sender"]
    assert sender["alive"] is False
    assert sender["note"] == "sender exited before it could be inspected"
    assert sender["cmdline"] is None and sender["exe"] is None      # nothing invented
    assert sender["uid"] == os.getuid() and sender["pid"] == gone.pid     # what the kernel gave


def test_supervisor_records_who_sent_it_sigterm(make_supervisor, port):
    sup = make_supervisor(redis_config(None, port)).start()
    sup.wait_state("redis", "RUNNING")
    killer = subprocess.Popen(["sh", "-c", f"kill -TERM {sup.pid}; sleep 30"])
    try:
        assert sup.proc.wait(60) == 0
        events = [e for e in audit_events(sup, "signal") if e["via"] == "signalfd"]
        assert events[0]["signal"] == "SIGTERM" and events[0]["code"] == "SI_USER"
        assert events[0]["sender"]["pid"] == killer.pid
        assert events[0]["sender"]["comm"] == "sh"
        assert f"received SIGTERM from pid {killer.pid}" in sup.log()
    finally:
        killer.kill()
        killer.wait()


def test_the_supervisor_own_stop_is_recorded_with_its_reason(running):
    running.ctl("stop", "worker", check=True)
    sent = [e for e in audit_events(running, "signal") if e["via"] == "supervisor" and e["target"]["program"] == "worker"]
    assert sent and sent[-1]["signal"] == "SIGTERM"
    assert sent[-1]["reason"].startswith("operator relayqctl stop by uid")


def test_redis_cli_shutdown_is_denied_and_recorded(make_supervisor, port, procs, tmp_path):
    sup = make_supervisor(redis_config(None, port, supervisor_extra="health_interval = 0.2")).start()
    redis_pid = sup.wait_state("redis", "RUNNING")["pid"]
    r = subprocess.run(["sh", "-c", f"{find_redis_tool('redis-cli')} -p {port} shutdown"], capture_output=True,
                       text=True, timeout=30)
    assert "NOPERM" in r.stdout + r.stderr
    assert ping(port) and sup.program("redis")["pid"] == redis_pid
    denied = wait_for(lambda: audit_events(sup, "redis_denied"), what="redis_denied event")[0]
    assert denied["command"] == "shutdown" and denied["user"] == "default"
    assert denied["client_addr"].startswith("127.0.0.1:")
    assert denied["count"] == 1
    # a client that keeps its connection open is named with its pinned identity
    holder = subprocess.Popen([PYTHON, "-c", textwrap.dedent(f"""
        import redis, sys, time
        r = redis.Redis(port={port})
        for _ in range(2):
            try:
                r.execute_command("SHUTDOWN")
            except redis.ResponseError as e:
                print(e, flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    procs.append(holder)
    assert "no permissions" in holder.stdout.readline()
    # (the gone redis-cli above is named too where the kernel witness runs: seen_by tracefs)
    named = wait_for(lambda: [e for e in audit_events(sup, "redis_denied")
                              if (e.get("sender") or {}).get("seen_by") == "procfs"],
                     what="denial with identity")
    assert named[0]["sender"]["pid"] == holder.pid
    assert sum(e["count"] for e in audit_events(sup, "redis_denied")) == 3
    assert "redis: denied shutdown" in sup.log()
    assert "User requested shutdown" not in (sup.dir / "log" / "redis.log").read_text()
    # the workers' ordinary commands still work
    assert redis.Redis(port=port).set("k", "v")


EXEC_FROM_THREAD = """
import os, sys, threading, time
if len(sys.argv) > 1:                       # after the exec: a plain single-threaded sleeper
    print("exec'd", flush=True)
    time.sleep(300)
def go():
    os.execv(sys.executable, [sys.executable, sys.argv[0], "again"])
threading.Thread(target=go).start()
time.sleep(300)
"""


def test_exec_from_a_non_leader_thread_keeps_the_program_traced(make_supervisor, port, procs, tmp_path):
    # the kernel gives the execing thread the leader's tid: the program keeps its pid,
    # the old thread's tid vanishes, and the tap must go on attributing signals
    (tmp_path / "execer.py").write_text(EXEC_FROM_THREAD)
    programs = f"""
    [[program]]
    name = "execer"
    command = ["{PYTHON}", "execer.py"]
    ready_after = 0.2
    """
    sup = make_supervisor(redis_config(None, port, programs=programs, supervisor_extra="kernel_trace = false")).start()
    pid = sup.wait_state("execer", "RUNNING")["pid"]
    log_file = sup.dir / "log" / "execer.log"
    wait_for(lambda: log_file.exists() and "exec'd" in log_file.read_text(), what="exec from the thread")
    assert sup.program("execer")["pid"] == pid and sup.program("execer")["state"] == "RUNNING"
    with open(f"/proc/{pid}/status") as f:
        assert int(next(line for line in f if line.startswith("TracerPid:")).split()[1]) == sup.pid
    sender = subprocess.Popen([PYTHON, "-c", f"import os, time; os.kill({pid}, {int(signal.SIGUSR1)}); time.sleep(30)"])
    procs.append(sender)
    event = wait_for(lambda: signal_events(sup, pid, "SIGUSR1"), what="signal after the exec")[0]
    assert event["sender"]["pid"] == sender.pid


def test_default_user_password_from_a_file(make_supervisor, port, tmp_path):
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret-for-workers\n")
    os.chmod(secret, 0o600)
    sup = make_supervisor(redis_config(None, port, programs=WORKER, redis_extra=f'password_file = "{secret}"')).start()
    sup.wait_all_running()
    with pytest.raises(redis.AuthenticationError):      # no retry: redis-py's backed off ~3 s first
        redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).ping()
    authed = redis.Redis(port=port, password="s3cret-for-workers")
    assert authed.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        authed.execute_command("SHUTDOWN")
    # the workers got the password through RELAYQ_REDIS_URL and still serve jobs
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor.selftest", "run", "-c", str(sup.config), "echo SUCCESS"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "SUCCESS", r.stderr


def test_a_supervisor_crash_does_not_take_redis_with_it(make_supervisor, port):
    # PTRACE_O_EXITKILL is never set: when the tracer dies, its tracees are detached, not killed
    sup = make_supervisor(redis_config(None, port)).start()
    redis_pid = sup.wait_state("redis", "RUNNING")["pid"]
    try:
        sup.proc.kill()
        sup.proc.wait(30)
        wait_for(lambda: "TracerPid:\t0" in open(f"/proc/{redis_pid}/status").read(), what="tracee detached")
        assert ping(port)
        # the next supervisor on the same config adopts it (issue 12), traced again
        again = make_supervisor(sup.config.read_text(), subdir=None).start()
        adopted = again.wait_state("redis", "RUNNING")
        assert adopted["pid"] == redis_pid
        wait_for(lambda: "TracerPid:\t0" not in open(f"/proc/{redis_pid}/status").read(), what="traced again")
        assert again.terminate() == 0
        assert not os.path.exists(f"/proc/{redis_pid}/status") or "zombie" in open(f"/proc/{redis_pid}/status").read()
    finally:
        try:
            os.kill(redis_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        remove_kernel_witness_leftovers(sup)


def remove_kernel_witness_leftovers(sup) -> None:
    """What a SIGKILLed supervisor's kernel witness leaves: its tracefs instance and, where
    the system has no tracefs mount, its private mount in run_dir. A new supervisor would
    remove them when it starts; the one in the crash test refuses to start."""
    from relayq_supervisor.linux import tracefs
    private = str(sup.dir / "run" / "tracefs")
    for root in (tracefs.find_mount(), private if private in tracefs.mounts() else None):
        if root is not None and os.path.isdir(tracefs.instance_path(root, f"relayq-{sup.pid}")):
            tracefs.remove_instance(tracefs.instance_path(root, f"relayq-{sup.pid}"))
    if private in tracefs.mounts():
        tracefs.umount(private)
        os.rmdir(private)
