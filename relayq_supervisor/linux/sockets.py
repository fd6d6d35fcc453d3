"""TCP sockets from /proc: which socket (inode) is a connection, which processes hold it.

Readers only, in pieces a caller can spread over several loop passes: `connection_inodes`
reads the netns' socket tables once (/proc/net/tcp and tcp6: proc(5)), `process_pids`
lists the processes, `open_fds` and `fd_target` one process' fd links (`socket:[INODE]`,
proc(5) /proc/PID/fd). Every function answers an empty result when a file cannot be read.
"""
from __future__ import annotations

import ipaddress
import os
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
