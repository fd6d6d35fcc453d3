"""The control protocol and relayqctl's printing, in-process. The same garbage sent to a real
supervisor's socket (framing, size limit, and that supervision goes on) is tested in
tests/integration/test_ctl.py."""
from __future__ import annotations

import argparse
import json
import os
import socket
import threading
from pathlib import Path

import pytest

from relayq_supervisor.control import protocol
from relayq_supervisor.control.protocol import Refused, exit_status_of, parse_reply, parse_request
from relayq_supervisor.ctl.client import Unreachable, call
from relayq_supervisor.ctl.display import describe_program, format_duration, outcome_line, print_programs, print_status, say
from relayq_supervisor.ctl.parser import build_parser
from relayq_supervisor.ctl.why import print_why
from relayq_supervisor.errors import (
    BadRequest,
    ConfigError,
    LockHeld,
    RelayqError,
    ReloadRefused,
    StartupError,
    UnknownProgram,
)


def refused(line: bytes) -> BadRequest:
    with pytest.raises(BadRequest) as failed:
        parse_request(line)
    return failed.value


KNOWN = "status, start, stop, restart, pid, shutdown, reload, why, cluster-status, cluster-why"


@pytest.mark.parametrize("line, message", [
    (b"this is not json\n", "malformed request: not JSON (Expecting value: line 1 column 1 (char 0))"),
    (b"\xff\xfe\x00garbage\n", "malformed request: not JSON ('utf-8' codec can't decode byte 0xff in position 0: "
                               "invalid start byte)"),
    (b"[1, 2, 3]\n", "malformed request: expected a JSON object"),
    (b'"status"\n', "malformed request: expected a JSON object"),
    (b'{"v": 99, "cmd": "status"}\n', "unsupported protocol version 99 (this supervisor speaks 1)"),
    (b'{"cmd": "status"}\n', "unsupported protocol version None (this supervisor speaks 1)"),
    (b'{"v": "1", "cmd": "status"}\n', "unsupported protocol version '1' (this supervisor speaks 1)"),
    (b'{"v": 1, "cmd": "rm -rf /"}\n', f"unknown command 'rm -rf /' (known: {KNOWN})"),
    (b'{"v": 1}\n', f"unknown command None (known: {KNOWN})"),
    (b'{"v": 1, "cmd": "cluster-why", "args": {"node": ["n2"]}}\n', "malformed request: 'node' must be a string"),
    (b'{"v": 1, "cmd": "status", "args": []}\n', "malformed request: 'args' must be an object"),
    (b'{"v": 1, "cmd": "start", "args": {"names": "redis"}}\n', "malformed request: 'names' must be a list of strings"),
    (b'{"v": 1, "cmd": "start", "args": {"names": ["redis", 1]}}\n',
     "malformed request: 'names' must be a list of strings"),
    (b'{"v": 1, "cmd": "start", "args": {"names": [], "wait": "yes"}}\n',
     "malformed request: 'wait' must be true or false"),
    (b'{"v": 1, "cmd": "stop", "args": {"with_dependents": 1}}\n',
     "malformed request: 'with_dependents' must be true or false"),
    (b'{"v": 1, "cmd": "why", "args": {"name": 5}}\n', "malformed request: 'name' must be a string"),
    (b'{"v": 1, "cmd": "status"', "malformed request: not JSON (Expecting ',' delimiter: line 1 column 25 (char 24))"),
])
def test_bad_requests_are_refused_with_a_reason_and_code_2(line, message):
    error = refused(line)
    assert str(error) == message
    assert exit_status_of(error) == protocol.EXIT_USAGE == 2


@pytest.mark.parametrize("cmd", protocol.COMMANDS)
def test_every_command_round_trips(cmd):
    line = protocol.request(cmd, names=["redis", "worker"], wait=False)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_request(line) == (cmd, {"names": ["redis", "worker"], "wait": False})


def test_request_defaults_and_optional_name():
    assert parse_request(b'{"v": 1, "cmd": "shutdown"}') == ("shutdown", {})
    assert parse_request(protocol.request("pid", name=None)) == ("pid", {"name": None})
    assert parse_request(protocol.request("why", name="worker:1")) == ("why", {"name": "worker:1"})
    # new fields are ignored, not refused
    assert parse_request(b'{"v": 1, "cmd": "status", "args": {"names": [], "colour": "auto"}, "trace": 1}') == (
        "status", {"names": [], "colour": "auto"})


def test_replies_round_trip():
    ok = protocol.reply_ok({"pid": 812, "path": Path("/run/relayq")})      # default=str for the odd value
    assert ok == b'{"v":1,"ok":true,"result":{"pid":812,"path":"/run/relayq"}}\n'
    assert parse_reply(ok) == {"v": 1, "ok": True, "result": {"pid": 812, "path": "/run/relayq"}}
    err = protocol.reply_error("unknown program name 'x' (known: redis)", protocol.EXIT_UNKNOWN)
    assert parse_reply(err) == {"v": 1, "ok": False, "error": "unknown program name 'x' (known: redis)", "code": 4}
    assert json.loads(protocol.reply_error("boom"))["code"] == protocol.EXIT_FAILURE


@pytest.mark.parametrize("line", [b"", b"not json", b"[1]", b'{"v": 1}', b"\xff"])
def test_a_malformed_reply_is_a_failure_not_a_usage_error(line):
    with pytest.raises(Refused) as failed:
        parse_reply(line)
    assert str(failed.value).startswith("malformed reply from the supervisor")
    assert failed.value.code == exit_status_of(failed.value) == protocol.EXIT_FAILURE


def test_exit_statuses_follow_systemctl():
    assert (protocol.EXIT_OK, protocol.EXIT_FAILURE, protocol.EXIT_USAGE, protocol.EXIT_NOT_RUNNING,
            protocol.EXIT_UNKNOWN) == (0, 1, 2, 3, 4)


@pytest.mark.parametrize("error, status", [
    (BadRequest("x"), 2), (ConfigError("x"), 2), (StartupError("x"), 2), (UnknownProgram("x"), 4),
    (ReloadRefused("x"), 1), (LockHeld("/run/relayq/redis.lock", None), 1), (RelayqError("x"), 1),
    (Refused("x"), 1), (Refused("x", code=3), 3),
])
def test_exit_status_of_each_error(error, status):
    assert exit_status_of(error) == status
    reply = parse_reply(protocol.reply_for(error))
    assert reply == {"v": 1, "ok": False, "error": str(error), "code": status}


# --- relayqctl's side --------------------------------------------------------------------

def test_call_names_the_socket_and_why_it_is_unreachable(tmp_path):
    missing = str(tmp_path / "none.sock")
    with pytest.raises(Unreachable) as none:
        call(missing, "status")
    assert str(none.value) == f"{missing}: no supervisor is listening (no socket file)"
    stale = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(stale)
    s.close()                                   # the file stays, nobody listens
    with pytest.raises(Unreachable) as gone:
        call(stale, "status")
    assert str(gone.value) == f"{stale}: no supervisor is listening (stale socket)"


def test_call_sends_one_request_and_reads_one_reply(tmp_path):
    path = str(tmp_path / "ctl.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    server.settimeout(10)
    received = []

    def answer_once():          # a thread stands in for the supervisor: no process
        conn, _ = server.accept()
        with conn:
            received.append(conn.makefile("rb").readline())
            conn.sendall(protocol.reply_ok({"pid": 812}))

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    try:
        assert call(path, "pid", 5.0, name=None) == {"v": 1, "ok": True, "result": {"pid": 812}}
    finally:
        thread.join(10)
        server.close()
    assert received == [protocol.request("pid", name=None)]


def test_call_without_a_reply_is_unreachable(tmp_path):
    path = str(tmp_path / "ctl.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    server.settimeout(10)

    def hang_up():
        conn, _ = server.accept()
        conn.makefile("rb").readline()
        conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(Unreachable) as closed:
            call(path, "status", 5.0)
    finally:
        thread.join(10)
        server.close()
    assert str(closed.value) == f"{path}: the supervisor closed the connection without a reply"


@pytest.mark.parametrize("seconds, text", [
    (None, "-"), (0, "0s"), (59.9, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"),
    (86399, "23h59m"), (86400, "1d 0h00m"), (90061, "1d 1h01m"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("program, text", [
    ({"state": "RUNNING", "reason": "ignored while running", "last_exit": None}, ""),
    ({"state": "RUNNING", "last_exit": {"description": "killed by SIGKILL"}}, "last: killed by SIGKILL"),
    ({"state": "BACKOFF", "reason": "next start in 0.4s, failure 2 of 5",
      "last_exit": {"description": "exited 1"}}, "next start in 0.4s, failure 2 of 5"),
    ({"state": "STARTING", "reason": "waiting for redis", "last_exit": {"description": "exited 3"}},
     "waiting for redis; last: exited 3"),
    ({"state": "FATAL", "reason": "gave up: 6 starts in 60s", "last_exit": {"description": "exited 3"}},
     "gave up: 6 starts in 60s"),
    ({"state": "STOPPED", "reason": ""}, ""),
])
def test_describe_program(program, text):
    assert describe_program(program) == text


def test_why_shows_how_long_a_running_program_has_been_up(capsys):
    """Not only the reason it became RUNNING: `alive for 1s` read as its uptime (issue 15, item 6)."""
    print_why({"program": {"name": "rqworker:2", "state": "RUNNING", "pid": 4242, "uptime_s": 754.2,
                               "reason": "ready: still running 1s after its start"}, "last_stop": None})
    first = capsys.readouterr().out.splitlines()[0]
    assert first == "rqworker:2: RUNNING, pid 4242, up 12m34s (ready: still running 1s after its start)"


# a sender whose command line carried its whole environment (an 8 KB dump was seen)
HUGE_SENDER = "killed by SIGTERM from pid 4412 python3 monitor.py " + "A=" + "x" * 8000


def test_status_table_cuts_a_long_detail_to_the_terminal_only(capsys):
    program = {"name": "worker:0", "state": "RUNNING", "pid": 812, "uptime_s": 3.0, "restarts": 1,
               "last_exit": {"description": HUGE_SENDER}}
    print_status({"supervisor": {"pid": 1, "uptime_s": 5, "config": "/c.toml", "notes": ["n" * 300]},
                      "programs": [program]}, width=80)
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(len(line) <= 80 for line in lines[1:]), [len(line) for line in lines]
    row = next(line for line in lines if line.startswith("worker:0"))
    assert row.endswith("...") and "last: killed by SIGTERM from pid" in row and len(row) == 80
    # in the cluster view too, under each node's indented table
    print_programs([program], False, "    ", width=72)
    assert all(len(line) <= 72 for line in capsys.readouterr().out.splitlines())
    # no width (piped, not a terminal): every character stays
    print_programs([program], False)
    assert capsys.readouterr().out.rstrip("\n").endswith("x" * 8000)


def test_an_outcome_line_is_cut_to_the_terminal_only(capsys):
    outcome = {"name": "worker:1", "state": "BACKOFF", "ok": False,
               "detail": "pid 813 died during the start: " + HUGE_SENDER}
    say(outcome_line(outcome), 100)
    line = capsys.readouterr().out.rstrip("\n")
    assert len(line) == 100 and line.startswith("worker:1: BACKOFF (pid 813 died") and line.endswith("...")
    say(outcome_line(outcome))
    assert capsys.readouterr().out.rstrip("\n").endswith("x" * 8000 + ")")


def test_terminal_width_only_for_a_terminal(tmp_path, monkeypatch):
    import pty

    from relayq_supervisor.shell_text import terminal_width
    monkeypatch.setenv("COLUMNS", "77")
    controller, terminal = pty.openpty()
    try:
        with open(terminal, "w", closefd=False) as tty, open(tmp_path / "out", "w") as piped:
            assert terminal_width(tty) == 77
            assert terminal_width(piped) is None
    finally:
        os.close(controller)
        os.close(terminal)


def test_help_names_every_command_and_option():
    """`relayqctl --help` and each COMMAND --help: no option left unexplained (--cluster,
    --node, --watch, logs came in one day and their help with them)."""
    parser = build_parser()
    top = parser.format_help()
    for text in ("logs", "--cluster", "--node", "--watch"):
        assert text in top, text
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {c.dest for c in commands._choices_actions} == set(commands.choices)     # every command has a line
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"relayqctl {name}: {'/'.join(action.option_strings) or action.dest} has no help"
