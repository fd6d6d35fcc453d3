"""The systemd journal's native protocol, spoken directly (no libsystemd).

systemd's docs/JOURNAL_NATIVE_PROTOCOL.md: each journal entry is one datagram to the
AF_UNIX/SOCK_DGRAM socket /run/systemd/journal/socket. Its payload is a list of fields,
`KEY=VALUE\\n`, or, for a value that holds a newline, `KEY\\n`, the value's length as an
unaligned 64-bit little-endian integer, the value, `\\n`. Values are binary-safe. An entry
too large for one datagram (EMSGSIZE) goes as a sealed memfd holding the same bytes,
passed with SCM_RIGHTS in a datagram with an empty payload.

Written here rather than taken from `systemd-python`, whose wheel is built from source
against libsystemd-dev with a C compiler at install time, which a Debian box running
the supervisor need not have; the protocol is one datagram format and stable.

The socket is non-blocking: a journald that is slow (its receive queue is full, EAGAIN)
or missing (ENOENT, ECONNREFUSED) makes `send` raise at once, never wait. What to do
about it is the caller's business (core/journal.py counts and warns).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterable, Mapping

JOURNAL_SOCKET = "/run/systemd/journal/socket"
# Tests point the sender at a datagram socket of their own; not a setting for operators.
SOCKET_ENV = "RELAYQ_JOURNAL_SOCKET"
# The doc advises a large send buffer "to delay blocking I/O as much as possible"; the kernel
# caps it at net.core.wmem_max for SO_SNDBUF.
SEND_BUFFER = 8 * 1024 * 1024
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL


def socket_path(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(SOCKET_ENV) or JOURNAL_SOCKET


def encode_field(key: bytes, value: bytes) -> bytes:
    """One field as the protocol writes it; the length form only where the value has a newline."""
    if b"\n" in value:
        return key + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return key + b"=" + value + b"\n"


def encode(fields: Iterable[tuple[str, bytes | str]]) -> bytes:
    """A whole entry. Keys are upper-case ASCII (no `_` first: journald keeps those for
    the fields it adds itself); values are bytes as they are, str as UTF-8."""
    return b"".join(encode_field(key.encode("ascii"),
                                 value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape"))
                    for key, value in fields)


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether `fd` is the journal stream systemd gave us: JOURNAL_STREAM is `DEV:INODE` of
    it. Checked, not just trusted to be set: a shell redirection below systemd (or a child
    that inherited the variable) has it set for a stderr that is not the journal."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalSocket:
    """A non-blocking datagram socket connected to journald's socket. Connected, so that
    poll(2) says when journald's queue has room again (the kernel wakes a connected
    sender; an unconnected one would always look writable); reconnected when journald
    restarted (a new socket behind the same name refuses the old connection)."""

    def __init__(self, path: str | None = None):
        self.path = path or socket_path()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self.connected = False
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass        # the default buffer works; entries beyond it go by memfd

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, entry: bytes) -> None:
        """Send one encoded entry, or raise OSError at once (BlockingIOError: journald's
        queue is full; FileNotFoundError/ConnectionRefusedError: no journald there)."""
        if not self.connected:
            self.sock.connect(self.path)
            self.connected = True
        try:
            self._send(entry)
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOTCONN):
                raise
            self.connected = False
            self.sock.connect(self.path)      # journald restarted: once more, on its new socket
            self.connected = True
            self._send(entry)

    def _send(self, entry: bytes) -> None:
        try:
            self.sock.send(entry)
        except OSError as e:
            if e.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self.send_by_memfd(entry)

    def send_by_memfd(self, entry: bytes) -> None:
        fd = os.memfd_create("relayq-journal-entry", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(entry)
            while view:
                view = view[os.write(fd, view):]
            # sealed whole, as the doc asks: journald then maps it knowing nobody can change it
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            self.sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))])
        finally:
            os.close(fd)

    def close(self) -> None:
        self.sock.close()


def decode(payload: bytes) -> list[tuple[str, bytes]]:
    """An encoded entry back into its fields (for tests and tools reading a datagram);
    ValueError when it is not in the protocol's format."""
    fields: list[tuple[str, bytes]] = []
    at = 0
    while at < len(payload):
        end = payload.find(b"\n", at)
        if end < 0:
            raise ValueError(f"field at byte {at} has no newline")
        line = payload[at:end]
        key, eq, value = line.partition(b"=")
        if eq:
            fields.append((key.decode("ascii"), value))
            at = end + 1
            continue
        (size,) = struct.unpack_from("<Q", payload, end + 1)
        start = end + 9
        if payload[start + size:start + size + 1] != b"\n":
            raise ValueError(f"field {line!r}: value of {size} bytes is not followed by a newline")
        fields.append((line.decode("ascii"), payload[start:start + size]))
        at = start + size + 1
    return fields
