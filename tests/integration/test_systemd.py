"""Type=notify protocol, reload, inotify watches (config, tamper, rivals), doctor CLI."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import textwrap
import time

import redis
from support import PYTHON, WORKER, redis_config, wait_for

from relayq_supervisor.ctl.client import Unreachable


def audit_events(sup, kind):
    return sup.audit_events(kind)


# socket(7): the kernel stamps each datagram as it is queued (CLOCK_REALTIME, a timespec);
# the value of asm-generic/socket.h (x86-64, arm64), which Python's socket module does not export
SO_TIMESTAMPNS = 35


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET. Each message's `_t` is when it
    was sent (the kernel's stamp), not when this test got round to reading it: read late, queued
    WATCHDOG=1 pings came out back to back and their gaps looked like a broken timer."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(self.path)
        self.messages: list[dict] = []

    def receive(self, timeout: float) -> dict | None:
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
        except TimeoutError:
            return None
        msg = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        [(sec, nsec)] = [struct.unpack("qq", d) for level, kind, d in ancillary
                         if (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS)]
        msg["_t"] = sec + nsec / 1e9
        self.messages.append(msg)
        return msg

    def until(self, predicate, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.receive(deadline - time.monotonic())
            if msg is not None and predicate(msg):
                return msg
        raise AssertionError(f"no matching notify message; got {self.messages[-10:]}")

    def close(self):
        self.sock.close()


def test_notify_sequence_ready_watchdog_status_stopping(make_supervisor, port, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        # Redis saves at shutdown: the dump it writes is what EXTEND_TIMEOUT_USEC protects
        text = redis_config(None, port, programs=WORKER)
        sup = make_supervisor(text.replace('args = ["--save", ""]', 'args = ["--save", "3600 1"]'))
        env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="200000")
        sup.start(env=env)
        ready = notify.until(lambda m: m.get("READY") == "1")
        # READY=1 only once Redis answers and both workers run
        assert redis.Redis(port=port, socket_timeout=1).ping()
        assert ready["STATUS"].startswith("redis running; worker 2/2 running; 0 blocked signals today")
        assert not any(m.get("READY") for m in notify.messages[:-1])
        statuses_before = [m["STATUS"] for m in notify.messages[:-1] if "STATUS" in m]
        assert statuses_before and all("worker 2/2" not in s for s in statuses_before)
        # the watchdog pings come from the loop, at half of WATCHDOG_USEC
        pings = []
        while len(pings) < 4:
            pings.append(notify.until(lambda m: m.get("WATCHDOG") == "1", timeout=5)["_t"])
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        # 0.1 s apart; the upper bound only catches a missing timer, not a slow machine
        assert all(0.05 < g < 1.5 for g in gaps), gaps
        # a dataset Redis must save at shutdown
        r = redis.Redis(port=port)
        pipe = r.pipeline(transaction=False)
        for i in range(50000):
            pipe.set(f"key:{i}", "x" * 200)
        pipe.execute()
        sup.proc.send_signal(signal.SIGTERM)
        stopping = notify.until(lambda m: m.get("STOPPING") == "1")
        extend = notify.until(lambda m: "EXTEND_TIMEOUT_USEC" in m)
        assert int(extend["EXTEND_TIMEOUT_USEC"]) >= 5_000_000
        assert extend["_t"] >= stopping["_t"]
        assert sup.proc.wait(60) == 0
        assert "DB saved on disk" in (sup.dir / "log" / "redis.log").read_text()
    finally:
        notify.close()


def test_no_watchdog_without_watchdog_usec(make_supervisor, port, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        sup = make_supervisor(redis_config(None, port))
        sup.start(env=dict(os.environ, NOTIFY_SOCKET=notify.path))
        notify.until(lambda m: m.get("READY") == "1")
        sup.ctl("status", check=True)
        assert sup.terminate() == 0
        while notify.receive(0.2) is not None:
            pass
        assert not any("WATCHDOG" in m for m in notify.messages)
        # the whole conversation: STATUS while starting, READY=1 once, STATUS, STOPPING=1,
        # then EXTEND_TIMEOUT_USEC while programs stop
        kinds = "".join("R" if m.get("READY") == "1" else "P" if m.get("STOPPING") == "1"
                        else "E" if "EXTEND_TIMEOUT_USEC" in m else "S" if "STATUS" in m else "?"
                        for m in notify.messages)
        assert re.fullmatch(r"S*RS*PE+", kinds), kinds
    finally:
        notify.close()


def test_reload_resizes_only_the_difference_and_keeps_redis(make_supervisor, port):
    text = redis_config(None, port, programs=WORKER)
    sup = make_supervisor(text).start()
    st = sup.wait_all_running()
    pids = {p["name"]: p["pid"] for p in st["programs"]}
    sup.config.write_text(text.replace("numprocs = 2", "numprocs = 3"))
    wait_for(lambda: "config changed on disk since load" in sup.ctl("status").stdout, what="changed on disk note")
    r = sup.ctl("reload")
    assert r.returncode == 0, r.stderr
    assert "resized: worker" in r.stdout
    sup.wait_state("worker:2", "RUNNING")
    after = {p["name"]: p["pid"] for p in sup.status()["programs"]}
    assert after["redis"] == pids["redis"]
    assert after["worker:0"] == pids["worker:0"] and after["worker:1"] == pids["worker:1"]
    assert "config changed on disk" not in sup.ctl("status").stdout
    # shrink with SIGHUP: only worker:2 goes
    sup.config.write_text(text)
    os.kill(sup.pid, signal.SIGHUP)
    wait_for(lambda: "worker:2" not in [p["name"] for p in sup.status()["programs"]], what="worker:2 removed")
    after = {p["name"]: p["pid"] for p in sup.status()["programs"]}
    assert after == {k: v for k, v in pids.items()}


def test_broken_reload_changes_nothing(make_supervisor, port):
    text = redis_config(None, port, programs=WORKER)
    sup = make_supervisor(text).start()
    before = {p["name"]: p["pid"] for p in sup.wait_all_running()["programs"]}
    sup.config.write_text(text + "\n[[program]]\nname = 'x'\ncommand = ['/no/such']\n")
    r = sup.ctl("reload")
    assert r.returncode == 2
    assert f"{sup.config}:" in r.stderr and "not found" in r.stderr
    assert {p["name"]: p["pid"] for p in sup.status()["programs"]} == before


def test_reload_adds_changes_and_removes_programs(make_supervisor, port):
    extra = """
    [[program]]
    name = "sleeper"
    command = ["sleep", "300"]
    ready_after = 0.1
    """
    text = redis_config(None, port, programs=WORKER + textwrap.dedent(extra))
    sup = make_supervisor(text).start()
    before = {p["name"]: p["pid"] for p in sup.wait_all_running()["programs"]}
    new = text.replace('command = ["sleep", "300"]', 'command = ["sleep", "301"]') + textwrap.dedent("""
    [[program]]
    name = "newcomer"
    command = ["sleep", "302"]
    ready_after = 0.1
    """)
    new = new.replace(WORKER.strip(), "")
    sup.config.write_text(new)
    r = sup.ctl("reload")
    assert r.returncode == 0, r.stderr
    assert "added: newcomer" in r.stdout and "removed: worker" in r.stdout and "changed: sleeper" in r.stdout
    st = sup.wait_all_running()
    after = {p["name"]: p["pid"] for p in st["programs"]}
    assert set(after) == {"redis", "sleeper", "newcomer"}
    assert after["redis"] == before["redis"] and after["sleeper"] != before["sleeper"]


def test_deleted_lock_file_is_taken_again_and_recorded(make_supervisor, port):
    sup = make_supervisor(redis_config(None, port)).start()
    sup.wait_state("redis", "RUNNING")
    lock = sup.dir / "run" / "redis.lock"
    lock.unlink()
    wait_for(lambda: audit_events(sup, "tamper"), what="tamper event")
    assert audit_events(sup, "tamper")[0]["path"] == str(lock)
    wait_for(lambda: lock.exists() and subprocess.run(["flock", "-n", str(lock), "true"]).returncode == 1,
             what="lock held again")
    assert f'"pid": {sup.pid}' in lock.read_text()


def test_deleted_control_socket_comes_back(make_supervisor, port):
    sup = make_supervisor(redis_config(None, port)).start()
    sup.wait_state("redis", "RUNNING")
    (sup.dir / "run" / "relayq.sock").unlink()
    wait_for(lambda: answers(sup), what="control socket back")
    assert sup.ctl("pid").stdout.strip() == str(sup.pid)
    assert [e["path"] for e in audit_events(sup, "tamper")] == [str(sup.dir / "run" / "relayq.sock")]


def answers(sup) -> bool:
    """Whether the supervisor answers on its control socket (asked from this process: a relayqctl
    per poll costs ~0.25 s of CPU, and under load only a few fitted in the deadline)."""
    try:
        return sup.control("pid")["pid"] == sup.pid
    except Unreachable:
        return False


def make_fake_root(root):
    lib = root / "lib" / "systemd" / "system"
    etc = root / "etc" / "systemd" / "system"
    (etc / "multi-user.target.wants").mkdir(parents=True)
    lib.mkdir(parents=True)
    (lib / "redis-server.service").write_text(textwrap.dedent("""\
        [Unit]
        Description=Advanced key-value store
        [Service]
        Type=notify
        ExecStart=/usr/bin/redis-server /etc/redis/redis.conf --supervised systemd --daemonize no
        [Install]
        WantedBy=multi-user.target
        """))
    os.symlink(lib / "redis-server.service", etc / "multi-user.target.wants" / "redis-server.service")
    (root / "etc" / "cron.d").mkdir(parents=True)
    return etc


def test_a_rival_timer_dropped_in_is_recorded_within_a_second(make_supervisor, port, tmp_path):
    fake = tmp_path / "fakeroot"
    etc = make_fake_root(fake)
    sup = make_supervisor(redis_config(None, port, supervisor_extra=f'doctor_root = "{fake}"')).start()
    sup.wait_state("redis", "RUNNING")
    assert "rival manager systemd-unit redis-server.service" in sup.log()
    (etc / "relayq-redis-monitor.service").write_text(
        "[Service]\nType=oneshot\nExecStart=/usr/bin/redis-cli -p 6379 shutdown\n")
    (etc / "relayq-redis-monitor.timer").write_text("[Timer]\nOnCalendar=minutely\n[Install]\nWantedBy=timers.target\n")
    # nothing but the inotify watch looks at these directories while the supervisor runs, so the
    # event itself shows it came at once; no wall-time bound here (it failed on a loaded machine)
    wait_for(lambda: any(e["path"].endswith("relayq-redis-monitor.timer") for e in audit_events(sup, "rival_manager")),
             interval=0.01, what="rival_manager event")
    assert "rival manager appeared" in sup.log()


def test_doctor_cli_finds_the_incident(make_supervisor, port, tmp_path):
    fake = tmp_path / "fakeroot"
    etc = make_fake_root(fake)
    (etc / "relayq-redis-monitor.service").write_text("[Service]\nExecStart=/usr/local/bin/redis-monitor.sh\n")
    (etc / "relayq-redis-monitor.timer").write_text("[Timer]\nOnCalendar=minutely\n")
    (fake / "etc" / "cron.d" / "redis-check").write_text("*/5 * * * * root redis-cli -p 6379 shutdown\n")
    cfg = tmp_path / "config.toml"
    cfg.write_text(redis_config(None, port))
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor.ctl", "doctor", "-c", str(cfg), "--root", str(fake)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "redis-server.service" in r.stdout
    assert "systemctl disable --now redis-server.service && systemctl mask redis-server.service" in r.stdout
    assert "relayq-redis-monitor.timer" in r.stdout and "systemctl disable --now relayq-redis-monitor.timer" in r.stdout
    assert "/etc/cron.d/redis-check" in r.stdout and "redis-cli -p 6379 shutdown" in r.stdout
    js = subprocess.run([PYTHON, "-m", "relayq_supervisor.ctl", "doctor", "-c", str(cfg), "--root", str(fake),
                         "--json"], capture_output=True, text=True, timeout=60)
    names = {r["name"] for r in json.loads(js.stdout)["rivals"]}
    assert {"redis-server.service", "relayq-redis-monitor.timer"} <= names
    clean = tmp_path / "clean"
    clean.mkdir()
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor.ctl", "doctor", "-c", str(cfg), "--root", str(clean)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "no rival managers found" in r.stdout


def test_reload_is_framed_by_reloading_and_ready(make_supervisor, port, tmp_path):
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        text = redis_config(None, port, programs=WORKER)
        sup = make_supervisor(text)
        sup.start(env=dict(os.environ, NOTIFY_SOCKET=notify.path))
        notify.until(lambda m: m.get("READY") == "1")
        sup.config.write_text(text.replace("numprocs = 2", "numprocs = 3"))
        assert sup.ctl("reload").returncode == 0
        reloading = notify.until(lambda m: m.get("RELOADING") == "1")
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 < now_usec - int(reloading["MONOTONIC_USEC"]) < 60_000_000
        ready = notify.until(lambda m: m.get("READY") == "1")
        assert ready["_t"] >= reloading["_t"] and "worker" in ready["STATUS"]
        sup.terminate()
        notify.until(lambda m: m.get("STOPPING") == "1")
    finally:
        notify.close()


def test_reload_refuses_what_needs_a_restart_and_keeps_supervisor_settings(make_supervisor, port):
    text = redis_config(None, port, programs=WORKER)
    sup = make_supervisor(text).start()
    before = {p["name"]: p["pid"] for p in sup.wait_all_running()["programs"]}
    sup.config.write_text(text.replace('dir = "data"', 'dir = "elsewhere"'))
    r = sup.ctl("reload")
    assert r.returncode == 1 and "needs a restart of the supervisor" in r.stderr and "nothing changed" in r.stderr
    assert {p["name"]: p["pid"] for p in sup.status()["programs"]} == before
    # a [supervisor] change is reported, not applied: new programs still log where the running ones do
    sup.config.write_text(text.replace('log_dir = "log"', 'log_dir = "log2"') + textwrap.dedent("""
        [[program]]
        name = "late"
        command = ["sh", "-c", "echo late arrival; exec sleep 300"]
        ready_after = 0.1
        """))
    r = sup.ctl("reload")
    assert r.returncode == 0, r.stderr
    assert "added: late" in r.stdout and "[supervisor] log_dir: restart the supervisor to apply" in r.stdout
    sup.wait_state("late", "RUNNING")
    wait_for(lambda: (sup.dir / "log" / "late.log").exists() and "late arrival" in (sup.dir / "log" / "late.log").read_text(),
             what="late's log in the running log_dir")
    assert not (sup.dir / "log2").exists()


def test_reload_adding_a_program_owned_elsewhere_changes_nothing(make_supervisor, port, procs):
    text = redis_config(None, port, programs=WORKER)
    sup = make_supervisor(text).start()
    before = {p["name"]: p["pid"] for p in sup.wait_all_running()["programs"]}
    lock = sup.dir / "run" / "late.lock"
    holder = subprocess.Popen(["flock", str(lock), "sh", "-c", "echo held; exec sleep 60"], stdout=subprocess.PIPE,
                              text=True)
    procs.append(holder)
    assert holder.stdout.readline().strip() == "held"
    sup.config.write_text(text.replace("numprocs = 2", "numprocs = 3") + textwrap.dedent("""
        [[program]]
        name = "late"
        command = ["sleep", "300"]
        """))
    r = sup.ctl("reload")
    assert r.returncode == 1 and "program late is owned by" in r.stderr and "nothing changed" in r.stderr
    assert {p["name"]: p["pid"] for p in sup.status()["programs"]} == before


def test_deleted_run_dir_comes_back_and_a_second_supervisor_is_still_refused(make_supervisor):
    sup = make_supervisor(textwrap.dedent("""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"
        [[program]]
        name = "sleeper"
        command = ["sleep", "300"]
        """)).start()
    sup.wait_state("sleeper", "RUNNING")
    run = sup.dir / "run"
    # moved away whole (then deleted): the directory, not file by file
    run.rename(sup.dir / "run.old")
    shutil.rmtree(sup.dir / "run.old")
    wait_for(lambda: answers(sup), what="control socket back")
    for lock in (run / "supervisor.lock", run / "sleeper.lock"):
        wait_for(lambda lock=lock: lock.exists() and subprocess.run(["flock", "-n", str(lock), "true"]).returncode
                 == 1, what=f"{lock} held again")
        assert f'"pid": {sup.pid}' in lock.read_text()
    assert str(run) in [e["path"] for e in audit_events(sup, "tamper")]
    assert sup.program("sleeper")["state"] == "RUNNING"
    # rm -rf: the supervisor takes its files again as they go (rm may then find the directory
    # not empty); a second supervisor started at once is refused by the abstract socket names
    shutil.rmtree(run, ignore_errors=True)
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor", "-c", str(sup.config)], capture_output=True, text=True,
                       timeout=30, cwd=sup.dir)
    assert r.returncode == 2, r.stderr
    assert f"is owned by pid {sup.pid}" in r.stderr and "abstract socket @relayq-supervisor/" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    wait_for(lambda: answers(sup), what="control socket back again")
    assert sup.program("sleeper")["state"] == "RUNNING"


def test_deleted_run_dir_gets_redis_admin_password_back(make_supervisor, port):
    """A successor after a crash adopts Redis with the password in run_dir: it must survive a
    deleted run_dir, with the same password (Redis still runs with it)."""
    sup = make_supervisor(redis_config(None, port)).start()
    redis_pid = sup.wait_state("redis", "RUNNING")["pid"]
    password = sup.dir / "run" / "redis-admin.pass"
    before = password.read_text()
    shutil.rmtree(sup.dir / "run", ignore_errors=True)
    wait_for(lambda: password.exists() and password.read_text() == before, timeout=10,
             what="the admin password file back")
    # and the data dir's owner record, which names the Redis to adopt (kinds/redis/data_dir.py)
    wait_for(lambda: [r for r in (sup.dir / "run").glob("redis-dir@*.lock")
                      if json.loads(r.read_text() or "{}").get("redis", {}).get("pid") == redis_pid],
             timeout=10, what="the data dir's record back with Redis' pid")
    assert password.stat().st_mode & 0o777 == 0o600
    assert sup.program("redis")["state"] == "RUNNING"
