"""A supervisor killed with SIGKILL leaves Redis and its workers running; the next one
adopts that Redis with no downtime and ends with exactly one set of workers."""
from __future__ import annotations

import os
import signal

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import REDIS_SERVER, WORKER, free_port, redis_config, wait_for


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


def live_redis_on(port: int) -> set[int]:
    """Live processes listening on the port (a second Redis, adopted or not, would show)."""
    return {c.pid for c in psutil.net_connections("tcp") if c.pid and c.laddr and c.laddr.port == port
            and c.status == psutil.CONN_LISTEN and psutil.pid_exists(c.pid)
            and psutil.Process(c.pid).status() != psutil.STATUS_ZOMBIE}


def test_three_crashes_in_a_row_keep_one_redis_and_one_set_of_workers(make_supervisor, tmp_path):
    """The bench's `adoption` loop (bench/adoption.py), short: kill -9 the supervisor, start the
    next, and after each round the same Redis, exactly the new workers, the key."""
    port = free_port()
    workers = WORKER.replace('numprocs = 2', f'numprocs = 2\ndirectory = "{tmp_path}"')
    text = redis_config(tmp_path, port, programs=workers)
    text = text.replace('args = ["--save", ""]', 'args = ["--appendonly", "yes"]')
    sup = make_supervisor(text).start()
    st = sup.wait_all_running()
    redis_pid = next(p["pid"] for p in st["programs"] if p["name"] == "redis")
    db = redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    db.set("kept", "yes")
    for n in range(3):
        old_workers = {p["pid"] for p in st["programs"] if p["name"].startswith("worker")}
        seen_events = len(sup.audit_events())
        sup.proc.send_signal(signal.SIGKILL)
        sup.proc.wait(10)
        nxt = make_supervisor(text, subdir=None)
        nxt.seen |= sup.seen | old_workers | {redis_pid}     # cleaned up by pid whatever happens
        sup = nxt.start()
        st = sup.wait_all_running()
        events = sup.audit_events()[seen_events:]
        assert next(p for p in st["programs"] if p["name"] == "redis")["pid"] == redis_pid, f"round {n}"
        adopted = [e for e in events if e["event"] == "adopted"]
        assert [e["pid"] for e in adopted] == [redis_pid]
        # recorded as the binary it execs, not as the forked supervisor it was before exec
        assert f"executable {os.path.realpath(REDIS_SERVER)} as recorded" in adopted[0]["verified"]
        assert {e["pid"] for e in events if e["event"] == "orphan_stopped"} == old_workers
        new_workers = {p["pid"] for p in st["programs"] if p["name"].startswith("worker")}
        assert len(new_workers) == 2 and not new_workers & old_workers
        wait_for(lambda new=new_workers: worker_pids(tmp_path) == new, what=f"round {n}: exactly the new workers")
        assert live_redis_on(port) == {redis_pid}
        assert db.get("kept") == b"yes"

    os.kill(redis_pid, signal.SIGKILL)
    back = wait_for(lambda: (lambda p: p if p["state"] == "RUNNING" and p["pid"] != redis_pid else None)(
        sup.program("redis")), timeout=30, what="the adopted Redis restarted after kill -9")
    fresh = redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    assert fresh.get("kept") == b"yes"
    fresh.close()
    db.close()
    assert sup.terminate() == 0
    assert not psutil.pid_exists(back["pid"])
