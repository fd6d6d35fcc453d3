"""Who on this node holds a TCP connection's socket now, found without holding the loop.

One path for both askers: the local Redis' health check naming a denied client
(kinds/redis/health.py) and the cross-node answerer when its witness has no record of a
connection (cluster/whois_answer.py). The kernel says whether any socket has that address
at all and which (sock_diag, one lookup per Redis address: most questions end here), then
every process' fd links are read for that socket's inode, SLICE_S of them per loop pass
(the loop runs what is due in between, as the witness's trace reads do). Whole, the scan
costs 5-40 ms on a busy node (BENCHMARKS.md, whois); sliced, no single pass holds the loop
much longer than SLICE_S.
"""
from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from typing import Any

from relayq_supervisor.linux.procfs import proc_start_ticks
from relayq_supervisor.linux.sockets import (
    DiagUnavailable,
    connection_inode,
    connection_inodes,
    fd_target,
    open_fds,
    process_pids,
    socket_links,
)


def canonical_ip(text: str) -> str | None:
    """An address as one spelling: `[fd00::2]` -> `fd00::2`, `::ffff:10.0.0.2` -> `10.0.0.2`
    (an IPv4 client of a dual-stack socket); None when it is no address."""
    try:
        ip = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def split_addr(addr: str) -> tuple[str, int] | None:
    """Redis' `addr=` (`10.0.0.2:51234`, `[fd00::2]:51234`, `fd00::2:51234`) -> (ip, port);
    None for a unix socket's (`/tmp/redis.sock:0`) or anything else."""
    host, sep, port = (addr or "").rpartition(":")
    ip = canonical_ip(host) if sep and port.isdigit() else None
    return (ip, int(port)) if ip is not None else None


SLICE_S = 0.002     # the longest the scan runs before it lets the loop run what is due
FDS_PER_CHECK = 64  # fd links read between two looks at the clock


class ScanStats:
    """What the scans cost the loop (shown by the bench; the slices are the point)."""

    def __init__(self) -> None:
        self.scans = 0          # questions that needed the process scan
        self.slices = 0         # loop passes those took
        self.longest_slice_s = 0.0

    def slice_ended(self, seconds: float) -> None:
        self.slices += 1
        self.longest_slice_s = max(self.longest_slice_s, seconds)


class _Slices:
    """The scan's clock: after slice_s of work, one loop pass for what is due."""

    def __init__(self, stats: ScanStats, slice_s: float):
        self.stats, self.slice_s = stats, slice_s
        self.began = time.monotonic()

    async def tick(self) -> None:
        spent = time.monotonic() - self.began
        if spent >= self.slice_s:
            self.stats.slice_ended(spent)
            await asyncio.sleep(0)
            self.began = time.monotonic()

    def end(self) -> None:
        self.stats.slice_ended(time.monotonic() - self.began)


async def _holds(pid: int, links: frozenset[str], slices: _Slices) -> bool:
    for i, fd in enumerate(open_fds(pid)):
        if fd_target(pid, fd) in links:
            return True
        if i % FDS_PER_CHECK == FDS_PER_CHECK - 1:      # a process with thousands of fds is sliced too
            await slices.tick()
    return False


def socket_inodes(ip: str, port: int, redis_port: int, redis_ips: frozenset[str]) -> set[int]:
    """The inodes of this netns' sockets connected from ip:port to the Redis port: one
    sock_diag lookup per Redis address when the asker named its addresses (microseconds),
    else /proc/net/tcp* (a walk of the kernel's whole connection hash: milliseconds even
    when nearly empty). A socket in TIME_WAIT (inode 0) is nobody's."""
    if redis_ips:
        try:
            found = set()
            for redis_ip in sorted(redis_ips):
                try:
                    found.add(connection_inode((ip, port), (redis_ip, redis_port)))
                except ValueError:
                    continue        # not an address
            return {i for i in found if i}
        except DiagUnavailable:
            pass
    return connection_inodes(ip, port, redis_port)


def _start_order(pid: int) -> tuple[float, int]:
    ticks = proc_start_ticks(pid)
    return (float(ticks) if ticks is not None else float("inf")), pid


async def find_holder(ip: str, port: int, redis_port: int, redis_ips: frozenset[str] = frozenset(),
                      stats: ScanStats | None = None, slice_s: float = SLICE_S) -> int | None:
    """The local pid holding the socket ip:port -> `redis_port` (at one of `redis_ips` when
    given), or None (no such socket in this network namespace, or nobody we may inspect holds it). A socket inherited across
    fork() is held by several processes; which of them wrote the command is unknowable, so
    the oldest holder (the forking parent) is named."""
    inodes = socket_inodes(ip, port, redis_port, redis_ips)
    if not inodes:
        return None
    links = socket_links(inodes)
    stats = stats if stats is not None else ScanStats()
    stats.scans += 1
    slices = _Slices(stats, slice_s)
    held: list[int] = []
    for pid in process_pids():
        if await _holds(pid, links, slices):
            held.append(pid)
        await slices.tick()
    slices.end()
    return min(held, key=_start_order) if held else None


async def still_holds(pid: int, ip: str, port: int, redis_port: int, redis_ips: frozenset[str] = frozenset(),
                      stats: ScanStats | None = None, slice_s: float = SLICE_S) -> bool:
    """Does `pid` hold the socket ip:port -> `redis_port` now? (One process' fds, sliced as
    well.) Call it after pinning the pid (ProcessIdentity.capture) to rule out a pid reused
    in between."""
    inodes = socket_inodes(ip, port, redis_port, redis_ips)
    if not inodes:
        return False
    slices = _Slices(stats if stats is not None else ScanStats(), slice_s)
    found = await _holds(pid, socket_links(inodes), slices)
    slices.end()
    return found


async def live_holder(ip: str, port: int, redis_port: int, redis_ips: frozenset[str],
                      name_process: Callable[[int], dict[str, Any] | None],
                      stats: ScanStats | None = None, slice_s: float = SLICE_S) -> dict[str, Any] | None:
    """The pinned identity (`seen_by: procfs`) of the process holding ip:port -> `redis_port`
    now, or None. The socket is checked again after the capture, so a pid reused in
    between is not blamed."""
    pid = await find_holder(ip, port, redis_port, redis_ips, stats, slice_s)
    if pid is None:
        return None
    identity = name_process(pid)
    if identity is not None and identity.get("alive") and \
            await still_holds(pid, ip, port, redis_port, redis_ips, stats, slice_s):
        return dict(identity, seen_by="procfs")
    return None
