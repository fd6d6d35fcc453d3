"""One request to the running supervisor over its control socket, one reply."""
from __future__ import annotations

import socket

from relayq_supervisor.control import protocol
from relayq_supervisor.control.protocol import Refused
from relayq_supervisor.errors import RelayqError


class Unreachable(RelayqError):
    """No supervisor answers on the socket (exit status 1)."""


def call(socket_path: str, cmd: str, timeout: float = 30.0, **args) -> dict:
    """One request, one reply. Unreachable names the socket and why."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(socket_path)
        except FileNotFoundError:
            raise Unreachable(f"{socket_path}: no supervisor is listening (no socket file)") from None
        except ConnectionRefusedError:
            raise Unreachable(f"{socket_path}: no supervisor is listening (stale socket)") from None
        except PermissionError:
            raise Unreachable(f"{socket_path}: permission denied") from None
        except OSError as e:
            raise Unreachable(f"{socket_path}: {e.strerror}") from None
        s.sendall(protocol.request(cmd, **args))
        data = b""
        while not data.endswith(b"\n"):
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                raise Unreachable(f"{socket_path}: no reply within {timeout:g}s") from None
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    if not data:
        raise Unreachable(f"{socket_path}: the supervisor closed the connection without a reply")
    return protocol.parse_reply(data)


def checked(reply: dict) -> dict:
    if not reply.get("ok"):
        raise Refused(reply.get("error", "the supervisor refused the request"), code=reply.get("code", 1))
    return reply["result"]
