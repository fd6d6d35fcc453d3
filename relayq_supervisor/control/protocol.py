"""The control protocol, shared by the supervisor and relayqctl.

Transport: a UNIX stream socket. Each side sends one JSON object per line (UTF-8,
newline-terminated). The client sends one request and reads one reply, then closes.

Request:  {"v": 1, "cmd": "status", "args": {"names": ["worker"]}}
Reply:    {"v": 1, "ok": true, "result": {...}}
          {"v": 1, "ok": false, "error": "unknown program name 'x' (known: redis, worker)", "code": 4}

`code` is the exit status relayqctl should use (0 ok, 1 failure, 2 bad request,
3 not running, 4 unknown name). Commands and their args:
  status   {names: [str]}                         -> {supervisor: {...}, programs: [...]}
  start    {names: [str], wait: bool}             -> {outcomes: [{name, state, ok, detail}]}
  stop     {names, wait, with_dependents, force}  -> {outcomes: [...]}   force: SIGKILL, no save
  restart  {names, wait}                          -> {outcomes: [...]}
  pid      {name: str | null}                     -> {pid: int | null}
  shutdown {}                                     -> {pid: int}
  reload   {}                                     -> {changes: {...}}
  why      {name: str}                            -> {program: {...}, last_stop: {...} | null}
  cluster-status {}                               -> {redis: str, nodes: [...]}   read-only: the
           cluster's Redis read by the supervisor ([cluster]), `status --cluster --json`'s nodes
  cluster-why {node: str, name: str}              -> {node, program: {...}, last_stop: {...} | null}
           read-only, as cluster-status: `why NAME --node N`
New fields may be added to any object; clients ignore what they do not know.
"""
from __future__ import annotations

import json
from typing import Any

from relayq_supervisor.errors import BadRequest, ConfigError, RelayqError, StartupError, UnknownProgram

VERSION = 1
# Exit statuses of both commands (and reply `code`s): systemctl's convention.
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNKNOWN = 0, 1, 2, 3, 4
MAX_REQUEST_BYTES = 64 * 1024
# A request is at most three levels deep ({"args": {"names": [...]}}); deeper is garbage,
# and deep enough would be json's RecursionError.
MAX_REQUEST_DEPTH = 8
COMMANDS = ("status", "start", "stop", "restart", "pid", "shutdown", "reload", "why", "cluster-status", "cluster-why")


class Refused(RelayqError):
    """relayqctl's side: the supervisor answered with an error, or not in the protocol."""

    def __init__(self, message: str, code: int = EXIT_FAILURE):
        super().__init__(message)
        self.code = code


def exit_status_of(error: RelayqError) -> int:
    """The one table from errors to reply codes and exit statuses."""
    if isinstance(error, Refused):
        return error.code
    if isinstance(error, UnknownProgram):
        return EXIT_UNKNOWN
    if isinstance(error, (BadRequest, ConfigError, StartupError)):
        return EXIT_USAGE
    return EXIT_FAILURE


def encode(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()


def request(cmd: str, **args: Any) -> bytes:
    return encode({"v": VERSION, "cmd": cmd, "args": args})


def reply_ok(result: dict[str, Any]) -> bytes:
    return encode({"v": VERSION, "ok": True, "result": result})


def reply_error(message: str, code: int = 1) -> bytes:
    return encode({"v": VERSION, "ok": False, "error": message, "code": code})


def reply_for(error: RelayqError) -> bytes:
    return reply_error(str(error), code=exit_status_of(error))


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Validate one request line; BadRequest says what is wrong with it."""
    if nesting_depth(line) > MAX_REQUEST_DEPTH:
        raise BadRequest(f"malformed request: nested deeper than {MAX_REQUEST_DEPTH} levels")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BadRequest(f"malformed request: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise BadRequest("malformed request: expected a JSON object")
    version = obj.get("v")
    # exactly the integer: true and 1.0 compare equal to 1 in Python, but are not versions
    if type(version) is not int or version != VERSION:
        raise BadRequest(f"unsupported protocol version {version!r} (this supervisor speaks {VERSION})")
    cmd = obj.get("cmd")
    if cmd not in COMMANDS:
        raise BadRequest(f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise BadRequest("malformed request: 'args' must be an object")
    names = args.get("names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadRequest("malformed request: 'names' must be a list of strings")
    for key in ("wait", "with_dependents", "force"):
        if key in args and not isinstance(args[key], bool):
            raise BadRequest(f"malformed request: '{key}' must be true or false")
    for key in ("name", "node"):
        if key in args and args[key] is not None and not isinstance(args[key], str):
            raise BadRequest(f"malformed request: '{key}' must be a string")
    return cmd, args


def nesting_depth(line: bytes) -> int:
    """The deepest bracket nesting in a JSON text, brackets inside strings not counted;
    a linear scan, so a hostile request is measured before the parser recurses into it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:              # backslash
                escaped = True
            elif byte == 0x22:              # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):          # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):          # ] }
            depth -= 1
    return deepest


def parse_reply(line: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise Refused(f"malformed reply from the supervisor ({e})") from None
    if not isinstance(obj, dict) or "ok" not in obj:
        raise Refused("malformed reply from the supervisor")
    return obj
