"""The control socket: requests in, replies out. Peers are checked with SO_PEERCRED.

Single-threaded: every client is a coroutine with a read deadline, so a client that
connects and never writes costs one idle coroutine, never a blocked loop.

Few loop passes per request: under load (a signal storm) every pass of the loop also
runs the trace reads, the tap's stops and the audit fsync that are ready, so a request
waits for each pass it needs. The listening socket is the loop's own reader: a client is
accepted in one pass and, its request being already in the socket (a client writes it
right after connecting), read, answered and written in the next, whose first callback it
is (a task's step is queued before the I/O that pass finds ready). asyncio's streams take
about five passes for the same (a task to make the transport, connection_made, the read,
the reader's wake-up). Only a client that is slow to write waits on the loop for more.
"""
from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import socket
import struct

from relayq_supervisor.background import start_task
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
BACKLOG = 128
REFUSED_READ_S = 1.0
ACCEPT_RETRY_S = 1.0
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


def discard_unread(conn: socket.socket, limit: int = 4 * protocol.MAX_REQUEST_BYTES) -> None:
    """Read away what the client sent past its request (a request too large): a unix socket
    closed with unread data resets the connection, and the client would lose its reply."""
    while limit > 0:
        try:
            chunk = conn.recv(min(limit, 65536))
        except OSError:         # nothing more now (EAGAIN), or the client is gone
            return
        if not chunk:
            return
        limit -= len(chunk)


class ControlServer:
    def __init__(self, sup: Supervision, spec: SupervisorSpec):
        self.sup = sup
        self.path = spec.control_socket
        self.group = spec.control_group
        self.group_gid = grp.getgrnam(self.group).gr_gid if self.group else None
        self.server: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.identity: FileIdentity | None = None
        self.connections = 0
        self.refused_over_cap = 0

    async def start(self) -> None:
        # The supervisor lock is held: any socket file here belongs to a dead supervisor.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old = os.umask(0o117)
        try:
            sock.bind(self.path)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        self.server = sock
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self.accept)
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
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.server.fileno())
            self.server.close()
            self.server = None
            if self.is_intact():
                os.unlink(self.path)

    def allowed(self, peer: Peer) -> bool:
        if peer.uid in (0, os.getuid()):
            return True
        return self.group_gid is not None and self.group_gid in peer.groups()

    def accept(self) -> None:
        """The listening socket is readable: every waiting client, each served by a task."""
        while self.server is not None:
            try:
                conn, _ = self.server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:        # EMFILE and the like: clients stay queued, tried again in a while
                log.warning("control: cannot accept a client (%s); trying again in %g s", e.strerror,
                            ACCEPT_RETRY_S)
                if self.loop is not None:
                    self.loop.remove_reader(self.server.fileno())
                    self.loop.call_later(ACCEPT_RETRY_S, self.listen_again, self.server)
                return
            conn.setblocking(False)
            if self.connections >= MAX_CONNECTIONS:
                self.over_cap(conn)
                continue
            self.connections += 1
            start_task(self.handle(conn), "control client")

    def listen_again(self, sock: socket.socket) -> None:
        if self.server is sock and self.loop is not None:      # (not closed or replaced meanwhile)
            self.loop.add_reader(sock.fileno(), self.accept)

    async def handle(self, conn: socket.socket) -> None:
        try:
            reply = await self.serve_one(conn)
            async with asyncio.timeout(READ_TIMEOUT_S):     # (not wait_for: its task costs a loop pass)
                await self.send_all(conn, reply)
        except (TimeoutError, ConnectionError):
            pass
        except Exception:   # one bad client must never end supervision
            log.exception("control: error while serving a client")
        finally:
            self.connections -= 1
            if self.connections == 0:
                self.refused_over_cap = 0
            discard_unread(conn)
            conn.close()

    @staticmethod
    async def send_all(conn: socket.socket, data: bytes) -> None:
        """Written at once when the socket takes it (a reply usually fits its buffer)."""
        try:
            sent = conn.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            await asyncio.get_running_loop().sock_sendall(conn, data[sent:])

    @staticmethod
    async def read_line(conn: socket.socket) -> bytes:
        """One request line, read at once when it is in the socket already. Raises
        IncompleteReadError (closed before a newline) or LimitOverrunError (too long)."""
        loop = asyncio.get_running_loop()
        data = b""
        while True:
            try:
                chunk = conn.recv(protocol.MAX_REQUEST_BYTES + 1)
            except BlockingIOError:
                chunk = await loop.sock_recv(conn, protocol.MAX_REQUEST_BYTES + 1)
            if not chunk:
                raise asyncio.IncompleteReadError(data, None)
            data += chunk
            end = data.find(b"\n")
            if end >= 0 and end < protocol.MAX_REQUEST_BYTES:
                return data[:end + 1]
            if len(data) >= protocol.MAX_REQUEST_BYTES:
                raise asyncio.LimitOverrunError("request too large", len(data))

    def over_cap(self, conn: socket.socket) -> None:
        """Refused without reading: the reply fits the socket buffer, so no wait."""
        if self.refused_over_cap == 0:      # once per flood, not once per connection
            log.warning("control: %d connections open (limit %d): refusing more until some close",
                        self.connections, MAX_CONNECTIONS)
        self.refused_over_cap += 1
        try:
            conn.send(protocol.reply_error(f"too many control connections ({MAX_CONNECTIONS} open): "
                                           "try again shortly", code=1))
        except OSError:
            pass
        conn.close()

    async def serve_one(self, conn: socket.socket) -> bytes:
        peer = peer_of(conn)
        if not self.allowed(peer):
            allowed = f"root, uid {os.getuid()}" + (f", group {self.group}" if self.group else "")
            log.warning("refused %s (allowed: %s)", peer, allowed)
            self.sup.audit("control_refused", peer={"pid": peer.pid, "uid": peer.uid})
            # its request read away first (unused): a reply that overtook it and a close with it
            # unread would reset the connection before the client reads why
            with contextlib.suppress(Exception):
                async with asyncio.timeout(REFUSED_READ_S):
                    await self.read_line(conn)
            return protocol.reply_error(f"permission denied: uid {peer.uid} may not use this supervisor "
                                        f"(allowed: {allowed})", code=1)
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                line = await self.read_line(conn)
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
