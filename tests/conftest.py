"""Fixtures: real supervisors, real Redis, free ports, cleanup by pid (helpers in tests/support)."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from support import Supervisor, free_port, kill_and_reap
from support.netns import NetnsRefused, create_pair


@pytest.fixture
def procs():
    """Popen objects a test started (append them); killed with their descendants and reaped
    at teardown, newest first."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in reversed(started):
        kill_and_reap(proc)


@pytest.fixture
def make_supervisor(tmp_path):
    started: list[Supervisor] = []

    def make(config_text: str, subdir: str | None = None, host=None) -> Supervisor:
        where = tmp_path / subdir if subdir else tmp_path
        where.mkdir(exist_ok=True)
        sup = Supervisor(where, config_text, host=host)
        started.append(sup)
        return sup

    yield make
    for sup in started:
        sup.cleanup()


@pytest.fixture
def port():
    return free_port()


@pytest.fixture
def hosts():
    """Two network namespaces joined by a veth pair (support.netns), removed afterwards;
    skipped with the kernel's reason where namespaces are refused."""
    try:
        pair = create_pair()
    except NetnsRefused as e:
        pytest.skip(str(e))
    yield pair
    pair.remove()


@pytest.fixture
def open_tmp():
    """A temp dir every user can search (0755; pytest's own sit under a 0700 folder), for
    tests whose programs run as another user. Removed at teardown."""
    path = Path(tempfile.mkdtemp(prefix="relayq-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
