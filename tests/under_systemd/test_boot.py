"""A boot with both relayq-supervisor and Debian's redis-server enabled (a careless upgrade
re-enabling the distribution's unit): the conflict is settled in the boot transaction, one
Redis runs and it is relayq's. Its own machine: what is under test is the first boot."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from .product import CONFIG, booted, installed_files

UNIT = "relayq-supervisor.service"
RIVAL = "redis-server.service"
VENDOR_RIVAL = Path("/lib/systemd/system") / RIVAL


def test_boot_with_both_enabled_runs_relayq_alone(relayq_venv, tmp_path):
    if not VENDOR_RIVAL.exists():
        pytest.skip("Debian's redis-server package is not installed (.ci/setup test installs it)")
    files = installed_files(wanted_by_target=(UNIT, RIVAL))
    # the host masks Debian's unit (.ci/setup does); this machine has it unmasked and enabled
    files[f"/etc/systemd/system/{RIVAL}"] = VENDOR_RIVAL.read_text()
    with booted(tmp_path / "machine", relayq_venv, files) as m:
        ours = m.show(UNIT, "ActiveState", "SubState", "NRestarts")
        rival = m.show(RIVAL, "ActiveState", "Result", "NRestarts", "ExecMainPID")
        assert (ours["ActiveState"], ours["SubState"], ours["NRestarts"]) == ("active", "running", "0")
        # never started, so never failed on a taken port nor restarted in a loop
        assert (rival["ActiveState"], rival["Result"], rival["NRestarts"], rival["ExecMainPID"]) == \
            ("inactive", "success", "0", "0"), rival
        status = json.loads(m.run("relayqctl", "-c", CONFIG, "status", "--json").stdout)
        redis_pid = next(p["pid"] for p in status["programs"] if p["name"] == "redis")
        info = m.run("redis-cli", "-p", "6379", "INFO", "server").stdout
        assert f"process_id:{redis_pid}" in info.replace("\r", "")
