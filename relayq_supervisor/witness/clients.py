"""Which process opened each TCP connection to a watched port (Redis'), from the kernel
witness's `sock:inet_sock_set_state` events: an ACL LOG `addr=` names a client even
after it exited. The history is keyed by address and port, so it serves any watched
port: a local Redis' clients, or this node's own connections to a remote one.
"""
from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relayq_supervisor.witness.history import PRUNE_EVERY_S, ProcessHistory, ProcessRecord

if TYPE_CHECKING:
    from relayq_supervisor.witness.trace_lines import SockState


@dataclass(slots=True)
class ClientRecord:
    """One TCP connection to the watched port, by the process that opened it."""
    ip: str
    port: int
    pid: int
    task: str
    process: ProcessRecord | None   # the history's record of pid at connect time
    connected: float                # trace clock
    closed: float | None = None


def client_key(addr: str) -> tuple[str, int] | None:
    """Redis' `addr` (`127.0.0.1:47264`, `[::1]:47264`, `::ffff:127.0.0.1:47264`) or a trace
    address and port, as one key: (the IP's canonical text, IPv4-mapped made plain, port)."""
    host, sep, port = (addr or "").rpartition(":")
    if not sep or not port.isdigit():
        return None
    return _ip_key(host.strip("[]"), int(port))


def _ip_key(host: str, port: int) -> tuple[str, int] | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped        # a dual-stack socket's IPv4 client
    return str(ip), port


class ClientConnections:
    """client (ip, port) -> the process that connected from it, bounded by count and by age
    after close, like the process history.

    The kernel quirk this rests on: the socket's source port is chosen after the
    CLOSE -> SYN_SENT transition (tcp_v4_connect sets the state, then hashes the port), so
    the SYN_SENT line says `sport=0`; the SYN_SENT -> ESTABLISHED line carries the port. The
    print format has no socket address to join the two, but both are in the connecting
    thread's context for a local client: on loopback the SYN-ACK arrives while connect()
    still holds the socket lock, waits in the socket's backlog and is processed in task
    context by the lock's owner when it releases it. So a SYN_SENT is kept per thread and
    claimed by that thread's ESTABLISHED, in task context only: an ESTABLISHED in a softirq
    (a remote client, or a SYN-ACK that came after connect() returned) runs in whatever
    task the packet interrupted, possibly one with a connect of its own pending: not
    claimed, counted, nobody is named. Wrongly naming a process is worse than naming none.
    """

    def __init__(self, max_clients: int = 16384, max_age: float = 600.0):
        self.max_clients = max_clients
        self.max_age = max_age
        self.by_addr: OrderedDict[tuple[str, int], ClientRecord] = OrderedDict()
        self.connecting: OrderedDict[int, tuple[float, int, str, ProcessRecord | None]] = OrderedDict()
        self.closed: deque[ClientRecord] = deque()
        self.last_prune = 0.0
        self.connects = 0
        self.closes = 0
        self.unclaimed = 0          # ESTABLISHED without a SYN_SENT of the same thread

    def __len__(self) -> int:
        return len(self.by_addr)

    def get(self, addr: str) -> ClientRecord | None:
        key = client_key(addr)
        return self.by_addr.get(key) if key else None

    def seen(self, st: SockState, history: ProcessHistory) -> ClientRecord | None:
        """Feed one client-side state change (dport is the watched port). Returns the record
        when this change closed an established connection, else None."""
        if st.newstate == "TCP_SYN_SENT":
            if st.softirq:
                return None
            self.connecting.pop(st.tid, None)
            self.connecting[st.tid] = (st.ts, st.pid, st.task, history.get(st.pid))
            while len(self.connecting) > 1024:      # connects that never completed
                self.connecting.popitem(last=False)
            return None
        if st.oldstate == "TCP_SYN_SENT":
            started = None if st.softirq else self.connecting.pop(st.tid, None)
            if st.newstate != "TCP_ESTABLISHED":
                return None                          # refused, timed out
            key = _ip_key(st.saddr, st.sport)
            if started is None or key is None:
                # a new connection from this address, by a process we cannot name: the
                # record of the address' previous connection must not answer for it
                if key is not None:
                    self.by_addr.pop(key, None)
                self.unclaimed += 1
                return None
            ts, pid, task, process = started
            self.by_addr.pop(key, None)             # a port reused: the old record is history
            self.by_addr[key] = ClientRecord(ip=key[0], port=key[1], pid=pid, task=task, process=process,
                                             connected=ts)
            self.connects += 1
            while len(self.by_addr) > self.max_clients:
                self.by_addr.popitem(last=False)
            self.prune(st.ts)
            return None
        if st.oldstate == "TCP_ESTABLISHED":
            # ESTABLISHED -> FIN_WAIT1 (the client closed), CLOSE_WAIT (Redis did), CLOSE (reset)
            key = _ip_key(st.saddr, st.sport)
            r = self.by_addr.get(key) if key else None
            if r is not None and r.closed is None:
                r.closed = st.ts
                self.closed.append(r)
                self.closes += 1
                return r
        return None

    def prune(self, now: float) -> None:
        if now - self.last_prune < PRUNE_EVERY_S:
            return
        self.last_prune = now
        forget_closed(self.closed, self.by_addr, now - self.max_age)

    def closed_between(self, start: float, end: float) -> list[ClientRecord]:
        """Connections that closed in [start, end] (trace clock), oldest first."""
        return [r for r in self.closed if r.closed is not None and start <= r.closed <= end]


# How far "when the client was seen" (an ACL LOG entry's last update) may stray outside its
# connection's traced life. Before: the clock's and Redis' ms rounding. After the close: Redis
# 7.0 gives only age-seconds, so the estimate is late by however long the reply waited for a
# busy loop; what this check guards against (an earlier connection from a port reused since)
# is also stopped by the new connection's own ESTABLISHED replacing the record.
CLIENT_TIME_SLACK_S = 0.1
CLIENT_LATE_SLACK_S = 2.0
REMOTE_CLOCK_SLACK_S = 1.0      # two nodes' clocks (NTP) may differ this much
CATCH_UP_READS = 128            # ~1 MiB of trace, ~4,000 lines: rare (a denial, a gone sender)


def client_filter_expression(*ports: int, server: int | None = None) -> str:
    """Client side (dport), and only the transitions used: into SYN_SENT (who connects),
    out of SYN_SENT (its port, or its failure), out of ESTABLISHED or CLOSE_WAIT (the close;
    the latter when the server closed first). FIN_WAIT2 and CLOSE would be two more lines per
    connection, and a trace_pipe read gives ~8 KiB. With `server` (our Redis' port): also its
    side of a close the client began (ESTABLISHED -> CLOSE_WAIT), the one line a client on
    another host leaves on this kernel: the prompt to read ACL LOG."""
    wanted = sorted({int(p) for p in ports})
    dports = " || ".join(f"dport == {p}" for p in wanted)
    expr = f"({dports}) && (newstate == 2 || oldstate == 2 || oldstate == 1 || oldstate == 8)"
    if server is not None:
        expr = f"({expr}) || (sport == {int(server)} && oldstate == 1 && newstate == 8)"
    return expr


def forget_closed(closed: deque, by_addr: dict, before: float) -> None:
    """Drop the connection records (oldest first in `closed`) that closed before `before`,
    from `by_addr` too unless a newer record has taken their address since."""
    while closed and closed[0].closed is not None and closed[0].closed < before:
        r = closed.popleft()
        key = (r.ip, r.port)
        if by_addr.get(key) is r:
            del by_addr[key]
