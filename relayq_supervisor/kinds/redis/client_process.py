"""Who a Redis client is: the local process holding the TCP socket it connected from."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import psutil


def _split_addr(addr: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """"127.0.0.1:5123" / "[::1]:5123" -> (ip, port); None for a unix socket ("/path:0")."""
    host, sep, port = (addr or "").rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return _unmapped(ip), int(port)


def _unmapped(ip):
    # An IPv4 client of a dual-stack socket shows up as ::ffff:a.b.c.d on one side.
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


def _is_client_socket(conn, want_ip, want_port: int, redis_port: int) -> bool:
    if not conn.laddr or not conn.raddr or conn.laddr.port != want_port or conn.raddr.port != redis_port:
        return False
    try:
        return _unmapped(ipaddress.ip_address(conn.laddr.ip)) == want_ip
    except ValueError:
        return False


@dataclass(frozen=True)
class _HeldConnection:
    """A TCP socket and the pid holding it (per-process psutil results carry no pid)."""

    pid: int
    laddr: Any
    raddr: Any


def _tcp_connections(pid: int | None = None) -> list[_HeldConnection]:
    if pid is not None:
        return [_HeldConnection(pid, c.laddr, c.raddr)
                for c in psutil.Process(pid).net_connections(kind="tcp")]
    try:
        return [_HeldConnection(c.pid, c.laddr, c.raddr)
                for c in psutil.net_connections(kind="tcp") if c.pid]
    except psutil.AccessDenied:
        pass
    # Unprivileged: what the processes we may inspect hold.
    held: list[_HeldConnection] = []
    for proc in psutil.process_iter():
        try:
            held.extend(_HeldConnection(proc.pid, c.laddr, c.raddr)
                        for c in proc.net_connections(kind="tcp"))
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return held


def _start_order(pid: int) -> tuple[float, int]:
    try:
        return psutil.Process(pid).create_time(), pid
    except psutil.Error:
        return float("inf"), pid


def find_client_process(addr: str, redis_port: int) -> int | None:
    """The local pid holding the TCP socket a Redis client connected from (`addr` is the
    client's address as Redis reports it; redis_port the port it connected to), or None
    when no local process holds it (the client exited, is remote, or is hidden)."""
    want = _split_addr(addr)
    if want is None:
        return None
    pids = {c.pid for c in _tcp_connections() if _is_client_socket(c, want[0], want[1], redis_port)}
    # A socket inherited across fork() is held by several processes; which of them
    # wrote the command is unknowable, so the oldest holder (the forking parent) is named.
    return min(pids, key=_start_order) if pids else None


def process_holds_client_socket(pid: int, addr: str, redis_port: int) -> bool:
    """Whether `pid` (still) holds the client socket `addr` -> redis_port. Call it after
    pinning the pid (ProcessIdentity.capture) to rule out a pid reused in between."""
    want = _split_addr(addr)
    if want is None:
        return False
    try:
        conns = _tcp_connections(pid)
    except (psutil.Error, OSError):
        return False
    return any(_is_client_socket(c, want[0], want[1], redis_port) for c in conns)
