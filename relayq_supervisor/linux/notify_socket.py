"""The sd_notify datagram socket children get as NOTIFY_SOCKET, and the sending side.

An abstract name, so nothing lingers in the file system. SO_PASSCRED makes the kernel
attach the sender's pid to every datagram, which is how a READY=1 is tied to one
child, as systemd does for NotifyAccess=.
"""
from __future__ import annotations

import os
import socket
import struct

_UCRED = struct.Struct("iII")


class ChildNotifySocket:
    def __init__(self) -> None:
        self.name = f"relayq-notify-{os.getpid()}-{os.urandom(4).hex()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + self.name)

    @property
    def address(self) -> str:
        """The NOTIFY_SOCKET value for children ('@' = abstract namespace)."""
        return "@" + self.name

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> list[tuple[int | None, dict[str, str]]]:
        """Every pending datagram as (sender pid, {KEY: value}); never blocks."""
        out = []
        while True:
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except (BlockingIOError, InterruptedError):
                return out
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                    pid = _UCRED.unpack_from(payload)[0]
            out.append((pid, parse_notify_message(data)))

    def close(self) -> None:
        self.sock.close()


def parse_notify_message(data: bytes) -> dict[str, str]:
    fields = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value
    return fields
