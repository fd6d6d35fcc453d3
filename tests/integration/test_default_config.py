"""The repository's config.toml: valid, runs Redis plus two workers that do a job, and keeps data."""
from __future__ import annotations

import pathlib
import re
import subprocess

import pytest
import redis
from support import PYTHON, embedded_redis_tool, find_redis_tool

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_default_config_checks():
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor", "-c", str(REPO / "config.toml"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "worker: " in r.stdout and "(worker:0, worker:1), after redis" in r.stdout


def default_config(port: int, binary: str | None = None) -> str:
    text = (REPO / "config.toml").read_text()
    text = re.sub(r"(?m)^port = \d+", f"port = {port}", text)      # a free port
    if binary is not None:
        text = re.sub(r'(?m)^binary = ""', f'binary = "{binary}"', text)
    return text


def test_default_config_runs_and_serves_a_job(make_supervisor, port):
    sup = make_supervisor(default_config(port)).start()
    st = sup.wait_all_running()
    assert [p["name"] for p in st["programs"]] == ["redis", "worker:0", "worker:1"]
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor.selftest", "run", "-c", str(sup.config), "echo SUCCESS"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "SUCCESS", r.stderr
    assert sup.terminate() == 0


# Both Redis builds the project meets: the embedded one (6.2, which takes "60 1000" as one word)
# and Debian's (7.x). Each is a real redis-server; a build that is not installed is not a test.
BUILDS = {"embedded": embedded_redis_tool("redis-server"), "system": find_redis_tool("redis-server")}


@pytest.mark.parametrize("build", [b for b, path in BUILDS.items() if path])
def test_default_config_keeps_acknowledged_writes(make_supervisor, port, build):
    """set; relayqctl restart redis; supervisor stop and start; get: the value is there."""
    sup = make_supervisor(default_config(port, BUILDS[build])).start()
    sup.wait_all_running()
    db = redis.Redis(port=port, socket_timeout=5)
    try:
        # what Redis actually took, not what we passed
        assert db.config_get("appendonly") == {"appendonly": "yes"}
        assert db.config_get("save")["save"] == "3600 1 300 100 60 10000"
        db.set("important", "42")
        sup.ctl("restart", "redis", check=True)
        sup.wait_all_running()
        assert db.get("important") == b"42", "lost across relayqctl restart redis"
        db.set("more", "43")
        assert sup.terminate() == 0
        sup.start()
        sup.wait_all_running()
        assert db.get("important") == b"42" and db.get("more") == b"43", "lost across a supervisor restart"
    finally:
        db.close()
    data = sup.dir / "var" / "lib" / "redis"
    assert any(p.name.startswith("appendonly") for p in data.iterdir()), sorted(p.name for p in data.iterdir())
    assert (data / "dump.rdb").exists()
    assert sup.terminate() == 0
