"""control/protocol.py: what a request line may be, and the clear refusals."""
from __future__ import annotations

import json

import pytest

from relayq_supervisor.control import protocol
from relayq_supervisor.control.protocol import BadRequest, nesting_depth, parse_request


def refusal(line: bytes) -> str:
    with pytest.raises(BadRequest) as e:
        parse_request(line)
    return str(e.value)


def test_a_plain_request_parses():
    assert parse_request(protocol.request("status", names=["redis"])) == ("status", {"names": ["redis"]})


@pytest.mark.parametrize("depth", [9, 1000, 100_000])
def test_deep_nesting_is_refused_clearly_not_a_recursion_error(depth):
    line = b'{"v": 1, "cmd": "status", "args": {"x": ' + b"[" * depth + b"]" * depth + b"}}\n"
    assert refusal(line) == "malformed request: nested deeper than 8 levels"


def test_brackets_inside_strings_do_not_count_as_nesting():
    names = ["[" * 50, '\\"{{{{{{{{{{', "]]]"]
    line = protocol.request("status", names=names)
    assert nesting_depth(line) == 3
    assert parse_request(line) == ("status", {"names": names})


def test_unbalanced_garbage_is_not_json():
    assert refusal(b'{"v": 1, "cmd": ]]]]\n').startswith("malformed request: not JSON")


@pytest.mark.parametrize("version, shown", [(True, "True"), (1.0, "1.0"), ("1", "'1'"), (None, "None"), (2, "2")])
def test_only_the_integer_1_is_a_version(version, shown):
    line = json.dumps({"v": version, "cmd": "status"}).encode() + b"\n"
    assert refusal(line) == f"unsupported protocol version {shown} (this supervisor speaks 1)"


def test_a_missing_version_is_refused():
    assert refusal(b'{"cmd": "status"}\n') == "unsupported protocol version None (this supervisor speaks 1)"


@pytest.mark.parametrize("args, message", [
    ({"names": "redis"}, "malformed request: 'names' must be a list of strings"),
    ({"names": [1]}, "malformed request: 'names' must be a list of strings"),
    ({"wait": 1}, "malformed request: 'wait' must be true or false"),
    ({"name": 5}, "malformed request: 'name' must be a string"),
])
def test_argument_types(args, message):
    assert refusal(json.dumps({"v": 1, "cmd": "start", "args": args}).encode()) == message


def test_unknown_command_and_non_object():
    assert refusal(b'{"v": 1, "cmd": "rm"}') == f"unknown command 'rm' (known: {', '.join(protocol.COMMANDS)})"
    assert refusal(b"[1]") == "malformed request: expected a JSON object"
    assert refusal(b'{"v": 1, "cmd": "status", "args": []}') == "malformed request: 'args' must be an object"
