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

from relayq_supervisor.control import protocol
from relayq_supervisor.control.protocol import ProtocolError

log = logging.getLogger("relayq")

READ_TIMEOUT_S = 5.0
_PEERCRED = struct.Struct("3i")


class Peer:
    def __init__(self, pid: int, uid: int, gid: int):
        self.pid, self.uid, self.gid = pid, uid, gid

    def groups(self) -> set[int]:
        groups = {self.gid}
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("Groups:"):
                        groups.update(int(g) for g in line.split()[1:])
        except (OSError, ValueError):
            pass
        return groups

    def __str__(self) -> str:
        return f"uid {self.uid} pid {self.pid}"


def peer_of(sock: socket.socket) -> Peer:
    return Peer(*_PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)))


class ControlServer:
    def __init__(self, supervisor):
        self.sup = supervisor
        self.path = supervisor.config.supervisor.control_socket
        group = supervisor.config.supervisor.control_group
        self.group_gid = grp.getgrnam(group).gr_gid if group else None
        self.server: asyncio.AbstractServer | None = None
        self.inode = None

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
        st = os.stat(self.path)
        self.inode = (st.st_dev, st.st_ino)

    def is_intact(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self.inode

    async def restart(self) -> None:
        """Listen again (the socket file was deleted or replaced)."""
        self.close()
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
        try:
            reply = await self.serve_one(reader, writer)
            writer.write(reply)
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT_S)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        except Exception:   # one bad client must never end supervision
            log.exception("control: error while serving a client")
        finally:
            writer.close()

    async def serve_one(self, reader, writer) -> bytes:
        peer = peer_of(writer.get_extra_info("socket"))
        if not self.allowed(peer):
            group = self.sup.config.supervisor.control_group if self.group_gid is not None else None
            allowed = f"root, uid {os.getuid()}" + (f", group {group}" if group else "")
            log.warning("control: refused %s (allowed: %s)", peer, allowed)
            self.sup.audit("control_refused", peer={"pid": peer.pid, "uid": peer.uid})
            return protocol.reply_error(f"permission denied: uid {peer.uid} may not use this supervisor "
                                        f"(allowed: {allowed})", code=1)
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT_S)
        except asyncio.TimeoutError:
            return protocol.reply_error(f"no request within {READ_TIMEOUT_S:g}s", code=2)
        except asyncio.LimitOverrunError:
            return protocol.reply_error(f"request too large (limit {protocol.MAX_REQUEST_BYTES} bytes)", code=2)
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                return protocol.reply_error("empty request", code=2)
            return protocol.reply_error("truncated request (no newline at the end)", code=2)
        try:
            cmd, args = protocol.parse_request(line)
            result = await self.dispatch(cmd, args, peer)
        except ProtocolError as e:
            return protocol.reply_error(str(e), code=e.code)
        except Exception as e:      # a bug of ours: the client still gets an answer, supervision goes on
            log.exception("control: %s failed", line[:80])
            return protocol.reply_error(f"internal error: {e.__class__.__name__}: {e} (see the supervisor's log)")
        return protocol.reply_ok(result)

    async def dispatch(self, cmd: str, args: dict, peer: Peer) -> dict:
        """One validated request -> the supervisor's primitives -> the reply's result."""
        sup = self.sup
        who = f"operator relayqctl {cmd} by uid {peer.uid} pid {peer.pid}"
        if cmd == "status":
            status = sup.status()
            if args.get("names"):
                status["programs"] = [p.status() for p in sup.resolve(args["names"])]
            return status
        if cmd == "pid":
            if not args.get("name"):
                return {"pid": os.getpid()}
            targets = sup.resolve([args["name"]])
            return {"pid": targets[0].pid, "pids": {p.name: p.pid for p in targets}}
        if cmd == "why":
            return sup.why(sup.resolve([args.get("name") or ""])[0])
        if cmd == "reload":
            return await sup.reload(who)
        if cmd == "shutdown":
            sup.audit("operator", action="shutdown", peer={"pid": peer.pid, "uid": peer.uid})
            sup.request_shutdown(who)
            return {"pid": os.getpid()}
        if sup.shutting_down:
            raise ProtocolError("the supervisor is shutting down", code=1)
        if not args.get("names"):
            raise ProtocolError(f"{cmd}: name at least one program", code=2)
        targets = sup.resolve(args["names"])
        if cmd == "stop" and args.get("with_dependents"):
            targets = sup.with_dependents(targets)
        sup.audit("operator", action=cmd, programs=[p.name for p in targets], peer={"pid": peer.pid, "uid": peer.uid})
        action = {"start": sup.operator_start, "stop": sup.operator_stop, "restart": sup.operator_restart}[cmd]
        job = asyncio.get_running_loop().create_task(action(targets, who))
        if not args.get("wait", True):
            return {"outcomes": [{"name": p.name, "state": p.state, "ok": True, "detail": "requested"}
                                 for p in targets]}
        await job
        return {"outcomes": [sup.final_outcome(cmd, p).__dict__ for p in targets]}
