"""Reading the audit log back: time parsing, rotated and torn files, filters, one line per
event, following a growing log. All in-process on files in tmp_path; the end-to-end check with a
real sender is in tests/integration/test_audit_review.py."""
import os
import time
from datetime import UTC, datetime, timedelta

import pytest

from relayq_supervisor.audit.log import AuditLog, make_event
from relayq_supervisor.audit.review import (
    EventFilter,
    follow,
    format_event,
    iter_events,
    log_files,
    parse_when,
)
from relayq_supervisor.witness.identity import ProcessIdentity

NOW = datetime(2026, 11, 25, 23, 30, 0, tzinfo=UTC)

MONITOR = ProcessIdentity(
    pid=4412,
    uid=0,
    user="root",
    comm="python3",
    exe="/usr/bin/python3.11",
    cmdline=("/usr/bin/python3", "/opt/relayq/monitor.py"),
    start_time=1795650000.0,
    ppid=1,
    unit="relayq-redis-monitor.service",
    alive=True,
).to_dict()

SIGNAL = {
    "ts": "2026-11-25T23:21:26.721Z",
    "host": "node1",
    "event": "signal",
    "signal": "SIGTERM",
    "signo": 15,
    "code": "SI_USER",
    "target": {"program": "redis", "pid": 3613222},
    "sender": MONITOR,
    "action": "blocked",
    "via": "signalfd",
}
EXIT = {
    "ts": "2026-11-25T23:21:27.001Z",
    "host": "node1",
    "event": "exit",
    "program": "worker:1",
    "pid": 812,
    "code": None,
    "signal": "SIGKILL",
    "runtime_s": 12.5,
    "sender": None,
}
DENIED = {
    "ts": "2026-11-25T23:22:00.000Z",
    "host": "node1",
    "event": "redis_denied",
    "program": "redis",
    "command": "shutdown",
    "user": "default",
    "client_addr": "127.0.0.1:51234",
    "client_name": "",
    "count": 1,
    "reason": "command",
    "sender": ProcessIdentity(pid=77, comm="redis-cli", cmdline=("redis-cli", "shutdown"), alive=True).to_dict(),
}


# --- parse_when ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, delta",
    [("30s", timedelta(seconds=30)), ("10m", timedelta(minutes=10)), ("2h", timedelta(hours=2)),
     ("1d", timedelta(days=1)), ("1.5h", timedelta(minutes=90)), (" 5m ", timedelta(minutes=5))],
)
def test_parse_when_relative(text, delta):
    assert parse_when(text, NOW) == NOW - delta


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-11-25T23:21:26Z", datetime(2026, 11, 25, 23, 21, 26, tzinfo=UTC)),
        ("2026-11-25T23:21:26.721Z", datetime(2026, 11, 25, 23, 21, 26, 721000, tzinfo=UTC)),
        ("2026-11-25T23:21:26", datetime(2026, 11, 25, 23, 21, 26, tzinfo=UTC)),
        ("2026-11-26T01:21:26+02:00", datetime(2026, 11, 25, 23, 21, 26, tzinfo=UTC)),
        ("2026-11-25", datetime(2026, 11, 25, tzinfo=UTC)),
    ],
)
def test_parse_when_iso(text, expected):
    when = parse_when(text, NOW)
    assert when == expected and when.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "10x", "", "m10", "2026-13-01"])
def test_parse_when_rejects_with_the_accepted_forms(text):
    with pytest.raises(ValueError) as err:
        parse_when(text, NOW)
    assert repr(text) in str(err.value)
    assert "10m" in str(err.value) and "ISO 8601" in str(err.value)


def test_parse_when_naive_now_is_utc():
    assert parse_when("1h", NOW.replace(tzinfo=None)) == NOW - timedelta(hours=1)


# --- iter_events --------------------------------------------------------------


def test_rotated_files_read_oldest_first(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, max_bytes=300, keep=4) as audit:
        for i in range(20):
            audit.write(make_event("backoff", program="w", delay_s=1, streak=i))
    files = log_files(path)
    assert files[-1] == str(path) and files[0] == f"{path}.4"
    streaks = [e["streak"] for e in iter_events(path)]
    assert streaks == sorted(streaks) and streaks[-1] == 19


def test_torn_last_lines_and_corrupt_middle_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    (tmp_path / "audit.jsonl.1").write_text('{"event":"spawn","n":1}\n\n{"event":"spawn","n":2}\n{"event":"sp')
    path.write_text('{"event":"spawn","n":3}\nnot json at all\n[1,2]\n{"event":"spawn","n":4}\n{"ev')

    stream = iter_events(path)
    assert [e["n"] for e in stream] == [1, 2, 3, 4]
    assert stream.torn_lines == 2
    assert stream.corrupt_lines == 2


def test_missing_log_yields_nothing(tmp_path):
    stream = iter_events(tmp_path / "nope.jsonl")
    assert list(stream) == [] and stream.files == []


# --- EventFilter --------------------------------------------------------------


def test_filter_program_by_name_and_base_name():
    assert EventFilter(program="redis").matches(SIGNAL)  # target.program
    assert EventFilter(program="worker:1").matches(EXIT)  # program field
    assert EventFilter(program="worker").matches(EXIT)  # base name
    assert not EventFilter(program="worker:2").matches(EXIT)
    assert not EventFilter(program="work").matches(EXIT)
    assert not EventFilter(program="worker").matches(SIGNAL)
    assert EventFilter(program="redis").matches(DENIED)


@pytest.mark.parametrize("sig", ["SIGTERM", "TERM", "term", "15"])
def test_filter_signal_forms(sig):
    f = EventFilter(signal=sig)
    assert f.matches(SIGNAL)
    assert not f.matches(EXIT)  # SIGKILL
    assert not f.matches(DENIED)  # no signal at all


def test_filter_signal_matches_exit_by_name_and_rejects_unknown():
    assert EventFilter(signal="KILL").matches(EXIT)
    assert EventFilter(signal="9").matches(EXIT)
    with pytest.raises(ValueError, match="SIGBOGUS"):
        EventFilter(signal="SIGBOGUS")


def test_filter_sender():
    assert EventFilter(sender="4412").matches(SIGNAL)
    assert not EventFilter(sender="441").matches(SIGNAL)  # a pid is compared whole
    assert EventFilter(sender="monitor.py").matches(SIGNAL)  # cmdline
    assert EventFilter(sender="python3").matches(SIGNAL)  # comm
    assert EventFilter(sender="relayq-redis-monitor").matches(SIGNAL)  # unit
    assert not EventFilter(sender="cron").matches(SIGNAL)
    assert not EventFilter(sender="python3").matches(EXIT)  # no sender recorded
    assert EventFilter(sender="redis-cli").matches(DENIED)
    assert EventFilter(sender="127.0.0.1:51234").matches(DENIED)
    own = dict(SIGNAL, sender=dict(MONITOR, program="worker:3"))
    assert EventFilter(sender="worker:3").matches(own)


def test_filter_time_window_and_blocked():
    assert EventFilter(since=parse_when("2026-11-25T23:21:00Z", NOW)).matches(SIGNAL)
    assert not EventFilter(since=parse_when("2026-11-25T23:21:27Z", NOW)).matches(SIGNAL)
    assert EventFilter(until=parse_when("2026-11-25T23:21:26.721Z", NOW)).matches(SIGNAL)  # inclusive
    assert not EventFilter(until=parse_when("2026-11-25T23:21:26Z", NOW)).matches(SIGNAL)
    assert not EventFilter(since=NOW).matches(dict(SIGNAL, ts="garbage"))
    assert EventFilter(blocked_only=True).matches(SIGNAL)
    assert not EventFilter(blocked_only=True).matches(dict(SIGNAL, action="delivered"))
    assert not EventFilter(blocked_only=True).matches(EXIT)
    assert EventFilter(blocked_only=True).matches(DENIED)
    assert EventFilter().matches(EXIT)
    combined = EventFilter(program="redis", signal="TERM", sender="4412", blocked_only=True)
    assert combined.matches(SIGNAL) and not combined.matches(dict(SIGNAL, signo=9, signal="SIGKILL"))


# --- format_event -------------------------------------------------------------


def test_format_signal():
    assert format_event(SIGNAL) == (
        "23:21:26.721 redis pid 3613222 <- SIGTERM from pid 4412 python3 /opt/relayq/monitor.py "
        "(relayq-redis-monitor.service) BLOCKED"
    )
    delivered = dict(SIGNAL, action="delivered", sender=None, code="SI_KERNEL", target={"pid": 5})
    assert format_event(delivered) == "23:21:26.721 pid 5 <- SIGTERM from the kernel"
    gone = dict(SIGNAL, sender=ProcessIdentity(pid=4412, alive=False, note="sender exited before it could be inspected").to_dict(),
                reason="stop only via relayqctl")
    assert format_event(gone) == (
        "23:21:26.721 redis pid 3613222 <- SIGTERM from pid 4412 (sender exited before it could be inspected) "
        "BLOCKED (stop only via relayqctl)"
    )


def test_format_exit():
    assert format_event(EXIT) == "23:21:27.001 worker:1 pid 812 exited: killed by SIGKILL (sender not visible to the tap)"
    assert format_event(dict(EXIT, signal=None, code=0)) == "23:21:27.001 worker:1 pid 812 exited: status 0"
    assert format_event(dict(EXIT, signal="SIGTERM", sender=MONITOR)).endswith(
        "killed by SIGTERM (from pid 4412 python3 /opt/relayq/monitor.py (relayq-redis-monitor.service))"
    )
    assert format_event(dict(EXIT, signal=None, code=1, note="OOM")).endswith("exited: status 1 (OOM)")


def test_format_redis_denied():
    assert format_event(DENIED) == (
        "23:22:00.000 redis DENIED shutdown by user default from 127.0.0.1:51234 (pid 77 redis-cli shutdown)"
    )
    anonymous = dict(DENIED, sender=None, client_name="monitor", count=3)
    assert format_event(anonymous) == (
        "23:22:00.000 redis DENIED shutdown by user default from 127.0.0.1:51234 (client name monitor) x3"
    )


@pytest.mark.parametrize(
    "event, text",
    [
        (make_event("spawn", ts="2026-11-25T01:02:03.004Z", program="worker:1", pid=812, argv=["relayq-worker", "-q", "default"]),
         "01:02:03.004 worker:1 pid 812 started: relayq-worker -q default"),
        (make_event("backoff", ts="2026-11-25T01:02:03.004Z", program="worker:1", delay_s=2.5, streak=3),
         "01:02:03.004 worker:1 restarting in 2.5s (failure streak 3)"),
        (make_event("gave_up", ts="2026-11-25T01:02:03.004Z", program="redis", reason="5 restarts in 60s"),
         "01:02:03.004 redis GAVE UP: 5 restarts in 60s"),
        (make_event("tap_unavailable", ts="2026-11-25T01:02:03.004Z", reason="signalfd: EPERM"),
         "01:02:03.004 signal tap unavailable: signalfd: EPERM"),
        (make_event("lock_conflict", ts="2026-11-25T01:02:03.004Z", path="/run/relayq/redis.lock", owner="pid 99"),
         "01:02:03.004 lock /run/relayq/redis.lock is held by pid 99"),
        (make_event("tamper", ts="2026-11-25T01:02:03.004Z", path="/etc/relayq.toml", what="modified"),
         "01:02:03.004 TAMPER /etc/relayq.toml: modified"),
        (make_event("rival_manager", ts="2026-11-25T01:02:03.004Z", path="/lib/systemd/system/redis-server.service",
                    reason="enabled"),
         "01:02:03.004 rival manager /lib/systemd/system/redis-server.service: enabled"),
        (make_event("operator", ts="2026-11-25T01:02:03.004Z", action="stop", program="redis"),
         "01:02:03.004 operator: action=stop program=redis"),
        (make_event("audit_gap", ts="2026-11-25T01:02:03.004Z", dropped=7, since="2026-11-25T01:00:00.000Z", reason="disk full"),
         "01:02:03.004 AUDIT GAP: 7 events lost since 2026-11-25T01:00:00.000Z (disk full)"),
        (make_event("leftovers_killed", ts="2026-11-25T01:02:03.004Z", program="worker:1", pid=812, pids=[901, 905],
                    count=2),
         "01:02:03.004 worker:1 pid 812 left 2 process(es) running: SIGKILL (901 905)"),
    ],
)
def test_format_other_kinds(event, text):
    assert format_event(event) == text


def test_format_unknown_kind_and_bad_time():
    line = format_event({"ts": "nonsense", "event": "novel", "sender": MONITOR, "extra": {"a": 1}})
    assert line.startswith("nonsense novel: ")
    assert "sender=pid 4412 python3" in line and 'extra={"a":1}' in line


def test_format_is_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        assert format_event(SIGNAL).startswith("23:21:26.721 ")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


# --- follow -------------------------------------------------------------------


def test_follow_yields_appended_events_across_rotation(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog(path, max_bytes=250, keep=2)
    audit.write(make_event("spawn", program="old", pid=0, argv=[]))  # before follow: not yielded
    deadline = time.monotonic() + 10
    events = follow(path, poll=0.005, stop=lambda: time.monotonic() > deadline)

    got = []
    for i in range(6):  # enough to rotate more than once at 250 bytes
        audit.write(make_event("spawn", program="w", pid=i, argv=["x" * 40]))
        got.append(next(events))
    audit.close()

    assert [e["pid"] for e in got] == list(range(6))
    assert os.path.exists(f"{path}.1")  # rotation really happened


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path):
    path = tmp_path / "audit.jsonl"
    deadline = time.monotonic() + 10
    events = follow(path, poll=0.005, stop=lambda: time.monotonic() > deadline)
    with AuditLog(path) as audit:
        audit.write(make_event("tamper", path="/x", what="first"))
    assert next(events)["what"] == "first"


def test_follow_stops_when_told(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    assert list(follow(path, poll=0.001, stop=lambda: True)) == []
