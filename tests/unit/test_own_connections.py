"""This node's own connections to a remote Redis (witness/connections.py), from
sock:inet_sock_set_state lines recorded on a 6.18 kernel between two network namespaces
(veth; a python client in 10.254.0.2 to 10.254.0.1:6398), pids moved out of range so that
no live process matches; the network-namespace gate; `who_held`'s time window."""
# ruff: noqa: E501 -- the recorded trace lines are kept whole, as the kernel printed them
from __future__ import annotations

import dataclasses
import os
import time

from relayq_supervisor.witness.clients import client_filter_expression
from relayq_supervisor.witness.connections import NetnsGate, OwnConnections, netns_of
from relayq_supervisor.witness.history import ProcessHistory
from relayq_supervisor.witness.trace_lines import parse_line, parse_sock
from relayq_supervisor.witness.tracefs import KernelWitness

GONE = 4_200_001        # above PID_MAX_LIMIT: no process has it
REMOTE = ("10.254.0.1", 6398)

# connect, ESTABLISHED in the thread's context (veth: the SYN-ACK waited in the socket's
# backlog), the client's close; then the softirq half-close lines the filter drops
SESSION = f"""\
         python3-{GONE}   ({GONE}) [001] ..... 10857.266182: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=0 dport=6398 saddr=10.254.0.2 daddr=10.254.0.1 saddrv6=::ffff:10.254.0.2 daddrv6=::ffff:10.254.0.1 oldstate=TCP_CLOSE newstate=TCP_SYN_SENT
         python3-{GONE}   ({GONE}) [001] ..... 10857.266285: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=56626 dport=6398 saddr=10.254.0.2 daddr=10.254.0.1 saddrv6=::ffff:10.254.0.2 daddrv6=::ffff:10.254.0.1 oldstate=TCP_SYN_SENT newstate=TCP_ESTABLISHED
         python3-{GONE}   ({GONE}) [001] ..... 10857.466549: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=56626 dport=6398 saddr=10.254.0.2 daddr=10.254.0.1 saddrv6=::ffff:10.254.0.2 daddrv6=::ffff:10.254.0.1 oldstate=TCP_ESTABLISHED newstate=TCP_FIN_WAIT1
"""
# the same connect with its SYN-ACK handled in a softirq that interrupted another task
SOFTIRQ_ESTABLISHED = f"""\
         python3-{GONE}   ({GONE}) [001] ..... 10857.266182: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=0 dport=6398 saddr=10.254.0.2 daddr=10.254.0.1 saddrv6=::ffff:10.254.0.2 daddrv6=::ffff:10.254.0.1 oldstate=TCP_CLOSE newstate=TCP_SYN_SENT
     ksoftirqd/1-22      (     22) [001] ..s1. 10857.266285: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=56626 dport=6398 saddr=10.254.0.2 daddr=10.254.0.1 saddrv6=::ffff:10.254.0.2 daddrv6=::ffff:10.254.0.1 oldstate=TCP_SYN_SENT newstate=TCP_ESTABLISHED
"""


def lines(text):
    out = [parse_sock(parse_line(line)) for line in text.splitlines()]
    assert all(out)
    return out


def fed(text, *, addresses=frozenset({"10.254.0.2"}), history=None):
    history = history or ProcessHistory()
    own = OwnConnections([REMOTE], NetnsGate(set(addresses)))
    for st in lines(text):
        if own.wants(st):
            own.seen(st, history)
    return own


def test_connect_is_tied_to_its_port_by_the_thread_and_the_close_recorded():
    own = fed(SESSION)
    r = own.get("10.254.0.2", 56626)
    assert (r.pid, r.task, r.dest, r.connected, r.closed, r.joined) == \
        (GONE, "python3", REMOTE, 10857.266182, 10857.466549, "thread")
    assert r.held_at(10857.3, 0.1, 2.0) and not r.held_at(10857.1, 0.1, 2.0) and not r.held_at(10860.0, 0.1, 2.0)


def test_a_softirq_established_claims_only_the_one_pending_connect_from_that_source():
    own = fed(SOFTIRQ_ESTABLISHED)
    r = own.get("10.254.0.2", 56626)
    assert (r.pid, r.joined) == (GONE, "unique")
    # two connects pending from the same address to the same Redis: the port cannot be tied
    syn = SOFTIRQ_ESTABLISHED.splitlines()[0]
    twin = syn.replace(f"python3-{GONE}", f"python3-{GONE + 1}").replace(f"({GONE})", f"({GONE + 1})")
    own = fed("\n".join([syn, twin, SOFTIRQ_ESTABLISHED.splitlines()[1]]))
    assert own.get("10.254.0.2", 56626) is None and own.unclaimed == 1


def test_the_servers_close_is_not_the_clients():
    # Redis closed first; its FIN handled in the client's context: the client still holds it
    fin = SESSION.splitlines()[2].replace("newstate=TCP_FIN_WAIT1", "newstate=TCP_CLOSE_WAIT")
    own = fed("\n".join(SESSION.splitlines()[:2] + [fin]))
    assert own.get("10.254.0.2", 56626).closed is None
    last_ack = fin.replace("oldstate=TCP_ESTABLISHED newstate=TCP_CLOSE_WAIT", "oldstate=TCP_CLOSE_WAIT newstate=TCP_LAST_ACK")
    own = fed("\n".join(SESSION.splitlines()[:2] + [fin, last_ack]))
    assert own.get("10.254.0.2", 56626).closed == 10857.466549


def test_a_close_alone_names_its_closer():
    own = fed(SESSION.splitlines()[2])      # connected before the witness started
    r = own.get("10.254.0.2", 56626)
    assert (r.pid, r.connected, r.closed, r.joined) == (GONE, None, 10857.466549, "close")
    assert r.held_at(10000.0, 0.1, 2.0)     # before its close, as far as we know


def test_another_namespace_is_never_recorded():
    # the process is gone and its source address is not one of ours: another host's
    own = fed(SESSION, addresses={"10.254.0.1"})
    assert len(own) == 0 and own.gate.foreign == 2     # the connect and the unclaimed close
    # another port, or a server on loopback (this host's own), is not the cluster's Redis
    st = lines(SESSION)[0]
    assert OwnConnections([("10.254.0.9", 6398)], NetnsGate(set())).wants(st)     # another address of it
    assert not OwnConnections([("10.254.0.1", 6379)], NetnsGate(set())).wants(st)
    assert not OwnConnections([REMOTE], NetnsGate(set())).wants(dataclasses.replace(st, daddr="127.0.0.1"))


def test_the_gate_reads_a_live_process_namespace_and_a_gone_loopback_clients_ancestor():
    gate = NetnsGate(set())
    assert gate.own == netns_of(os.getpid()) is not None
    me = os.getpid()
    syn = SESSION.splitlines()[0].replace("saddr=10.254.0.2", "saddr=127.0.0.1")
    now = time.clock_gettime(time.CLOCK_BOOTTIME)       # the trace clock: after our start
    live = parse_sock(parse_line(syn.replace(f"python3-{GONE}", f"python3-{me}").replace(f"({GONE})", f"({me})")))
    history = ProcessHistory()
    assert gate.ours(dataclasses.replace(live, ts=now), history)
    # gone, on loopback: its parent (us, alive, started before it) tells
    gone = dataclasses.replace(parse_sock(parse_line(syn)), ts=now)
    assert not gate.ours(gone, history)
    history.forked(now - 0.01, me, GONE, "python3")
    assert gate.ours(gone, history)


def test_the_filter_covers_every_port_and_the_close_after_the_server_closed():
    assert client_filter_expression(6379, 6380, 6379) == \
        "(dport == 6379 || dport == 6380) && (newstate == 2 || oldstate == 2 || oldstate == 1 || oldstate == 8)"
    assert client_filter_expression(6379, server=6379) == \
        "((dport == 6379) && (newstate == 2 || oldstate == 2 || oldstate == 1 || oldstate == 8)) || " \
        "(sport == 6379 && oldstate == 1 && newstate == 8)"


def test_who_held_names_a_gone_process_within_its_connection_life():
    w = KernelWitness(lambda s: None)
    w.connections = fed(SESSION)
    offset = w_epoch_offset()
    who = w.who_held("10.254.0.2", 56626, at=offset + 10857.3)
    assert (who["pid"], who["comm"], who["alive"], who["seen_by"]) == (GONE, "python3", False, "tracefs")
    assert who["connection"]["addr"] == "10.254.0.2:56626" and who["connection"]["to"] == "10.254.0.1:6398"
    assert w.who_held("10.254.0.2", 56626, at=offset + 10900.0) is None        # closed long before
    assert w.who_held("10.254.0.2", 40000) is None


def w_epoch_offset():
    from relayq_supervisor.witness.history import _boot_to_epoch
    return _boot_to_epoch(0.0)


def test_the_witness_records_local_redis_clients_of_its_own_namespace_only():
    """The local-client path (Redis node) passes through the same gate: a client on a
    loopback of another namespace (another container's Redis on the same port) is dropped."""
    syn, est = (line.replace("dport=6398", "dport=16399").replace("saddr=10.254.0.2", "saddr=127.0.0.1")
                .replace("daddr=10.254.0.1", "daddr=127.0.0.1") for line in SESSION.splitlines()[:2])
    now = time.clock_gettime(time.CLOCK_BOOTTIME)
    stamp = f"{now:.6f}"
    syn, est = (line.replace("10857.266182", stamp).replace("10857.266285", stamp) for line in (syn, est))
    for parent, recorded in ((4_200_100, False), (os.getpid(), True)):
        w = KernelWitness(lambda s: None)
        w.client_port = 16399
        w.gate = NetnsGate(set())
        w.history.forked(now - 0.01, parent, GONE, "python3")
        w.handle(syn)
        w.handle(est)
        assert (w.clients.get("127.0.0.1:56626") is not None) == recorded
        assert w.gate.foreign == (0 if recorded else 1)
