"""sd_notify both ways: the datagram socket children get as NOTIFY_SOCKET, and sending to one.

The receiving socket has an abstract name, so nothing lingers in the file system.
SO_PASSCRED makes the kernel attach the sender's pid to every datagram, which is how
a READY=1 is tied to one child, as systemd does for NotifyAccess=.

Sending (`connect_notify_socket`, `send_notify`) serves the supervisor telling systemd
and the reference worker telling the supervisor.
"""
from __future__ import annotations

import os
import socket
import struct

_UCRED = struct.Struct("iII")


def connect_notify_socket(address: str, *, blocking: bool = True) -> socket.socket:
    """A datagram socket connected to a NOTIFY_SOCKET `address` ('@' = abstract); OSError if unreachable."""
    kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | (0 if blocking else socket.SOCK_NONBLOCK)
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.connect("\0" + address[1:] if address.startswith("@") else address)
    except OSError:
        sock.close()
        raise
    return sock


def send_notify(sock: socket.socket, message: bytes) -> None:
    """One sd_notify datagram, e.g. ``format_notify_message(READY=1, STATUS="up")``.

    Raises OSError; on a non-blocking socket BlockingIOError when the receiver's queue is full.
    """
    sock.send(message)


def format_notify_message(**fields: object) -> bytes:
    """``KEY=value`` lines, one per field: the inverse of `parse_notify_message`."""
    return "\n".join(f"{key}={value}" for key, value in fields.items()).encode()


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
        out: list[tuple[int | None, dict[str, str]]] = []
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
