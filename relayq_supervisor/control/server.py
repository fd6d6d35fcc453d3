"""The control socket: requests in, replies out. Peers are checked with SO_PEERCRED.

Single-threaded: every client is a coroutine with a read deadline, so a client that
connects and never writes costs one idle coroutine, never a blocked loop.
"""
from __future__ import annotations

import asyncio
import grp
import logging
import os
import socket
import struct

from relayq_supervisor.config import SupervisorSpec
from relayq_supervisor.control import protocol
from relayq_supervisor.control.commands import HANDLERS, Supervision
from relayq_supervisor.errors import BadRequest, RelayqError
from relayq_supervisor.linux.files import FileIdentity
from relayq_supervisor.linux.procfs import supplementary_groups

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0
# Connections served at once. Each costs an fd and a coroutine for up to READ_TIMEOUT_S;
# beyond this a client is told to retry and closed at once, so a flood of idle
# connections cannot exhaust the supervisor's fds (it needs them for pidfds and pipes).
MAX_CONNECTIONS = 128
_PEERCRED = struct.Struct("3i")


class Peer:
    def __init__(self, pid: int, uid: int, gid: int):
        self.pid, self.uid, self.gid = pid, uid, gid

    def groups(self) -> set[int]:
        return {self.gid} | supplementary_groups(self.pid)

    def __str__(self) -> str:
        return f"uid {self.uid} pid {self.pid}"


def peer_of(sock: socket.socket) -> Peer:
    return Peer(*_PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)))


class ControlServer:
    def __init__(self, sup: Supervision, spec: SupervisorSpec):
        self.sup = sup
        self.path = spec.control_socket
        self.group = spec.control_group
        self.group_gid = grp.getgrnam(self.group).gr_gid if self.group else None
        self.server: asyncio.AbstractServer | None = None
        self.identity: FileIdentity | None = None
        self.connections = 0
        self.refused_over_cap = 0

    async def start(self) -> None:
        # The supervisor lock is held: any socket file here belongs to a dead supervisor.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        old = os.umask(0o117)
        try:
            self.server = await asyncio.start_unix_server(self.handle, path=self.path,
                                                          limit=protocol.MAX_REQUEST_BYTES)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        if self.group_gid is not None:
            os.chown(self.path, -1, self.group_gid)
        self.identity = FileIdentity.of_path(self.path)

    def is_intact(self) -> bool:
        """False when the socket file was deleted or replaced behind our back."""
        return self.identity is not None and self.identity.still_at(self.path)

    async def restart(self) -> None:
        """Listen again (the socket file, or its directory, was deleted or replaced)."""
        self.close()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        await self.start()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            if self.is_intact():
                os.unlink(self.path)

    def allowed(self, peer: Peer) -> bool:
        if peer.uid in (0, os.getuid()):
            return True
        return self.group_gid is not None and self.group_gid in peer.groups()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            self.over_cap(writer)
            return
        self.connections += 1
        try:
            reply = await self.serve_one(reader, writer)
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            pass
        except Exception:   # one bad client must never end supervision
            log.exception("control: error while serving a client")
        finally:
            self.connections -= 1
            if self.connections == 0:
                self.refused_over_cap = 0
            writer.close()

    def over_cap(self, writer: asyncio.StreamWriter) -> None:
        """Refused without reading: the reply fits the socket buffer, so no wait."""
        if self.refused_over_cap == 0:      # once per flood, not once per connection
            log.warning("control: %d connections open (limit %d): refusing more until some close",
                        self.connections, MAX_CONNECTIONS)
        self.refused_over_cap += 1
        try:
            writer.write(protocol.reply_error(f"too many control connections ({MAX_CONNECTIONS} open): "
                                              "try again shortly", code=1))
        except (ConnectionError, RuntimeError):
            pass
        writer.close()

    async def serve_one(self, reader, writer) -> bytes:
        peer = peer_of(writer.get_extra_info("socket"))
        if not self.allowed(peer):
            allowed = f"root, uid {os.getuid()}" + (f", group {self.group}" if self.group else "")
            log.warning("refused %s (allowed: %s)", peer, allowed)
            self.sup.audit("control_refused", peer={"pid": peer.pid, "uid": peer.uid})
            return protocol.reply_error(f"permission denied: uid {peer.uid} may not use this supervisor "
                                        f"(allowed: {allowed})", code=1)
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT_S)
        except TimeoutError:
            return protocol.reply_error(f"no request within {READ_TIMEOUT_S:g}s", code=2)
        except asyncio.LimitOverrunError:
            return protocol.reply_error(f"request too large (limit {protocol.MAX_REQUEST_BYTES} bytes)", code=2)
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                return protocol.reply_error("empty request", code=2)
            return protocol.reply_error("truncated request (no newline at the end)", code=2)
        try:
            cmd, args = protocol.parse_request(line)
            handler = HANDLERS.get(cmd)
            if handler is None:
                raise BadRequest(f"unknown command {cmd!r} (known: {', '.join(HANDLERS)})")
            result = await handler(self.sup, args, peer)
        except RelayqError as e:
            return protocol.reply_for(e)
        except Exception as e:      # a bug of ours: the client still gets an answer, supervision goes on
            log.exception("control: %s failed", line[:80])
            return protocol.reply_error(f"internal error: {e.__class__.__name__}: {e} (see the supervisor's log)")
        return protocol.reply_ok(result)
