"""Redis' data dir as root: the record only the supervisor could have written, and the
hand-over of a dir it made to Redis' new user (kinds/redis/data_dir.py)."""
from __future__ import annotations

import json
import os

import pytest

from relayq_supervisor.config.model import Privileges
from relayq_supervisor.config.redis import data_dir_made_for
from relayq_supervisor.errors import StartupError
from relayq_supervisor.kinds.redis.data_dir import give_tree, prepare_data_dir, record_name, trusted_record

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other users takes root")

OLD, NEW = 64001, 64002         # uids with no user: root may give files to any number


def test_a_record_counts_only_when_only_we_could_have_written_it(tmp_path):
    path = tmp_path / "relayq.lock"
    path.write_text(json.dumps({"redis": {"pid": 1}}))
    path.chmod(0o644)
    assert trusted_record(str(path)) == {"redis": {"pid": 1}}
    os.chown(path, OLD, -1)         # replaced by Redis' user: says nothing
    assert trusted_record(str(path)) is None
    os.chown(path, 0, -1)
    path.chmod(0o666)
    assert trusted_record(str(path)) is None
    link = tmp_path / "link.lock"
    path.chmod(0o644)
    link.symlink_to(path)
    assert trusted_record(str(link)) is None
    assert record_name(str(tmp_path / "data")) == record_name(str(tmp_path / "x" / ".." / "data"))
    assert "@" in record_name(str(tmp_path))


def test_a_dir_made_for_one_user_is_given_to_the_next_and_nothing_else(tmp_path):
    data = str(tmp_path / "data")
    prepare_data_dir(data, Privileges(user="old", uid=OLD, gid=OLD))
    if data_dir_made_for(data) is None:
        pytest.skip("no trusted.* extended attributes on this file system")
    assert data_dir_made_for(data) == OLD and os.stat(data).st_uid == OLD
    # the old user's files, a file of root's, and a link the old user planted to a file of root's
    os.makedirs(os.path.join(data, "appendonlydir"))
    aof = os.path.join(data, "appendonlydir", "a.aof")
    open(aof, "w").close()
    outside = tmp_path / "shadow"
    outside.write_text("root's")
    os.symlink(outside, os.path.join(data, "appendonlydir", "evil"))
    for path in (os.path.join(data, "appendonlydir"), aof):
        os.chown(path, OLD, OLD)
    os.lchown(os.path.join(data, "appendonlydir", "evil"), OLD, OLD)
    root_file = os.path.join(data, "relayq.lock")
    open(root_file, "w").close()

    given = prepare_data_dir(data, Privileges(user="new", uid=NEW, gid=NEW))
    assert (given.from_uid, given.uid, given.changed, given.skipped) == (OLD, NEW, 4, 0)
    assert data_dir_made_for(data) == NEW
    for path in (data, os.path.join(data, "appendonlydir"), aof):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (NEW, NEW), path
    assert os.lstat(os.path.join(data, "appendonlydir", "evil")).st_uid == NEW      # the link itself
    assert outside.stat().st_uid == 0 and os.stat(root_file).st_uid == 0           # never what it points to
    assert give_tree(data, OLD, NEW, NEW) == (0, 0)                                 # nothing of the old user left

    # not given while the previous user's Redis still runs there; never a dir it did not make
    with pytest.raises(StartupError, match="chown -R old:"):
        prepare_data_dir(data, Privileges(user="old", uid=OLD, gid=OLD), give=False)
    theirs = str(tmp_path / "theirs")
    os.mkdir(theirs)
    os.chown(theirs, OLD, OLD)
    with pytest.raises(StartupError, match="did not make it"):
        prepare_data_dir(theirs, Privileges(user="new", uid=NEW, gid=NEW))
    assert os.stat(theirs).st_uid == OLD


def test_what_a_redis_without_user_left_is_given_back_to_redis_user(tmp_path):
    data = str(tmp_path / "data")
    assert prepare_data_dir(data, Privileges(user="new", uid=NEW, gid=NEW)) is None
    if data_dir_made_for(data) is None:
        pytest.skip("no trusted.* extended attributes on this file system")
    # `user` unset for a while: Redis ran as root and wrote root's files into its dir
    assert prepare_data_dir(data, Privileges()) is None and data_dir_made_for(data) == NEW
    os.makedirs(os.path.join(data, "appendonlydir"))
    aof = os.path.join(data, "appendonlydir", "a.aof")
    with open(aof, "w") as f:
        f.write("*1\r\n")
    outside = tmp_path / "shadow"
    outside.write_text("root's")
    os.link(outside, os.path.join(data, "linked"))          # a hard link to a file of root's elsewhere
    os.mkfifo(os.path.join(data, "fifo"))
    lock = os.path.join(data, "relayq.lock")
    open(lock, "w").close()

    given = prepare_data_dir(data, Privileges(user="new", uid=NEW, gid=NEW))
    assert (given.from_uid, given.uid, given.changed, given.skipped) == (0, NEW, 2, 1)
    assert "without `user`" in given.why
    for path in (os.path.join(data, "appendonlydir"), aof):
        assert (os.stat(path).st_uid, os.stat(path).st_gid) == (NEW, NEW), path
    for path in (outside, os.path.join(data, "fifo"), lock):   # never another name's file, a fifo, our lock
        assert os.lstat(path).st_uid == 0, path
    # nothing left to give (the linked file was said once): no event at every start
    assert prepare_data_dir(data, Privileges(user="new", uid=NEW, gid=NEW)) is None


def test_a_dir_made_without_user_is_given_when_user_is_set(tmp_path):
    data = str(tmp_path / "data")
    assert prepare_data_dir(data, Privileges()) is None
    if data_dir_made_for(data) is None:
        pytest.skip("no trusted.* extended attributes on this file system")
    assert data_dir_made_for(data) == 0
    open(os.path.join(data, "dump.rdb"), "w").close()
    given = prepare_data_dir(data, Privileges(user="new", uid=NEW, gid=NEW))
    assert (given.from_uid, given.changed, given.why) == (0, 2, "Redis' user changed")
    assert os.stat(os.path.join(data, "dump.rdb")).st_uid == NEW and data_dir_made_for(data) == NEW


def test_records_of_data_dirs_no_longer_configured_are_removed_unless_in_use(tmp_path):
    import fcntl

    from relayq_supervisor.kinds.redis.data_dir import remove_stale_records
    from relayq_supervisor.linux.procfs import proc_start_ticks
    run = tmp_path / "run"
    run.mkdir()

    def record(name: str, body: dict, mode: int = 0o644):
        path = run / record_name(str(tmp_path / name))
        path.write_text(json.dumps(body))
        path.chmod(mode)
        return path

    ours = record("data", {"pid": 1})
    stale = record("old-data", {"pid": 1, "redis_dir": str(tmp_path / "old-data")})
    me = {"pid": os.getpid(), "start_ticks": proc_start_ticks(os.getpid())}
    alive = record("live-data", {"pid": 1, "redis": me})               # its Redis still runs: the trail stays
    held = record("held-data", {"pid": 1})
    forged = record("forged-data", {"pid": 1}, mode=0o666)             # anyone could have written it: not ours
    other = run / "redis.lock"                                          # a program's lock: not a record
    other.write_text("{}")
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        running = lambda rec: rec.get("pid") == me["pid"] and proc_start_ticks(rec["pid"]) == rec.get("start_ticks")  # noqa: E731
        assert remove_stale_records(str(run), str(ours), running) == [str(stale)]
    finally:
        os.close(fd)
    assert {p.name for p in run.iterdir()} == {ours.name, alive.name, held.name, forged.name, other.name}
    assert remove_stale_records(str(run), str(ours), running) == [str(held)]         # once nobody holds it
