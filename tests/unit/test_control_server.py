"""The control socket's server on a real unix socket: a request already in the socket is
answered in the task's first step; one written slowly, in pieces, is read across them."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from types import SimpleNamespace

from relayq_supervisor.control.server import ControlServer


def exchange(path: str, pieces: list[bytes], pause: float) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
        for piece in pieces:
            s.sendall(piece)
            time.sleep(pause)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return json.loads(data)
    finally:
        s.close()


def test_requests_whole_and_in_pieces_are_answered(tmp_path):
    path = str(tmp_path / "ctl.sock")
    spec = SimpleNamespace(control_socket=path, control_group=None)

    async def main() -> list[dict]:
        server = ControlServer(SimpleNamespace(), spec)     # unknown commands need nothing of it
        await server.start()
        try:
            request = b'{"v": 1, "cmd": "no-such-command"}\n'
            return [
                await asyncio.to_thread(exchange, path, [request], 0),
                await asyncio.to_thread(exchange, path, [request[:7], request[7:20], request[20:]], 0.1),
                await asyncio.to_thread(exchange, path, [request + b"x" * 1000], 0),   # past the line: ignored
            ]
        finally:
            server.close()

    replies = asyncio.run(main())
    for reply in replies:
        assert reply["ok"] is False and "unknown command 'no-such-command'" in reply["error"], reply
