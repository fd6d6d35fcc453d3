"""relayqctl against a real supervisor with real Redis; garbage on the control socket."""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from support import PYTHON, WORKER, Supervisor, free_port, redis_config, wait_for


@pytest.fixture
def running(make_supervisor, port):
    sup = make_supervisor(redis_config(None, port, programs=WORKER)).start()
    sup.wait_all_running()
    return sup


@pytest.fixture(scope="module")
def looked_at(tmp_path_factory):
    """One supervisor for the tests that only look at it or probe its socket (status, pid, unknown
    names, garbage, a silent client): started once, not once per test; the others change it."""
    sup = Supervisor(tmp_path_factory.mktemp("looked-at"), redis_config(None, free_port(), programs=WORKER))
    try:
        sup.start().wait_all_running()
        yield sup
    finally:
        sup.cleanup()


def raw_request(path, payload: bytes, shut_write=True, timeout=10) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    s.sendall(payload)
    if shut_write:
        s.shutdown(socket.SHUT_WR)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return json.loads(data)


def test_status_table_and_json(looked_at):
    r = looked_at.ctl("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"relayq-supervisor pid {looked_at.pid}, up ")
    assert f"config {looked_at.config}" in lines[0] and "redis " in lines[0]
    assert lines[1].split()[:5] == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS"]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"redis", "worker:0", "worker:1"}
    assert all(row[1] == "RUNNING" for row in rows.values())
    st = json.loads(looked_at.ctl("status", "--json").stdout)
    for p in st["programs"]:
        assert {"name", "state", "pid", "uptime_s", "restarts", "last_exit", "next_start_in_s", "reason"} <= set(p)
    assert st["supervisor"]["pid"] == looked_at.pid


def test_kill_9_worker_shows_restart_and_signal(running):
    victim = running.program("worker:1")
    os.kill(victim["pid"], signal.SIGKILL)
    p = running.wait_state("worker:1", "RUNNING", restarts=1)
    assert p["last_exit"]["signal"] == "SIGKILL"
    r = running.ctl("status", "worker:1")
    assert r.returncode == 0
    assert "killed by SIGKILL" in r.stdout
    assert r.stdout.splitlines()[2].split()[4] == "1"


def test_stop_redis_alone_then_start_it(running):
    workers_before = [running.program(n)["pid"] for n in ("worker:0", "worker:1")]
    r = running.ctl("stop", "redis")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "redis: STOPPED" in r.stdout
    st = running.ctl("status")
    assert st.returncode == 3
    assert [running.program(n)["pid"] for n in ("worker:0", "worker:1")] == workers_before
    assert running.program("redis")["state"] == "STOPPED"
    # a stopped program stays stopped: nothing restarts it behind the operator's back
    assert running.ctl("status", "redis").returncode == 3
    r = running.ctl("start", "redis")
    assert r.returncode == 0 and "redis: RUNNING" in r.stdout
    assert running.ctl("status").returncode == 0


def test_stop_with_dependents_stops_workers_first(running):
    r = running.ctl("stop", "redis", "--with-dependents")
    assert r.returncode == 0, r.stdout + r.stderr
    states = {p["name"]: p["state"] for p in running.status()["programs"]}
    assert states == {"redis": "STOPPED", "worker:0": "STOPPED", "worker:1": "STOPPED"}
    log = running.log()
    assert log.rindex("worker:0: STOPPING -> STOPPED") < log.rindex("redis: RUNNING -> STOPPING")
    # starting a worker brings up what it depends on
    r = running.ctl("start", "worker:0")
    assert r.returncode == 0, r.stdout
    states = {p["name"]: p["state"] for p in running.status()["programs"]}
    assert states["redis"] == "RUNNING" and states["worker:0"] == "RUNNING" and states["worker:1"] == "STOPPED"


def test_restart_and_no_wait(running):
    before = running.program("worker:0")["pid"]
    r = running.ctl("restart", "worker:0")
    assert r.returncode == 0, r.stdout
    after = running.program("worker:0")
    assert after["state"] == "RUNNING" and after["pid"] != before
    r = running.ctl("stop", "worker", "--no-wait")
    assert r.returncode == 0
    for name in ("worker:0", "worker:1"):
        running.wait_state(name, "STOPPED")


def test_pid(looked_at):
    assert looked_at.ctl("pid").stdout.strip() == str(looked_at.pid)
    assert looked_at.ctl("pid", "redis").stdout.strip() == str(looked_at.program("redis")["pid"])


def test_unknown_name_exits_4(looked_at):
    for cmd in (("status", "nope"), ("start", "nope"), ("stop", "worker:7")):
        r = looked_at.ctl(*cmd)
        assert r.returncode == 4, cmd
        assert "unknown program name" in r.stderr


def test_status_without_supervisor_exits_1_in_one_line(tmp_path, port):
    cfg = tmp_path / "config.toml"
    cfg.write_text(redis_config(None, port))
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor.ctl", "status", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "no supervisor is listening" in r.stderr and "relayq.sock" in r.stderr
    # a stale socket file left by a dead supervisor
    (tmp_path / "run").mkdir(exist_ok=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "run" / "relayq.sock"))
    stale.close()
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor.ctl", "status", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and "no supervisor is listening (stale socket)" in r.stderr


def test_stale_socket_is_replaced_at_start_up(make_supervisor, port):
    sup = make_supervisor(redis_config(None, port))
    (sup.dir / "run").mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sup.dir / "run" / "relayq.sock"))
    stale.close()
    sup.start()
    sup.wait_state("redis", "RUNNING")
    assert oct(os.stat(sup.dir / "run" / "relayq.sock").st_mode & 0o777) == "0o660"


def test_shutdown(running):
    r = running.ctl("shutdown")
    assert r.returncode == 0 and "stopped" in r.stdout
    assert running.proc.wait(30) == 0


def test_garbage_gets_error_replies_and_supervision_continues(looked_at):
    path = looked_at.dir / "run" / "relayq.sock"
    cases = [
        (b"this is not json\n", "not JSON"),
        (b"[1, 2, 3]\n", "expected a JSON object"),
        (b'{"v": 99, "cmd": "status"}\n', "unsupported protocol version"),
        (b'{"v": 1, "cmd": "rm -rf /"}\n', "unknown command"),
        (b'{"v": 1, "cmd": "start", "args": {"names": "redis"}}\n', "'names' must be a list"),
        (b'{"v": 1, "cmd": "status"', "truncated request"),
        (b"", "empty request"),
        (b"\xff\xfe\x00garbage\n", "not JSON"),
        (b"x" * 100_000 + b"\n", "request too large"),
    ]
    for payload, expected in cases:
        reply = raw_request(path, payload)
        assert reply["ok"] is False, payload[:40]
        assert expected in reply["error"], (payload[:40], reply)
    assert looked_at.ctl("status").returncode == 0


def test_a_silent_client_does_not_block_the_supervisor(looked_at):
    path = looked_at.dir / "run" / "relayq.sock"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(path))
    try:
        t0 = time.monotonic()
        r = looked_at.ctl("status")
        assert r.returncode == 0
        # the silent client is answered (timed out) by the server, not left hanging forever
        silent.settimeout(30)
        data = silent.recv(4096)
        assert b"no request within" in data
        assert time.monotonic() - t0 < 30
    finally:
        silent.close()


@pytest.fixture
def shared_dir():
    path = tempfile.mkdtemp(prefix="relayq-shared-")     # /tmp: reachable by other users
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_unprivileged_peer_is_refused(make_supervisor, port, shared_dir):
    # a socket in a directory others can reach, opened to everyone, so the check that
    # refuses is the supervisor's SO_PEERCRED check and not the file mode
    if os.getuid() != 0:
        pytest.skip("needs root to become another user")
    shared = shared_dir
    sock = shared / "ctl.sock"
    sup = make_supervisor(redis_config(None, port, supervisor_extra=f'control_socket = "{sock}"')).start()
    sup.wait_state("redis", "RUNNING")
    os.chmod(sock, 0o666)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock))
            s.sendall(b'{"v":1,"cmd":"shutdown","args":{}}\n')
            data = s.recv(4096)
            code = 0 if b"permission denied: uid 65534" in data else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    wait_for(lambda: "control.server: refused uid 65534" in sup.log(), what="refusal logged")
    assert sup.proc.poll() is None
    assert sup.program("redis")["state"] == "RUNNING"


def test_backoff_reason_is_live(make_supervisor, port):
    programs = """
    [[program]]
    name = "flaky"
    command = ["sh", "-c", "exit 1"]
    ready_after = 5
    [program.restart]
    backoff_initial = 30
    jitter = 0
    """
    sup = make_supervisor(redis_config(None, port, programs=programs)).start()
    p = sup.wait_state("flaky", "BACKOFF")
    assert p["reason"].startswith("next start in ") and ", failure 1 of 5; last: exited 1" in p["reason"]
    assert 0 < p["next_start_in_s"] <= 30
    r = sup.ctl("status", "flaky")
    assert r.returncode == 3 and "failure 1 of 5" in r.stdout


def read_events_until(proc, predicate, timeout=30.0) -> list[dict]:
    """JSON lines from proc's stdout until one matches; a deadline instead of a blocking read."""
    import select
    deadline = time.monotonic() + timeout
    buf, events = b"", []
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            events.append(json.loads(line))
            if predicate(events[-1]):
                return events
    raise AssertionError(f"no matching event within {timeout}s; got {events[-5:]}")


def test_audit_timeline_filters_follow_and_bad_input(running, procs):
    r = running.ctl("audit", "--program", "worker", "--since", "10m")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines and all("worker" in line for line in lines)
    bad = running.ctl("audit", "--since", "yesterday-ish")
    assert bad.returncode == 2 and "yesterday-ish" in bad.stderr
    old_pid = running.program("worker:1")["pid"]
    follower = subprocess.Popen([PYTHON, "-m", "relayq_supervisor.ctl", "audit", "-c", str(running.config),
                                 "--follow", "--json", "--program", "worker:1"], stdout=subprocess.PIPE)
    procs.append(follower)
    # the log so far comes first, ending with worker:1's first spawn
    read_events_until(follower, lambda e: e["event"] == "spawn" and e["pid"] == old_pid)
    running.ctl("restart", "worker:1", check=True)
    new_pid = running.program("worker:1")["pid"]
    seen = read_events_until(follower, lambda e: e["event"] == "spawn" and e["pid"] == new_pid)
    assert any(e["event"] == "exit" and e["pid"] == old_pid for e in seen)
    assert all(e.get("program", e.get("target", {}).get("program")) == "worker:1" for e in seen)
