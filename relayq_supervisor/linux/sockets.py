"""TCP sockets from /proc: which socket (inode) is a connection, which processes hold it.

Readers only, in pieces a caller can spread over several loop passes: `connection_inodes`
reads the netns' socket tables once (/proc/net/tcp and tcp6: proc(5)), `process_pids`
lists the processes, `open_fds` and `fd_target` one process' fd links (`socket:[INODE]`,
proc(5) /proc/PID/fd). Every function answers an empty result when a file cannot be read.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys

TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def _proc_hex(packed: bytes) -> str:
    """An address as /proc/net/tcp* prints it: each 32-bit word as the kernel stores it
    (network byte order) printed with %08X as a host-order integer."""
    return "".join(f"{int.from_bytes(packed[i:i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4))


def local_forms(ip: str, port: int) -> frozenset[str]:
    """`local_address` as it reads for ip:port: IPv4 in tcp, and mapped (::ffff:a.b.c.d)
    in tcp6 for a dual-stack socket; an IPv6 address in tcp6."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    forms = {f"{_proc_hex(addr.packed)}:{port:04X}"}
    if isinstance(addr, ipaddress.IPv4Address):
        forms.add(f"{_proc_hex(ipaddress.IPv6Address('::ffff:' + str(addr)).packed)}:{port:04X}")
    return frozenset(forms)


def connection_inodes(ip: str, port: int, remote_port: int, tables: tuple[str, ...] = TABLES) -> set[int]:
    """The inodes of this network namespace's TCP sockets bound to ip:port and connected to
    `remote_port` (a socket in TIME_WAIT has none: nobody holds it)."""
    try:
        forms = local_forms(ip, port)
    except ValueError:
        return set()
    remote = f":{remote_port:04X}"
    found: set[int] = set()
    for table in tables:
        try:
            with open(table, "rb") as f:
                lines = f.read().decode("ascii", "replace").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if len(fields) > 9 and fields[1] in forms and fields[2].endswith(remote) and fields[9] != "0":
                try:
                    found.add(int(fields[9]))
                except ValueError:
                    continue
    return found


def process_pids() -> list[int]:
    """Every process (thread group) /proc lists, in its order."""
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def socket_links(inodes: set[int] | frozenset[int]) -> frozenset[str]:
    return frozenset(f"socket:[{i}]" for i in inodes)


def open_fds(pid: int) -> list[str]:
    """The fd numbers (as /proc names them) `pid` has open; empty when it is gone or not ours."""
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []


def fd_target(pid: int, fd: str) -> str | None:
    """What fd `fd` of `pid` is (`socket:[INODE]`, a path, ...), or None (closed, gone)."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


# sock_diag(7): one TCP socket by its 4-tuple, looked up in the kernel's hash (no table walk)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF              # INET_DIAG_NOCOOKIE: any socket of that 4-tuple
_NLMSG_HDR = struct.Struct("=IHHII")   # len, type, flags, seq, pid
_INODE_AT = _NLMSG_HDR.size + 4 + 48 + 16   # inet_diag_msg: family..retrans, id, expires..uid, then inode
_STATE_AT = _NLMSG_HDR.size + 1             # inet_diag_msg.idiag_state
_TCP_LISTEN = 10                            # include/net/tcp_states.h


class DiagUnavailable(OSError):
    """The kernel answered no sock_diag request (no inet_diag), or not at once."""


def connection_inode(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The inode of this network namespace's TCP socket connected from `local` to `remote`
    (0: it is in TIME_WAIT, nobody holds it), or None when there is none. One netlink
    request (sock_diag(7), an inet_diag_req_v2 without NLM_F_DUMP: the kernel looks the
    socket up by its 4-tuple; an IPv4 tuple also finds a dual-stack socket's mapped one).
    DiagUnavailable when the kernel does not answer it."""
    lip, rip = ipaddress.ip_address(local[0]), ipaddress.ip_address(remote[0])
    if lip.version != rip.version:
        return None
    family = socket.AF_INET if lip.version == 4 else socket.AF_INET6
    sockid = struct.pack("!HH16s16s", local[1], remote[1], lip.packed.ljust(16, b"\0"),
                         rip.packed.ljust(16, b"\0")) + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE)
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    message = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + request
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as s:
            s.sendto(message, (0, 0))
            reply = s.recv(4096, socket.MSG_DONTWAIT)    # queued during the send: never waits
    except OSError as e:
        raise DiagUnavailable(e.errno, f"sock_diag: {e.strerror}") from None
    if len(reply) < _NLMSG_HDR.size:
        raise DiagUnavailable("sock_diag: a short reply")
    kind = _NLMSG_HDR.unpack_from(reply)[1]
    if kind == _NLMSG_ERROR:
        error = -struct.unpack_from("=i", reply, _NLMSG_HDR.size)[0]
        if error == errno.ENOENT:
            return None
        raise DiagUnavailable(error, f"sock_diag: {os.strerror(error)}")
    if kind != _SOCK_DIAG_BY_FAMILY or len(reply) < _INODE_AT + 4:
        raise DiagUnavailable("sock_diag: an unexpected reply")
    if reply[_STATE_AT] == _TCP_LISTEN:
        # the kernel's lookup falls back to a listener on `local` (inet_diag_find_one_icsk ->
        # inet_lookup): a server's port is no connection of that 4-tuple
        return None
    return int(struct.unpack_from("=I", reply, _INODE_AT)[0])
