import errno
import json
import os
import re
import socket
import stat

import pytest

from relayq_supervisor.audit import log as audit_log
from relayq_supervisor.audit.log import AuditLog, make_event
from relayq_supervisor.audit.review import iter_events


def test_make_event_header():
    event = make_event("spawn", program="worker:1", pid=812, argv=["relayq-worker"])
    assert list(event)[:3] == ["ts", "host", "event"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["ts"])
    assert event["host"] == socket.gethostname()
    assert event["event"] == "spawn"
    assert event["program"] == "worker:1" and event["argv"] == ["relayq-worker"]
    assert make_event("operator", ts="2026-01-01T00:00:00.000Z")["ts"] == "2026-01-01T00:00:00.000Z"


def test_round_trip_one_line_per_event(tmp_path):
    path = tmp_path / "audit.jsonl"
    events = [
        make_event("spawn", program="redis", pid=10, argv=["redis-server", "--port", "0"]),
        make_event("signal", signal="SIGTERM", signo=15, code="SI_USER", target={"program": "redis", "pid": 10},
                   sender=None, action="blocked", via="signalfd", reason="stop via relayqctl only"),
        make_event("operator", action="stop", program="redis", note="émigré ✓"),
    ]
    with AuditLog(path) as audit:
        assert all(audit.write(e) for e in events)

    assert list(iter_events(path)) == events
    raw = path.read_bytes()
    assert raw.count(b"\n") == 3 and raw.endswith(b"\n")
    assert "émigré ✓".encode() in raw  # ensure_ascii=False
    assert b'","' in raw and b'", "' not in raw  # compact separators


def test_reopen_appends(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as a:
        a.write(make_event("spawn", program="a", pid=1, argv=[]))
    with AuditLog(path) as b:
        b.write(make_event("spawn", program="b", pid=2, argv=[]))
    assert [e["program"] for e in iter_events(path)] == ["a", "b"]


@pytest.mark.parametrize("umask", [0o077, 0o000])
def test_file_mode_is_0640_whatever_the_umask(tmp_path, umask):
    path = tmp_path / "audit.jsonl"
    old = os.umask(umask)
    try:
        with AuditLog(path) as audit:
            audit.write(make_event("tamper", path="/x", what="test"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_fsync_per_event(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(audit_log.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with AuditLog(tmp_path / "audit.jsonl") as audit:
        audit.write(make_event("spawn", program="a", pid=1, argv=[]))  # first write also syncs the new dir entry
        before = len(synced)
        for i in range(3):
            audit.write(make_event("spawn", program="a", pid=i, argv=[]))
    assert len(synced) - before == 3


def test_undecodable_argv_is_still_valid_json(tmp_path):
    path = tmp_path / "audit.jsonl"
    argv = [os.fsdecode(b"/opt/r\xffq")]  # surrogate escape, as psutil returns non-UTF-8 argv
    with AuditLog(path) as audit:
        assert audit.write(make_event("spawn", program="w", pid=3, argv=argv))
    (event,) = list(iter_events(path))
    assert os.fsencode(event["argv"][0]) == b"/opt/r\xffq"


def test_rotation_keeps_n_files(tmp_path):
    path = tmp_path / "audit.jsonl"
    keep = 3
    with AuditLog(path, max_bytes=400, keep=keep) as audit:
        for i in range(60):
            assert audit.write(make_event("backoff", program="worker:1", delay_s=1.5, streak=i))

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 400
    streaks = [e["streak"] for e in iter_events(path)]
    assert streaks[-1] == 59
    assert streaks == list(range(streaks[0], 60))  # contiguous: nothing lost within what is kept
    assert streaks[0] > 0  # older files were deleted


def test_rotation_removes_files_beyond_a_smaller_keep(tmp_path):
    path = tmp_path / "audit.jsonl"
    for n in (1, 2, 3, 4, 5):
        (tmp_path / f"audit.jsonl.{n}").write_text("")
    with AuditLog(path, max_bytes=200, keep=2) as audit:
        for i in range(10):
            audit.write(make_event("backoff", program="w", delay_s=1, streak=i))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]


def test_torn_tail_is_ended_before_appending(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        audit.write(make_event("spawn", program="a", pid=1, argv=[]))
    with open(path, "ab") as f:
        f.write(b'{"ts":"2026-11-25T23:21:26.721Z","event":"sig')  # crash mid-write
    with AuditLog(path) as audit:
        audit.write(make_event("spawn", program="b", pid=2, argv=[]))

    stream = iter_events(path)
    assert [e["program"] for e in stream] == ["a", "b"]
    assert stream.corrupt_lines == 1


def test_log_recreated_when_removed_under_it(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        audit.write(make_event("spawn", program="a", pid=1, argv=[]))
        os.rename(path, tmp_path / "moved.jsonl")
        audit.write(make_event("spawn", program="b", pid=2, argv=[]))
    assert [e["program"] for e in iter_events(path)] == ["b"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_unwritable_path_never_raises(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    path = blocker / "audit.jsonl"
    messages = []
    audit = AuditLog(path, on_error=messages.append)

    assert audit.write(make_event("spawn", program="a", pid=1, argv=[])) is False
    assert audit.write(make_event("spawn", program="b", pid=2, argv=[])) is False

    assert len(messages) == 1
    assert messages[0].startswith(f"audit log {path}: write failed (Not a directory); events are held in memory")
    assert audit.pending == 2
    audit.close()


def test_write_failure_then_recovery_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    messages = []
    audit = AuditLog(path, on_error=messages.append)
    assert audit.write(make_event("spawn", program="w", pid=0, argv=[]))

    real_write = os.write

    def disk_full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(audit_log.os, "write", disk_full)
    results = [audit.write(make_event("spawn", program="w", pid=i, argv=[])) for i in range(1, 4)]
    assert results == [False, False, False]
    assert len(messages) == 1
    assert messages[0].startswith(f"audit log {path}: write failed (No space left on device); events are held")
    assert audit.failing and audit.pending == 3

    monkeypatch.setattr(audit_log.os, "write", real_write)
    assert audit.write(make_event("spawn", program="w", pid=4, argv=[])) is True
    assert audit.write(make_event("spawn", program="w", pid=5, argv=[])) is True
    audit.close()

    assert [e["pid"] for e in iter_events(path)] == [0, 1, 2, 3, 4, 5]
    assert len(messages) == 2 and "writing again" in messages[1] and "4 held events" in messages[1]
    assert not audit.failing and audit.pending == 0


def test_partial_write_is_cut_back(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, on_error=lambda m: None)
    audit.write(make_event("spawn", program="w", pid=0, argv=[]))
    real_write = os.write
    monkeypatch.setattr(audit_log.os, "write", lambda fd, data: real_write(fd, data[:10]))
    assert audit.write(make_event("spawn", program="w", pid=1, argv=[])) is False
    monkeypatch.setattr(audit_log.os, "write", real_write)
    assert audit.write(make_event("spawn", program="w", pid=2, argv=[])) is True
    audit.close()

    stream = iter_events(path)
    assert [e["pid"] for e in stream] == [0, 1, 2]
    assert stream.corrupt_lines == 0 and stream.torn_lines == 0


def _failing_writes(monkeypatch, allowed: list[int]):
    """os.write that succeeds `allowed[0]` more times, then fails with ENOSPC."""
    real_write = os.write

    def write(fd, data):
        if allowed[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        allowed[0] -= 1
        return real_write(fd, data)

    monkeypatch.setattr(audit_log.os, "write", write)


def test_over_budget_alike_events_are_aggregated_first(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    messages = []
    audit = AuditLog(path, on_error=messages.append, max_pending=3)
    allowed = [0]
    _failing_writes(monkeypatch, allowed)
    for i in range(5):
        audit.write(make_event("spawn", program="w", pid=i, argv=[]))
    assert audit.pending == 2                   # pids 0-3 folded into one, then pid 4
    allowed[0] = 100
    assert audit.flush()
    audit.close()

    events = list(iter_events(path))
    assert [e["pid"] for e in events] == [0, 4]
    assert events[0]["count"] == 4 and events[0]["aggregated"]["until"] <= events[1]["ts"]
    assert all(e["event"] != "audit_gap" for e in events)
    assert len(messages) == 2 and "3 aggregated into others, 0 dropped" in messages[1]


def test_memory_is_bounded_and_the_gap_is_recorded_in_place(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    messages = []
    audit = AuditLog(path, on_error=messages.append, max_pending=3)
    monkeypatch.setattr(audit_log.os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    for i in range(6):      # all different: nothing to aggregate
        audit.write(make_event("spawn", program=f"w{i}", pid=i, argv=[]))
    assert audit.pending == 3
    monkeypatch.undo()
    assert audit.flush()
    assert audit.write(make_event("spawn", program="w6", pid=6, argv=[]))
    audit.close()

    events = list(iter_events(path))
    gap = events[0]
    assert gap["event"] == "audit_gap" and gap["dropped"] == 4
    assert [e["pid"] for e in events[1:]] == [4, 5, 6]
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert "Input/output error" in messages[0] and "4 dropped (recorded as an audit_gap event)" in messages[1]
    assert len(messages) == 2


def test_space_freed_a_little_at_a_time_writes_events_not_gap_lines(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    messages = []
    audit = AuditLog(path, on_error=messages.append, max_pending=10)
    allowed = [0]
    _failing_writes(monkeypatch, allowed)
    total = 0
    for _round in range(5):
        for _ in range(12):
            audit.write(make_event("spawn", program=f"w{total}", pid=total, argv=[]))
            total += 1
        allowed[0] = 3              # a little space: three lines fit, then full again
        audit.flush()
    allowed[0] = 10_000
    assert audit.flush()
    audit.close()

    events = list(iter_events(path))
    gaps = [e for e in events if e["event"] == "audit_gap"]
    spawned = [e["pid"] for e in events if e["event"] == "spawn"]
    assert len(messages) == 2                           # one outage: one warning, one "writing again"
    assert spawned == sorted(spawned)
    assert len(spawned) + sum(g["dropped"] for g in gaps) == total
    assert len(gaps) <= 5 and all(g["dropped"] > 1 for g in gaps)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    stream = iter_events(path)
    list(stream)
    assert stream.torn_lines == 0 and stream.corrupt_lines == 0


def test_unencodable_event_is_reported_not_raised(tmp_path):
    messages = []
    loop = {}
    loop["self"] = loop
    with AuditLog(tmp_path / "audit.jsonl", on_error=messages.append) as audit:
        assert audit.write(make_event("operator", data=loop)) is False
        assert audit.write(make_event("operator", data="fine")) is True
    assert len(messages) == 1 and "cannot be encoded" in messages[0]
    assert json.loads((tmp_path / "audit.jsonl").read_text())["data"] == "fine"
