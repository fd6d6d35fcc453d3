"""The systemd unit shipped in units/, verified by systemd-analyze where it is installed. What the
unit and the production config say is checked in tests/unit/test_units.py."""
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "units"
UNIT = UNITS / "relayq-supervisor.service"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed, so the unit cannot be verified here")
    # verify insists the Exec* binaries exist: point them at executables this host has.
    supervisor = shutil.which("relayq-supervisor") or "/bin/true"
    ctl = shutil.which("relayqctl") or "/bin/true"
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/relayq-supervisor " in text
    assert "ExecReload=/usr/local/bin/relayqctl " in text
    text = (text.replace("ExecStart=/usr/local/bin/relayq-supervisor ", f"ExecStart={supervisor} ")
                .replace("ExecReload=/usr/local/bin/relayqctl ", f"ExecReload={ctl} "))
    copy = tmp_path / "relayq-supervisor.service"
    copy.write_text(text)

    result = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                            timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify only warns (exit 0) about unknown keys and bad values: any line about our file is a failure.
    complaints = [line for line in output.splitlines()
                  if "relayq-supervisor.service" in line or str(copy) in line]
    assert complaints == []
