"""The unit layer's own rule (tests/unit/conftest.py): no test here starts a process."""
import os
import subprocess

import pytest


def test_subprocess_is_refused():
    with pytest.raises(AssertionError, match="belongs in tests/integration"):
        subprocess.run(["true"], check=False)


def test_posix_spawn_and_system_are_refused():
    with pytest.raises(AssertionError, match="belongs in tests/integration"):
        os.posix_spawn("/bin/true", ["true"], {})
    with pytest.raises(AssertionError, match="belongs in tests/integration"):
        os.system("true")
