"""Fixtures: real supervisors, real Redis, free ports, cleanup by pid (helpers in tests/support)."""
from __future__ import annotations

import os
import pwd
import secrets
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


@pytest.fixture
def made_user():
    """A system user (and its group) of the test's own, removed after (once nothing runs as it)."""
    name = f"rq-{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        removed = subprocess.run(["userdel", name], capture_output=True, text=True)
        subprocess.run(["groupdel", name], capture_output=True)     # when USERGROUPS_ENAB did not take it
        assert removed.returncode == 0, f"userdel {name}: {removed.stderr}"
