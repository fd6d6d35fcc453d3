"""A supervisor killed with SIGKILL leaves Redis and its workers running; the next one
adopts that Redis with no downtime and ends with exactly one set of workers."""
from __future__ import annotations

import os
import signal

import psutil
import redis

from support import WORKER, free_port, redis_config, wait_for


def worker_pids(tmp_path) -> set[int]:
    """Every running reference worker of this test (by its cwd: the test's own dir)."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmd = proc.info["cmdline"] or []
        if "relayq_supervisor.selftest" in cmd and "worker" in cmd and proc.info["cwd"] == str(tmp_path):
            found.add(proc.info["pid"])
    return found


def test_next_supervisor_adopts_redis_and_replaces_orphan_workers(make_supervisor, tmp_path):
    port = free_port()
    text = redis_config(tmp_path, port, programs=WORKER.replace('numprocs = 2', f'numprocs = 2\ndirectory = "{tmp_path}"'))
    text = text.replace('args = ["--save", ""]', 'args = ["--appendonly", "yes", "--appendfsync", "always"]')
    first = make_supervisor(text).start()
    st = first.wait_all_running()
    redis_pid = next(p["pid"] for p in st["programs"] if p["name"] == "redis")
    old_workers = {p["pid"] for p in st["programs"] if p["name"].startswith("worker")}
    db = redis.Redis(port=port, socket_timeout=5)
    db.set("kept", "yes")

    first.proc.send_signal(signal.SIGKILL)          # a crash: nothing is stopped
    first.proc.wait(10)
    assert psutil.pid_exists(redis_pid) and db.ping()
    assert worker_pids(tmp_path) == old_workers

    second = make_supervisor(text, subdir=None)
    second.seen |= old_workers | {redis_pid}        # cleaned up by pid whatever happens
    second.start()
    st = second.wait_all_running()
    redis_now = next(p for p in st["programs"] if p["name"] == "redis")
    assert redis_now["pid"] == redis_pid and redis_now["reason"] == f"adopted pid {redis_pid} from the previous supervisor"
    adopted = second.audit_events("adopted")
    assert adopted[-1]["pid"] == redis_pid and adopted[-1]["traced"] is True
    assert "answers PING as the admin user" in adopted[-1]["verified"]
    stopped = {e["pid"] for e in second.audit_events("orphan_stopped")}
    assert stopped == old_workers
    new_workers = {p["pid"] for p in st["programs"] if p["name"].startswith("worker")}
    wait_for(lambda: worker_pids(tmp_path) == new_workers, what="exactly the new set of workers")
    assert not new_workers & old_workers
    assert db.get("kept") == b"yes"

    # the adopted Redis is supervised like any other: killed, it is restarted
    os.kill(redis_pid, signal.SIGKILL)
    back = wait_for(lambda: (lambda p: p if p["state"] == "RUNNING" and p["pid"] != redis_pid else None)(
        second.program("redis")), timeout=30, what="Redis restarted after the kill")
    assert "killed by SIGKILL" in back["last_exit"]["description"]
    fresh = redis.Redis(port=port, socket_timeout=5)
    assert fresh.get("kept") == b"yes"
    fresh.close()
    db.close()
    assert second.terminate() == 0
    assert not psutil.pid_exists(back["pid"])


def test_a_redis_that_is_not_ours_is_still_refused(make_supervisor, tmp_path, procs):
    import subprocess

    from support import REDIS_SERVER, wait_for_redis
    port = free_port()
    stranger = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--save", "", "--appendonly", "no",
                                 "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    procs.append(stranger)
    wait_for_redis(port, stranger)
    sup = make_supervisor(redis_config(tmp_path, port)).start()
    assert sup.proc.wait(30) == 2
    assert f"port {port} is held by pid {stranger.pid}" in sup.log()
