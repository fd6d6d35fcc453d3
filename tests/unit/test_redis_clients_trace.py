"""Redis clients from sock:inet_sock_set_state: parsing lines recorded on a 6.18 kernel
(redis-cli against a redis-server on port 16399), the per-thread SYN_SENT -> ESTABLISHED
pairing, the bounded map, and the denial path's use of it (prompt read, folded entries)."""
# ruff: noqa: E501 -- the recorded trace lines are kept whole, as the kernel printed them
from __future__ import annotations

import os
from types import SimpleNamespace

from relayq_supervisor.witness.clients import ClientConnections, client_key
from relayq_supervisor.witness.history import ProcessHistory
from relayq_supervisor.witness.trace_lines import parse_line, parse_sock
from relayq_supervisor.witness.tracefs import KernelWitness

# Recorded with `record-tgid` in an instance filtered on `sport == 16399 || dport == 16399`
# (the witness filters on dport only: the lines with sport=16399 are Redis' own socket).
REDIS_CLI_SESSION = """\
       redis-cli-2801    (   2801) [001] .....  4717.912675: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=0 dport=16399 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 oldstate=TCP_CLOSE newstate=TCP_SYN_SENT
       redis-cli-2801    (   2801) [001] .....  4717.912707: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=52744 dport=16399 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 oldstate=TCP_SYN_SENT newstate=TCP_ESTABLISHED
       redis-cli-2801    (   2801) [001] ..s2.  4717.912711: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=16399 dport=52744 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 oldstate=TCP_LISTEN newstate=TCP_SYN_RECV
       redis-cli-2801    (   2801) [001] .....  4717.913570: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=52744 dport=16399 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 oldstate=TCP_ESTABLISHED newstate=TCP_FIN_WAIT1
    redis-server-2789    (   2789) [001] ..s2.  4717.913610: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=52744 dport=16399 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 oldstate=TCP_FIN_WAIT1 newstate=TCP_FIN_WAIT2
    redis-server-2789    (   2789) [001] ..s2.  4717.913613: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=52744 dport=16399 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 daddrv6=::ffff:127.0.0.1 oldstate=TCP_FIN_WAIT2 newstate=TCP_CLOSE
"""
REFUSED = ("       redis-cli-2791    (   2791) [000] .....  4717.798247: inet_sock_set_state: family=AF_INET "
           "protocol=IPPROTO_TCP sport=0 dport=16399 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 "
           "daddrv6=::ffff:127.0.0.1 oldstate=TCP_CLOSE newstate=TCP_SYN_SENT\n"
           "       redis-cli-2791    (   2791) [000] .....  4717.798276: inet_sock_set_state: family=AF_INET "
           "protocol=IPPROTO_TCP sport=52704 dport=16399 saddr=127.0.0.1 daddr=127.0.0.1 saddrv6=::ffff:127.0.0.1 "
           "daddrv6=::ffff:127.0.0.1 oldstate=TCP_SYN_SENT newstate=TCP_CLOSE\n")


def sock_lines(text):
    return [parse_sock(parse_line(line)) for line in text.splitlines()]


def test_parse_recorded_lines():
    syn, est, server, fin, *_ = sock_lines(REDIS_CLI_SESSION)
    assert (syn.pid, syn.task, syn.sport, syn.dport, syn.oldstate, syn.newstate, syn.softirq) == \
        (2801, "redis-cli", 0, 16399, "TCP_CLOSE", "TCP_SYN_SENT", False)     # the port is not chosen yet
    assert (est.sport, est.saddr, est.newstate, est.softirq) == (52744, "127.0.0.1", "TCP_ESTABLISHED", False)
    assert (server.sport, server.dport, server.softirq) == (16399, 52744, True)
    assert (fin.oldstate, fin.newstate) == ("TCP_ESTABLISHED", "TCP_FIN_WAIT1")


def test_parse_ipv6_and_not_tcp():
    line = ("  redis-cli-9 (  9) [000] .....  1.000001: inet_sock_set_state: family=AF_INET6 protocol=IPPROTO_TCP "
            "sport=40000 dport=6379 saddr=0.0.0.0 daddr=0.0.0.0 saddrv6=::1 daddrv6=::1 "
            "oldstate=TCP_SYN_SENT newstate=TCP_ESTABLISHED")
    st = parse_sock(parse_line(line))
    assert (st.saddr, st.sport) == ("::1", 40000)
    assert parse_sock(parse_line(line.replace("IPPROTO_TCP", "IPPROTO_SCTP"))) is None
    assert parse_sock(parse_line(line.replace("oldstate=", "old="))) is None


def test_client_keys_match_redis_addr_forms():
    assert client_key("127.0.0.1:47264") == ("127.0.0.1", 47264)
    assert client_key("[::1]:47264") == client_key("::1:47264") == ("::1", 47264)
    assert client_key("::ffff:127.0.0.1:47264") == ("127.0.0.1", 47264)
    assert client_key("/tmp/redis.sock:0") is None and client_key("") is None


def feed(clients, history, text):
    return [clients.seen(st, history) for st in sock_lines(text) if st.dport == 16399]


def test_connect_pairs_by_thread_and_close_is_reported_once():
    history, clients = ProcessHistory(), ClientConnections()
    history.forked(4717.90, 2790, 2801, "sh", "sh")
    history.execed(4717.91, 2801, "/usr/bin/redis-cli", None)
    closes = [c for c in feed(clients, history, REDIS_CLI_SESSION) if c is not None]
    r = clients.get("127.0.0.1:52744")
    assert (r.pid, r.task, r.connected, r.closed) == (2801, "redis-cli", 4717.912675, 4717.913570)
    assert r.process is history.get(2801) and r.process.filename == "/usr/bin/redis-cli"
    assert closes == [r] and clients.closed_between(4717.9, 4718.0) == [r]


def test_a_refused_connect_records_nothing():
    clients = ClientConnections()
    feed(clients, ProcessHistory(), REFUSED)
    assert len(clients) == 0 and not clients.connecting


def test_established_in_another_threads_context_is_not_guessed():
    """A remote client's SYN-ACK is handled in whatever task it interrupted: never blamed."""
    clients = ClientConnections()
    lines = REDIS_CLI_SESSION.splitlines()
    est_elsewhere = lines[1].replace("redis-cli-2801    (   2801)", "    kworker-77    (     77)")
    feed(clients, ProcessHistory(), est_elsewhere)
    assert len(clients) == 0 and clients.unclaimed == 1
    # in a softirq the task printed is whoever was interrupted, even one with a connect pending
    syn, est, *_ = lines
    feed(clients, ProcessHistory(), syn + "\n" + est.replace("[001] .....", "[001] ..s2."))
    assert len(clients) == 0 and clients.unclaimed == 2


def test_bounded_by_count_and_by_age_after_close():
    history, clients = ProcessHistory(), ClientConnections(max_clients=3, max_age=10.0)
    syn, est, _, fin, *_ = REDIS_CLI_SESSION.splitlines()
    for i in range(5):
        port = 50000 + i
        feed(clients, history, "\n".join(line.replace("52744", str(port)).replace("4717.", f"{4717 + i}.")
                                         for line in (syn, est, fin)))
    assert [k[1] for k in clients.by_addr] == [50002, 50003, 50004]
    clients.prune(4721.92 + 11.0)       # 10 s after the last close: all gone
    assert len(clients) == 0


def test_a_reused_client_port_names_the_newer_connection():
    history, clients = ProcessHistory(), ClientConnections()
    feed(clients, history, REDIS_CLI_SESSION)
    feed(clients, history, REDIS_CLI_SESSION.replace("2801", "2900").replace("4717.", "4800."))
    assert clients.get("127.0.0.1:52744").pid == 2900


def test_witness_names_a_gone_client_from_the_trace_and_prompts_a_read():
    w = KernelWitness(lambda s: None)
    w.client_port = 16399
    prompts = []
    w.on_client_closed = lambda: prompts.append(1)
    gone_pid = 4_200_000            # above PID_MAX_LIMIT: never alive
    w.handle(f"   sh-4199990 (4199990) [001] .....  4717.900000: sched_process_fork: comm=sh pid=4199990 "
             f"child_comm=sh child_pid={gone_pid}")
    w.handle(f"   sh-{gone_pid} ({gone_pid}) [001] .....  4717.910000: sched_process_exec: "
             f"filename=/usr/bin/redis-cli pid={gone_pid} old_pid={gone_pid}")
    w.feed(REDIS_CLI_SESSION.replace("2801", str(gone_pid)).encode())
    assert prompts == [1]
    who = w.client_of("127.0.0.1:52744")
    assert (who["pid"], who["comm"], who["exe"], who["alive"], who["seen_by"]) == \
        (gone_pid, "redis-cli", "/usr/bin/redis-cli", False, "tracefs")
    assert who["ancestry"][0]["pid"] == 4199990 and who["connection"]["addr"] == "127.0.0.1:52744"
    assert w.client_of("127.0.0.1:1") is None


def test_the_supervisors_own_connection_closing_prompts_nothing():
    w = KernelWitness(lambda s: None)
    w.client_port = 16399
    prompts = []
    w.on_client_closed = lambda: prompts.append(1)
    w.feed(REDIS_CLI_SESSION.replace("2801", str(os.getpid())).encode())
    assert prompts == [] and w.clients.get("127.0.0.1:52744").pid == os.getpid()


# --- the health check's use of it ------------------------------------------------------------

class Timers:
    def __init__(self):
        self.pending = []

    def __call__(self, delay, callback, *args):
        timer = SimpleNamespace(delay=delay, callback=callback, cancel=lambda: None)
        self.pending.append(timer)
        return timer


class Clients:
    """A ClientWitness fake: closed clients at given wall-clock times."""

    def __init__(self, closed):
        self.closed = closed
        self.callback = None

    def client_of(self, addr, at=None):
        return next((dict(c) for c in self.closed if c["connection"]["addr"] == addr), None)

    def clients_closed_between(self, start, end):
        return [dict(c) for c in self.closed if start <= c["connection"]["closed"] <= end]

    def on_client_closed(self, callback):
        self.callback = callback


def health(clients, timers=None):
    from relayq_supervisor.kinds.redis.health import RedisHealth
    ctx = SimpleNamespace(clients=clients, call_later=timers or Timers(),
                          supervisor=SimpleNamespace(health_interval=3600))
    kind = SimpleNamespace(redis=SimpleNamespace(port=16399))
    h = RedisHealth(kind, ctx, running=lambda: None)
    h.task = SimpleNamespace(cancel=lambda: None)       # as if started
    return h


def client(pid, port, closed):
    return {"pid": pid, "comm": "redis-cli", "seen_by": "tracefs", "alive": False,
            "connection": {"addr": f"127.0.0.1:{port}", "closed": closed}}


def test_closes_in_a_burst_prompt_one_read():
    timers = Timers()
    h = health(Clients([]), timers)
    for _ in range(5):
        h.client_closed()
    assert [t.delay for t in timers.pending] == [0.075]
    timers.pending[0].callback()            # Redis not RUNNING: nothing read, ready for the next burst
    h.client_closed()
    assert len(timers.pending) == 2


def test_folded_entry_names_every_client_that_closed_in_its_window():
    import time

    from relayq_supervisor.kinds.redis.acl import Denial
    now = time.time()
    clients = Clients([client(101, 40001, now - 3.0),          # before the previous read: not this entry's
                       client(102, 40002, now - 0.30), client(103, 40003, now - 0.20),
                       client(104, 40004, now - 0.10)])
    h = health(clients)
    d = Denial(command="shutdown", reason="command", context="toplevel", user="default",
               client_addr="127.0.0.1:40004", client_laddr=None, client_name=None, count_new=3,
               count_total=3, age_s=0.1, client_info={})
    last = clients.client_of("127.0.0.1:40004")
    folded = h.folded_clients(d, last, since=now - 1.0)
    assert [c["pid"] for c in folded["clients"]] == [102, 103, 104]      # the recorded one last
    assert folded["exact"] and "kept only the last" in folded["note"]
    assert h.folded_clients(d, last, since=None) is None               # no window: nothing guessed
    # a client that closed just before the previous read was sent is not blamed again
    assert [c["pid"] for c in h.folded_clients(d, last, since=now - 0.25)["clients"]] == [103, 104]
    # more closes than attempts: named as candidates, not as the attempters
    wide = h.folded_clients(d, last, since=now - 5.0)
    assert [c["pid"] for c in wide["clients"]] == [101, 102, 103, 104] and not wide["exact"]
    assert "3 attempts among these 4 clients" in wide["note"]


def test_the_denied_client_is_looked_up_by_where_it_connected():
    from relayq_supervisor.kinds.redis.acl import Denial
    h = health(Clients([]))

    def denial(laddr):
        return Denial(command="shutdown", reason="command", context="toplevel", user="default",
                      client_addr="127.0.0.1:40004", client_laddr=laddr, client_name=None, count_new=1,
                      count_total=1, age_s=0.1, client_info={})

    h.kind.redis.bind = ("127.0.0.1", "-::1")
    assert h.redis_ips(denial("[::ffff:127.0.0.2]:16399")) == {"127.0.0.2"}     # Redis 7's laddr
    assert h.redis_ips(denial(None)) == {"127.0.0.1", "::1"}                      # else what it binds
    h.kind.redis.bind = ("0.0.0.0",)
    assert h.redis_ips(denial(None)) == frozenset()     # a wildcard: the socket tables are read


def test_audit_line_of_a_gone_client_and_a_folded_entry():
    from relayq_supervisor.audit.review import format_event
    sender = {"pid": 104, "comm": "redis-cli", "exe": "/usr/bin/redis-cli", "alive": False, "seen_by": "tracefs",
              "note": "exited before it could be inspected; named from the kernel trace",
              "ancestry": [{"pid": 90, "comm": "sh", "cmdline": [], "exe": "/usr/bin/dash", "alive": False},
                           {"pid": 1, "comm": "systemd", "cmdline": ["/sbin/init"], "alive": True}]}
    event = {"ts": "2026-11-25T23:22:00.000Z", "event": "redis_denied", "program": "redis", "command": "shutdown",
             "user": "default", "client_addr": "127.0.0.1:40004", "count": 3, "sender": sender,
             "folded": {"clients": [{"pid": 102}, {"pid": 103}, {"pid": 104}]}}
    line = format_event(event)
    assert "from 127.0.0.1:40004 (pid 104 redis-cli" in line
    assert "<- pid 90 /usr/bin/dash <- pid 1 /sbin/init)" in line
    assert line.endswith("x3: pids 102, 103, 104; Redis recorded the last")


def test_an_earlier_user_of_the_port_never_answers_for_a_later_unnamed_one():
    """The bench found it: under connection churn a redis-cli's ESTABLISHED came in a softirq
    (unclaimed) from a port this process had used before; the old record named us."""
    w = KernelWitness(lambda s: None)
    w.client_port = 16399
    syn, est, _, fin, *_ = REDIS_CLI_SESSION.splitlines()
    w.feed(("\n".join((syn, est, fin)) + "\n").encode())
    assert w.clients.get("127.0.0.1:52744").pid == 2801
    later = est.replace("redis-cli-2801    (   2801) [001] .....", "    python3-3000    (   3000) [001] ..s2.")
    w.feed((later.replace("4717.912707", "4718.000000") + "\n").encode())
    assert w.client_of("127.0.0.1:52744") is None and w.clients.unclaimed == 1


def test_a_connection_not_open_at_the_attempt_does_not_answer():
    from relayq_supervisor.witness.history import _boot_to_epoch
    w = KernelWitness(lambda s: None)
    w.client_port = 16399
    w.feed(REDIS_CLI_SESSION.encode())      # connected 4717.912675, closed 4717.913570 (trace clock)
    at = _boot_to_epoch(4717.913)
    assert w.client_of("127.0.0.1:52744", at=at)["pid"] == 2801
    assert w.client_of("127.0.0.1:52744", at=at + 1.0)["pid"] == 2801     # a late estimate (busy loop)
    assert w.client_of("127.0.0.1:52744", at=at + 5.0) is None         # long after its close
    assert w.client_of("127.0.0.1:52744", at=at - 5.0) is None         # before its connect
