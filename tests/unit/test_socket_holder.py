"""The answerer's /proc fallback (witness/socket_holder.py, linux/sockets.py): the socket of a
connection this process holds, found and named, and the scan handing the loop back between
its slices instead of holding it for the whole of /proc."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from relayq_supervisor.cluster.whois_answer import LocalResolver, WhoisAnswerer
from relayq_supervisor.config.load import parse_config
from relayq_supervisor.linux.sockets import connection_inode, connection_inodes, local_forms
from relayq_supervisor.witness.socket_holder import ScanStats, find_holder, still_holds


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, str, int, int]]:
    """(a client socket this process holds, its ip, its port, the server's port)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    ip, port = client.getsockname()
    try:
        yield client, ip, port, server.getsockname()[1]
    finally:
        for s in (client, accepted, server):
            s.close()


def test_proc_net_tcp_forms_of_an_address():
    # 127.0.0.1:80 on a little-endian host reads 0100007F:0050; its dual-stack form too
    forms = local_forms("127.0.0.1", 80)
    if sys.byteorder == "little":
        assert "0100007F:0050" in forms
        assert "0000000000000000FFFF00000100007F:0050" in forms
    assert local_forms("::ffff:127.0.0.1", 80) == forms
    assert len(local_forms("fd00::2", 6379)) == 1


def test_the_socket_of_a_connection_and_only_it(connection):
    client, ip, port, server_port = connection
    assert connection_inodes(ip, port, server_port) == {os.fstat(client.fileno()).st_ino}
    assert connection_inodes(ip, port, server_port + 1) == set()        # another server's port
    assert connection_inodes("10.254.254.254", port, server_port) == set()
    assert connection_inodes("not an address", port, server_port) == set()


def test_one_socket_by_its_four_tuple_from_the_kernel(connection):
    client, ip, port, server_port = connection
    inode = os.fstat(client.fileno()).st_ino
    assert connection_inode((ip, port), ("127.0.0.1", server_port)) == inode
    assert connection_inode((ip, port), ("127.0.0.2", server_port)) is None     # another destination
    assert connection_inode((ip, port + 1), ("127.0.0.1", server_port)) is None
    assert connection_inode((ip, port), ("::1", server_port)) is None           # families differ
    # the server's own port is no connection (the kernel's lookup falls back to its listener)
    assert connection_inode(("127.0.0.1", server_port), ("127.0.0.1", server_port)) is None
    assert connection_inode(("127.0.0.1", server_port), (ip, port)) != inode
    # a dual-stack socket connected to a mapped IPv4 address is found by its IPv4 tuple
    with socket.socket(socket.AF_INET6) as mapped:
        mapped.connect(("::ffff:127.0.0.1", server_port))
        assert connection_inode(("127.0.0.1", mapped.getsockname()[1]), ("127.0.0.1", server_port)) == \
            os.fstat(mapped.fileno()).st_ino
    client.close()          # its side lingers in FIN_WAIT: a socket nobody holds (inode 0), or none
    assert not connection_inode((ip, port), ("127.0.0.1", server_port))


def test_the_holder_is_found_and_the_loop_runs_between_slices(connection):
    _, ip, port, server_port = connection

    async def scan() -> tuple[int | None, int, ScanStats]:
        stats, ticks, done = ScanStats(), 0, False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        ticks = 0
        pid = await find_holder(ip, port, server_port, stats=stats, slice_s=0.0)
        done = True
        await task
        return pid, ticks, stats

    pid, ticks, stats = asyncio.run(scan())
    assert pid == os.getpid()
    # every process of /proc was its own slice: the other task ran in between, many times
    assert stats.scans == 1 and stats.slices > 1 and ticks >= stats.slices - 1
    assert asyncio.run(still_holds(os.getpid(), ip, port, server_port))
    assert not asyncio.run(still_holds(os.getpid(), ip, port + 1, server_port))


def test_an_address_no_socket_has_needs_no_scan(connection):
    _, ip, port, server_port = connection
    stats = ScanStats()
    assert asyncio.run(find_holder(ip, port, server_port + 1, stats=stats)) is None
    # the Redis node's addresses known: by sock_diag; a connection to another server is not it
    assert asyncio.run(find_holder(ip, port, server_port, frozenset({"10.254.254.254", "fd00::1"}), stats)) is None
    assert stats.scans == 0
    assert asyncio.run(find_holder(ip, port, server_port, frozenset({"127.0.0.1", "fd00::1"}), stats)) == os.getpid()


def test_the_resolver_names_the_live_holder_when_the_witness_has_no_record(connection):
    _, ip, port, server_port = connection
    resolver = LocalResolver(lambda pid: {"pid": pid, "alive": True}, lambda ip, port, at: None)
    named = {"pid": os.getpid(), "alive": True, "seen_by": "procfs"}
    assert asyncio.run(resolver(ip, port, server_port, None)) == named
    assert asyncio.run(resolver(ip, port, server_port, None, frozenset({"127.0.0.1"}))) == named
    assert asyncio.run(resolver(ip, port, server_port, None, frozenset({"10.254.254.254"}))) is None
    assert resolver.scans.scans == 2
    # a holder that is gone by the time it is named is not blamed
    gone = LocalResolver(lambda pid: {"pid": pid, "alive": False}, None)
    assert asyncio.run(gone(ip, port, server_port, None)) is None


def test_a_question_is_answered_from_a_task_of_its_own():
    """question() returns at once, whatever the look costs; the answer goes when it is done
    (here to a Redis that refuses: said in the log, nothing raised)."""
    config = parse_config(b"[cluster]\nnode = 'n2'\nredis_url = 'redis://127.0.0.1:1/0'\n"
                          b"[[program]]\nname = 'w'\ncommand = ['true']\n", "/etc/relayq/config.toml")
    asked: list[tuple[str, int]] = []

    async def scenario() -> tuple[int, bool]:
        release = asyncio.Event()

        async def resolve(ip: str, port: int, redis_port: int, at: float | None,
                          redis_ips: frozenset[str]) -> dict[str, Any] | None:
            asked.append((ip, port))
            await release.wait()
            return None

        answerer = WhoisAnswerer(config, resolve)
        answerer.question(json.dumps({"id": "q1", "ip": "10.0.0.2", "port": 51234, "redis_port": 6379,
                                      "asker": "n1", "at": None}).encode())
        in_flight = len(answerer.answers)
        await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(asyncio.gather(*answerer.answers), 10)
        return in_flight, not answerer.answers

    in_flight, done = asyncio.run(scenario())
    assert (in_flight, asked, done) == (1, [("10.0.0.2", 51234)], True)
