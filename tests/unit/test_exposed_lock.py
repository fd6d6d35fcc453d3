"""A lock file in a directory another user may write (Redis' data dir, core/locks.py): never
followed through a link, never written into a file not ours, and a holder judged to be no
supervisor does not refuse the start (its file is replaced and taken)."""
from __future__ import annotations

import fcntl
import json
import os

import pytest

from relayq_supervisor.core.locks import OwnerLocks, flock_holder
from relayq_supervisor.errors import StartupError


def locks() -> tuple[OwnerLocks, list]:
    conflicts: list = []
    return OwnerLocks("/etc/relayq/config.toml", lambda path, owner: conflicts.append((path, owner))), conflicts


def test_a_planted_link_is_replaced_and_its_target_never_written(tmp_path):
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    lock = tmp_path / "data" / "relayq.lock"
    lock.parent.mkdir()
    lock.symlink_to(target)
    owned, _ = locks()
    assert owned.take("flock", str(lock), "data", take_from=lambda pid: None) == "a symbolic link"
    assert target.read_text() == "root:x:0:0\n"
    assert not lock.is_symlink() and json.loads(lock.read_text())["pid"] == os.getpid()
    assert flock_holder(str(lock)) == os.getpid()
    owned.release_all()


def test_a_hard_linked_file_is_replaced_not_truncated(tmp_path):
    other = tmp_path / "other"
    other.write_text("keep me\n")
    lock = tmp_path / "relayq.lock"
    os.link(other, lock)
    owned, _ = locks()
    assert owned.take("flock", str(lock), "data", take_from=lambda pid: None) == "a file with 2 links"
    assert other.read_text() == "keep me\n" and os.stat(lock).st_ino != os.stat(other).st_ino
    owned.release_all()


def test_a_holder_that_is_no_supervisor_does_not_refuse_the_start(tmp_path):
    lock = tmp_path / "relayq.lock"
    lock.write_text("{}")
    fd = os.open(lock, os.O_RDONLY)         # as Redis' user could: read-only is enough for flock
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        asked: list = []
        refused, conflicts = locks()
        with pytest.raises(StartupError, match=f"data is owned by pid {os.getpid()}"):
            refused.take("flock", str(lock), "data", take_from=lambda pid: asked.append(pid))
        assert asked == [os.getpid()] and conflicts == [(str(lock), {"pid": os.getpid()})]
        owned, _ = locks()
        assert owned.take("flock", str(lock), "data", take_from=lambda pid: f"flocked by pid {pid}") == \
            f"flocked by pid {os.getpid()}"
        assert os.fstat(fd).st_nlink == 0            # the holder keeps a file nobody finds any more
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        owned.release_all()
    finally:
        os.close(fd)


def test_a_lock_not_exposed_is_taken_as_before(tmp_path):
    lock = tmp_path / "supervisor.lock"
    owned, _ = locks()
    assert owned.take("supervisor", str(lock), "run") is None
    assert flock_holder(str(lock)) == os.getpid() and flock_holder(str(tmp_path)) is None
    owned.release_all()
