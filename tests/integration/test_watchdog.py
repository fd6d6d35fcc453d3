"""The watchdog with real processes: a silent program and a stuck Redis are noticed,
their evidence kept, and restarted."""
from __future__ import annotations

import subprocess
import textwrap

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import PYTHON, REDIS_SERVER, redis_config, wait_for

from relayq_supervisor.kinds.redis.acl import ADMIN_USER

HANGS = textwrap.dedent("""
    import os, socket, time
    def notify(msg):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.connect("\\0" + os.environ["NOTIFY_SOCKET"][1:])
        s.send(msg)
    import faulthandler; faulthandler.enable()
    notify(b"READY=1")
    for _ in range(3):
        notify(b"WATCHDOG=1")
        time.sleep(0.3)
    print("now stuck", flush=True)
    time.sleep(1000)
""")


def test_silent_program_gets_sigabrt_with_traceback_and_restarts(make_supervisor, tmp_path):
    (tmp_path / "hangs.py").write_text(HANGS)
    sup = make_supervisor(f"""
[supervisor]
run_dir = "run"
log_dir = "log"

[[program]]
name = "stuck"
command = ["{PYTHON}", "hangs.py"]
watchdog_sec = 1.5
stop_timeout = 3
[program.restart]
jitter = 0.0
backoff_initial = 0.2
""").start()
    first = sup.wait_state("stuck", "RUNNING")["pid"]
    fired = wait_for(lambda: sup.audit_events("watchdog"), timeout=20, what="watchdog event")
    assert fired[0]["pid"] == first and fired[0]["signal"] == "SIGABRT"
    assert fired[0]["cause"].startswith("watchdog: no WATCHDOG=1 for 1.5s")
    assert fired[0]["evidence"]["state"] in ("sleeping", "disk-sleep")
    p = wait_for(lambda: (lambda p: p if p["pid"] not in (None, first) else None)(sup.program("stuck")),
                 timeout=20, what="a new run")
    assert "killed by SIGABRT" in p["last_exit"]["description"] and "watchdog: no WATCHDOG=1" in \
        p["last_exit"]["description"]
    log = (tmp_path / "log" / "stuck.log").read_text()
    assert "now stuck" in log and "Fatal Python error: Aborted" in log      # faulthandler's traceback
    why = sup.ctl("why", "stuck").stdout
    assert "watchdog" in why


def test_stuck_redis_is_replaced_and_keeps_its_data(make_supervisor, port, tmp_path):
    version = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout
    debug = ', "--enable-debug-command", "local"' if " v=6." not in version else ""
    text = redis_config(tmp_path, port, redis_extra="watchdog_sec = 3\nstop_timeout = 5")
    text = text.replace('args = ["--save", ""]', f'args = ["--appendonly", "yes", "--appendfsync", "always"{debug}]')
    sup = make_supervisor(text).start()
    first = sup.wait_state("redis", "RUNNING")["pid"]
    password = (tmp_path / "run" / "redis-admin.pass").read_text().strip()
    admin = redis.Redis(port=port, username=ADMIN_USER, password=password, socket_timeout=60)
    admin.set("kept", "yes")
    sleeper = subprocess.Popen([PYTHON, "-c", f"""
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
# no retry: redis-py's default one re-sent DEBUG SLEEP to each new Redis, which the watchdog then replaced too
r = redis.Redis(port={port}, username={ADMIN_USER!r}, password={password!r}, socket_timeout=120,
                retry=Retry(NoBackoff(), 0))
try:
    r.execute_command("DEBUG", "SLEEP", "60")
except redis.RedisError:
    pass
"""])
    try:
        probe = redis.Redis(port=port, username=ADMIN_USER, password=password, socket_timeout=0.3,
                            retry=Retry(NoBackoff(), 0))

        def asleep():
            try:
                probe.ping()
                return False
            except redis.TimeoutError:
                return True
            except redis.ConnectionError:
                return False
        wait_for(asleep, timeout=10, what="Redis to be stuck in DEBUG SLEEP")
        probe.close()
        # the supervisor keeps answering while Redis is stuck
        st = sup.ctl("status", "--json", timeout=10)
        assert st.returncode in (0, 3), st.stderr
        fired = wait_for(lambda: sup.audit_events("watchdog"), timeout=30, what="watchdog event")
        assert fired[0]["program"] == "redis" and fired[0]["cause"].startswith("watchdog: no PONG for")
        p = wait_for(lambda: (lambda p: p if p["state"] == "RUNNING" and p["pid"] != first else None)(
            sup.program("redis")), timeout=30, what="a new Redis")
        assert "watchdog: no PONG" in p["last_exit"]["description"]
        fresh = redis.Redis(port=port, username=ADMIN_USER, password=password, socket_timeout=10)
        assert fresh.get("kept") == b"yes"          # appendfsync always: the acknowledged write survived
        fresh.close()
    finally:
        sleeper.kill()
        sleeper.wait()
        admin.close()


def test_max_rss_restarts_a_growing_program(make_supervisor, tmp_path):
    (tmp_path / "grows.py").write_text(textwrap.dedent("""
        import time
        hog = bytearray(120 * 2**20)       # touched, so resident
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        print("allocated", flush=True)
        time.sleep(1000)
    """))
    sup = make_supervisor(f"""
[supervisor]
run_dir = "run"
log_dir = "log"

[[program]]
name = "grows"
command = ["{PYTHON}", "grows.py"]
max_rss = "64MiB"
max_rss_interval = 0.5
ready_after = 0.2
stop_timeout = 2
""").start()
    first = sup.wait_state("grows", "RUNNING")["pid"]
    fired = wait_for(lambda: sup.audit_events("watchdog"), timeout=30, what="max_rss to fire")
    assert fired[0]["pid"] == first and fired[0]["cause"].startswith("rss ")
    assert "over max_rss 64 MiB" in fired[0]["cause"] and fired[0]["evidence"]["rss"] > 64 * 2**20
