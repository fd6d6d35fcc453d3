"""The repository's config.toml: valid, and runs Redis plus two workers that do a job."""
from __future__ import annotations

import pathlib
import re
import subprocess

from conftest import PYTHON

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_default_config_checks():
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor", "-c", str(REPO / "config.toml"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "worker: " in r.stdout and "(worker:0, worker:1), after redis" in r.stdout


def test_default_config_runs_and_serves_a_job(make_supervisor, port):
    text = (REPO / "config.toml").read_text()
    text = re.sub(r"(?m)^port = \d+", f"port = {port}", text)      # the only change: a free port
    sup = make_supervisor(text).start()
    st = sup.wait_all_running()
    assert [p["name"] for p in st["programs"]] == ["redis", "worker:0", "worker:1"]
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor.selftest", "run", "-c", str(sup.config), "echo SUCCESS"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "SUCCESS", r.stderr
    assert sup.terminate() == 0
