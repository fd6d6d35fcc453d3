"""This node's own connections to a remote Redis (the cluster's), from the kernel witness's
`sock:inet_sock_set_state` lines: source address and port -> the process that held them,
so that the Redis node, which sees only `addr=10.254.0.2:51234` in its ACL LOG, can ask
this node who that was (`who_held`), even after the process exited.

What the kernel gives, client side (seen on 6.x, loopback, veth and real NICs alike):
- CLOSE -> SYN_SENT in connect(), in the connecting thread's context: pid, comm, source and
  destination address; `sport=0` (tcp_v4_connect sets the state before it hashes the port);
- SYN_SENT -> ESTABLISHED with the port: in the connecting thread's context when the SYN-ACK
  was processed from the socket's backlog on release (loopback, veth), in a softirq
  (any task's context) when it arrived while connect() slept;
- ESTABLISHED -> FIN_WAIT1 (or CLOSE_WAIT -> LAST_ACK) when the process closes it, in its
  context, even for a process killed by SIGKILL (do_exit closes its files).
The print format has no socket address to join them: a SYN_SENT is claimed by the same
thread's ESTABLISHED, or, from a softirq, only when it is the one pending connect from that
source address to that destination; a close in task context names its closer by the exact
address pair. Anything ambiguous stays unnamed: blaming the wrong process is worse.

Network namespaces. The tracepoint is global: a witness sees every namespace's sockets, and
two namespaces on one kernel (containers, the tests' two "hosts") must not answer for each
other. The event carries no namespace (the socket's `sk_net` is not a field), so `NetnsGate`
judges the process in whose context a connect or close ran: its /proc/PID/ns/net read when
the line is handled; if it already exited, its source address (one of this namespace's
addresses, loopback excepted); for loopback, its nearest live ancestor in the history
(a namespace is inherited across fork). Limits: a process that exited before its line was
read, in a namespace that shares an address with ours, or that changed namespace itself,
can be misjudged; softirq lines are never judged by the task they interrupted.
"""
from __future__ import annotations

import ipaddress
import os
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from relayq_supervisor.witness.clients import _ip_key, forget_closed
from relayq_supervisor.witness.history import PRUNE_EVERY_S, ProcessHistory, ProcessRecord, _live_match
from relayq_supervisor.witness.trace_lines import SockState

ADDRESSES_TTL_S = 10.0
MAX_PENDING = 1024
MAX_ANCESTORS_FOR_NETNS = 16
# ESTABLISHED, CLOSE_WAIT: the states a client's own close() leaves (tcp_states.h)
CLOSED_BY_CLIENT = {"TCP_ESTABLISHED", "TCP_CLOSE_WAIT"}


def netns_of(pid: int | str) -> tuple[int, int] | None:
    """The network namespace of a process or thread (`self`, a pid): (dev, inode), None if gone."""
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def local_addresses() -> set[str]:
    """Every address of this network namespace's interfaces (IPv4 and IPv6, canonical text,
    no zone), from the kernel's netlink view as psutil reads it."""
    import psutil
    out: set[str] = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            try:
                out.add(str(ipaddress.ip_address(a.address.split("%")[0])))
            except ValueError:
                continue            # a link-layer address
    return out


class NetnsGate:
    """Is this socket event from our network namespace? See the module's docstring."""

    def __init__(self, addresses: set[str] | None = None) -> None:
        """`addresses`: fixed (tests); else this namespace's, re-read every ADDRESSES_TTL_S."""
        self.own = netns_of("self")
        self.fixed = addresses is not None
        self._addresses: set[str] = addresses or set()
        self._addresses_at = -ADDRESSES_TTL_S
        self.foreign = 0            # events judged to be another namespace's

    def addresses(self) -> set[str]:
        now = time.monotonic()
        if not self.fixed and now - self._addresses_at >= ADDRESSES_TTL_S:
            self._addresses, self._addresses_at = local_addresses(), now
        return self._addresses

    def ours(self, st: SockState, history: ProcessHistory) -> bool:
        verdict = self._judge(st, history)
        if not verdict:
            self.foreign += 1
        return verdict

    def _judge(self, st: SockState, history: ProcessHistory) -> bool:
        if self.own is None:
            return True             # no ns files: nothing to tell apart
        ns = netns_of(st.tid) or netns_of(st.pid)
        if ns is not None and _live_match(st.pid, history.get(st.pid), st.ts):
            return ns == self.own
        key = _ip_key(st.saddr, 0)
        if key is not None and not ipaddress.ip_address(key[0]).is_loopback:
            return key[0] in self.addresses()
        return self._ancestor_netns(st.pid, history) == self.own

    def _ancestor_netns(self, pid: int, history: ProcessHistory) -> tuple[int, int] | None:
        r = history.get(pid)
        for _ in range(MAX_ANCESTORS_FOR_NETNS):
            if r is None or r.ppid is None:
                return None
            parent = history.get(r.ppid)
            if _live_match(r.ppid, parent, r.start if r.start is not None else 0.0):
                return netns_of(r.ppid)
            r = parent
        return None


@dataclass(slots=True)
class ConnectionRecord:
    """One connection from this node to a watched destination, by the process that held it."""
    ip: str                         # source address and port, canonical (client_key)
    port: int
    dest: tuple[str, int]
    pid: int
    task: str
    process: ProcessRecord | None   # the history's record of pid when it connected (or closed)
    connected: float | None         # trace clock; None: opened before we saw it
    closed: float | None = None
    joined: str = "thread"          # how the connect was tied to the port: thread, unique, close

    def held_at(self, ts: float, early_slack: float, late_slack: float) -> bool:
        if self.connected is not None and self.connected > ts + early_slack:
            return False
        return self.closed is None or self.closed >= ts - late_slack


@dataclass(slots=True)
class _Pending:
    ts: float
    pid: int
    task: str
    process: ProcessRecord | None
    source: str                     # the source address (the port is not chosen yet)
    dest: tuple[str, int]


class OwnConnections:
    """(source ip, port) -> the local process that held a connection to one of
    `destinations`, bounded by count and by age after close (like the process history)."""

    def __init__(self, destinations: Iterable[tuple[str, int]], gate: NetnsGate | None = None, *,
                 max_connections: int = 16384, max_age: float = 600.0):
        self.destinations = {k for d in destinations if (k := _ip_key(*d)) is not None}
        self.ports = frozenset(port for _, port in self.destinations)
        self.gate = gate or NetnsGate()
        self.max_connections = max_connections
        self.max_age = max_age
        self.by_addr: OrderedDict[tuple[str, int], ConnectionRecord] = OrderedDict()
        self.pending: OrderedDict[int, _Pending] = OrderedDict()      # by thread id
        self.closed: deque[ConnectionRecord] = deque()
        self.last_prune = 0.0
        self.connects = 0
        self.closes = 0
        self.unclaimed = 0

    def __len__(self) -> int:
        return len(self.by_addr)

    def wants(self, st: SockState) -> bool:
        """A connection to the cluster Redis' port on another host. Any of its addresses, not
        only the configured one: the Redis node has several (IPv4, IPv6), and which one a
        process used is checked when this node is asked (the asker says its addresses)."""
        if st.dport not in self.ports:
            return False
        key = _ip_key(st.daddr, st.dport)
        return key is not None and not ipaddress.ip_address(key[0]).is_loopback

    def seen(self, st: SockState, history: ProcessHistory) -> None:
        """Feed one client-side state change (call it for lines `wants` accepts)."""
        if st.newstate == "TCP_SYN_SENT":
            if st.softirq or not self.gate.ours(st, history):
                return
            self.pending.pop(st.tid, None)
            self.pending[st.tid] = _Pending(st.ts, st.pid, st.task, history.get(st.pid),
                                            _source(st), (_dest(st)))
            while len(self.pending) > MAX_PENDING:      # connects that never completed
                self.pending.popitem(last=False)
        elif st.oldstate == "TCP_SYN_SENT":
            self._established(st)
        elif st.oldstate in CLOSED_BY_CLIENT and st.newstate != "TCP_CLOSE_WAIT" and not st.softirq:
            # (ESTABLISHED -> CLOSE_WAIT is the server's close, even when the FIN is handled in
            # the client's context: the client still holds the socket)
            self._closed_by(st, history)
        self.prune(st.ts)

    def _established(self, st: SockState) -> None:
        if st.softirq:
            # any task's context: claim only the one pending connect that can be this socket
            source, dest = _source(st), _dest(st)
            same = [tid for tid, p in self.pending.items() if p.source == source and p.dest == dest]
            pending, joined = (self.pending.pop(same[0]), "unique") if len(same) == 1 else (None, "")
        else:
            pending, joined = self.pending.pop(st.tid, None), "thread"
        if st.newstate != "TCP_ESTABLISHED":
            return                  # refused, timed out
        key = _ip_key(st.saddr, st.sport)
        if key is None:
            return
        if pending is None:
            # a new connection from this address by a process we cannot name: an older
            # record of the address must not answer for it
            self.by_addr.pop(key, None)
            self.unclaimed += 1
            return
        self._add(ConnectionRecord(ip=key[0], port=key[1], dest=pending.dest, pid=pending.pid, task=pending.task,
                                   process=pending.process, connected=pending.ts, joined=joined))

    def _closed_by(self, st: SockState, history: ProcessHistory) -> None:
        key = _ip_key(st.saddr, st.sport)
        if key is None:
            return
        r = self.by_addr.get(key)
        if r is None:
            # its connect was not tied to the port (or came before we looked): the closer,
            # in its own context, holds this address pair now
            if not self.gate.ours(st, history):
                return
            # its connect, if it is the one this process left pending to there
            source, dest = _source(st), _dest(st)
            same = [tid for tid, p in self.pending.items()
                    if p.pid == st.pid and p.source == source and p.dest == dest]
            pending = self.pending.pop(same[0]) if len(same) == 1 else None
            r = ConnectionRecord(ip=key[0], port=key[1], dest=dest, pid=st.pid, task=st.task,
                                 process=pending.process if pending else history.get(st.pid),
                                 connected=pending.ts if pending else None, joined="close")
            self._add(r)
        if r.closed is None:
            r.closed = st.ts
            self.closed.append(r)
            self.closes += 1

    def _add(self, r: ConnectionRecord) -> None:
        key = (r.ip, r.port)
        self.by_addr.pop(key, None)             # a port reused: the old record is history
        self.by_addr[key] = r
        self.connects += 1
        while len(self.by_addr) > self.max_connections:
            self.by_addr.popitem(last=False)

    def prune(self, now: float) -> None:
        if now - self.last_prune < PRUNE_EVERY_S:
            return
        self.last_prune = now
        forget_closed(self.closed, self.by_addr, now - self.max_age)

    def get(self, ip: str, port: int) -> ConnectionRecord | None:
        key = _ip_key(ip.strip("[]"), port)
        return self.by_addr.get(key) if key else None


def _source(st: SockState) -> str:
    key = _ip_key(st.saddr, 0)
    return key[0] if key else st.saddr


def _dest(st: SockState) -> tuple[str, int]:
    return _ip_key(st.daddr, st.dport) or (st.daddr, st.dport)
