"""Reading output logs back (relayqctl logs): file matching, stamps, merging, following
across rotation, with the supervisor's own RotatingFile writing."""
from __future__ import annotations

from datetime import UTC, datetime

from relayq_supervisor.core.output import RotatingFile
from relayq_supervisor.output_log import NO_TIME, Follower, LineParser, files_of, recent


def touch(path, text=""):
    path.write_text(text)
    return str(path)


def test_files_of_a_program_its_instances_and_rotations_oldest_first(tmp_path):
    for name in ("worker:0.log", "worker:0.log.1", "worker:0.log.2", "worker:1.log", "worker2.log",
                 "worker.log.bak", "redis.log", "supervisor.log", "worker:x.log"):
        touch(tmp_path / name)
    d = str(tmp_path)
    assert files_of(d, "worker") == {
        "worker:0": [f"{d}/worker:0.log.2", f"{d}/worker:0.log.1", f"{d}/worker:0.log"],
        "worker:1": [f"{d}/worker:1.log"]}
    assert list(files_of(d, "worker:1")) == ["worker:1"]
    assert list(files_of(d, "redis")) == ["redis"]
    assert files_of(d, "nothing") == {} and files_of(str(tmp_path / "missing"), "worker") == {}


def test_lines_without_a_stamp_take_the_time_of_the_one_before():
    p = LineParser("redis")
    first = p.parse(b"no stamp yet\n")
    second = p.parse(b"2026-11-25T23:21:26.721Z ready\n")
    third = p.parse(b"  continued\n")
    assert (first.when, first.stamp, first.text) == (NO_TIME, "", "no stamp yet")
    assert second.when == datetime(2026, 11, 25, 23, 21, 26, 721000, tzinfo=UTC)
    assert (third.when, third.stamp, third.text) == (second.when, "", "  continued")
    assert second.render(True) == "2026-11-25T23:21:26.721Z [redis] ready"
    assert third.render(False) == "  continued"


def test_recent_merges_instances_by_time_across_rotated_files(tmp_path):
    touch(tmp_path / "w:0.log.1", "2026-01-01T00:00:01.000Z a1\n2026-01-01T00:00:03.000Z a3\n")
    touch(tmp_path / "w:0.log", "2026-01-01T00:00:05.000Z a5\n")
    touch(tmp_path / "w:1.log", "2026-01-01T00:00:02.000Z b2\n2026-01-01T00:00:04.000Z b4\n")
    files = files_of(str(tmp_path), "w")
    assert [line.text for line in recent(files, None, None)] == ["a1", "b2", "a3", "b4", "a5"]
    assert [line.text for line in recent(files, 2, None)] == ["b4", "a5"]
    since = datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)
    assert [line.text for line in recent(files, None, since)] == ["a3", "b4", "a5"]
    assert recent(files, 0, None) == []


def test_follower_reads_across_rotations_without_losing_or_repeating(tmp_path):
    log = RotatingFile(str(tmp_path / "w.log"), max_bytes=1024, backups=2, stamp_lines=True)
    log.write(b"before 0\nbefore 1\nhalf")
    follower = Follower(str(tmp_path), "w")
    ends = follower.history_ends()
    history = [line.text for line in recent(files_of(str(tmp_path), "w"), None, None, ends)]
    assert history == ["before 0", "before 1"]          # the unfinished line waits for the follower
    log.write(b" done\n")
    seen = [line.text for line in follower.poll()]
    for i in range(200):                                # many rotations, some between polls
        log.write(b"line %03d\n" % i)
        if i % 7 == 0:
            seen += [line.text for line in follower.poll()]
    seen += [line.text for line in follower.poll()]
    log.close()
    follower.close()
    assert (tmp_path / "w.log.2").exists()
    # a follower polls rarely compared with 1 KiB files: only what it saw before the
    # file it held was rotated past log_backups can be lost; here every poll is in time
    assert seen == ["half done"] + [f"line {i:03d}" for i in range(200)]


def test_follower_picks_up_an_instance_that_appears_later(tmp_path):
    follower = Follower(str(tmp_path), "w")
    assert follower.poll() == []
    touch(tmp_path / "w:3.log", "2026-01-01T00:00:01.000Z hello\n")
    assert [(line.instance, line.text) for line in follower.poll()] == [("w:3", "hello")]
    follower.close()
