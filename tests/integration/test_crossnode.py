"""Cross-node attribution with real processes on two "hosts": two network namespaces on
one kernel (support.netns), each with its own supervisor and its own kernel witness.

n1 (10.254.0.1) owns Redis; n2 (10.254.0.2) is a worker node whose workers and scripts
reach that Redis over the veth link. A SHUTDOWN from n2 is denied on n1, and n1 names the
process on n2 by asking n2 (cluster/whois.py): n1's witness sees only its own namespace,
as it would on a separate kernel.

Needs root, tracefs and `ip netns`; skipped with the reason elsewhere. One pair of hosts
and supervisors for the module: the scenarios run in order (the last two stop n2).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap

import pytest
from support import PYTHON, REDIS_SERVER, Supervisor, free_port, wait_for
from support.netns import NetnsRefused, create_pair

from relayq_supervisor.cluster.whois import split_addr
from relayq_supervisor.linux import tracefs
from relayq_supervisor.witness.trace_instance import in_initial_pid_namespace

REDIS_CLI = shutil.which("redis-cli", path="/usr/bin") or shutil.which("redis-cli")
NAMED_WITHIN_S = 2.0

# A job-like worker: one long-lived connection; sends SHUTDOWN on it when its trigger file appears.
WORKER = textwrap.dedent("""\
    import os, socket, sys, time, urllib.parse
    url = urllib.parse.urlsplit(os.environ["RELAYQ_REDIS_URL"])
    conn = socket.create_connection((url.hostname, url.port))
    trigger = sys.argv[1]
    while not os.path.exists(trigger):
        time.sleep(0.05)
    conn.sendall(b"*1\\r\\n$8\\r\\nSHUTDOWN\\r\\n")
    print("sent from", conn.getsockname(), conn.recv(200), flush=True)
    time.sleep(100000)
    """)


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, tracefs)"
    if not in_initial_pid_namespace():
        return "tests run in a child pid namespace: tracepoint pids are not ours"
    if tracefs.find_mount() is None:
        return "tracefs is not mounted"
    if REDIS_SERVER is None or REDIS_CLI is None:
        return "no redis-server or redis-cli"
    return None


class Cluster:
    def __init__(self, tmp, hosts):
        self.hosts = hosts
        self.port = free_port()
        self.trigger = tmp / "n2" / "send-shutdown"
        (tmp / "n1").mkdir()
        (tmp / "n2").mkdir()
        self.n1 = Supervisor(tmp / "n1", textwrap.dedent(f"""\
            [supervisor]
            run_dir = "run"
            log_dir = "log"
            health_interval = 0.5

            [redis]
            binary = "{REDIS_SERVER}"
            port = {self.port}
            bind = ["127.0.0.1", "{hosts.a.ipv4}", "{hosts.a.ipv6}"]
            dir = "data"
            # no default password here: protected mode would refuse the other hosts
            args = ["--save", "", "--protected-mode", "no"]

            [cluster]
            node = "n1"
            nodes = ["n2", "n3"]
            heartbeat_interval = 0.5
            """), host=hosts.a)
        self.n2: Supervisor | None = None
        self.worker_script = tmp / "n2" / "worker.py"
        self.worker_script.write_text(WORKER)

    def start(self) -> None:
        self.n1.start()
        self.n1.wait_state("redis", "RUNNING")
        node_pass = self.node_pass("n2")
        wait_for(node_pass.exists, what="n1's node password file")
        copy = self.n1.dir.parent / "n2" / "node.pass"
        shutil.copyfile(node_pass, copy)
        os.chmod(copy, 0o600)
        self.n2 = Supervisor(self.n1.dir.parent / "n2", textwrap.dedent(f"""\
            [supervisor]
            run_dir = "run"
            log_dir = "log"

            [cluster]
            node = "n2"
            redis_url = "redis://{self.hosts.a.ipv4}:{self.port}/0"
            password_file = "{copy}"
            heartbeat_interval = 0.5

            [[program]]
            name = "rqworker"
            command = ["{PYTHON}", "{self.worker_script}", "{self.trigger}"]
            depends_on = ["redis"]
            """), host=self.hosts.b)
        self.n2.start()
        self.n2.wait_state("rqworker", "RUNNING")
        status = self.n2.status()["supervisor"]
        assert status["kernel_trace"] == "watching", status
        # n2's heartbeat (with its addresses) is in the cluster's Redis, and it listens for questions
        wait_for(lambda: "n2" in self.n1.ctl("status", "--cluster").stdout, what="n2 in the cluster view")
        wait_for(lambda: (self.n2.status()["supervisor"]["kernel_trace_stats"] or {}).get("own_connections")
                 is not None, what="n2's witness recording connections to the cluster's Redis")

    def node_pass(self, node: str):
        return self.n1.dir / "run" / f"redis-node-{node}.pass"

    def denials(self, **match) -> list[dict]:
        return [e for e in self.n1.audit_events("redis_denied") if all(e.get(k) == v for k, v in match.items())]

    def cleanup(self) -> None:
        for sup in (self.n2, self.n1):
            if sup is not None:
                if sup.proc is not None and sup.proc.poll() is None:
                    os.kill(sup.pid, signal.SIGCONT)
                sup.cleanup()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    try:
        hosts = create_pair(outsider=True)
    except NetnsRefused as e:
        pytest.skip(str(e))
    c = Cluster(tmp_path_factory.mktemp("crossnode"), hosts)
    try:
        c.start()
        yield c
    finally:
        c.cleanup()
        hosts.remove()


def oneshot_shutdown(cluster, target: str | None = None) -> tuple[int, int]:
    """`sh -c 'redis-cli -h <n1> shutdown'` on n2: (the cli's pid, the sh's pid), both gone."""
    script = f"{REDIS_CLI} -h {target or cluster.hosts.a.ipv4} -p {cluster.port} shutdown >&2 & echo $!; wait $!"
    sh = cluster.hosts.b.popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = sh.communicate(timeout=30)
    assert "NOPERM" in err, err
    return int(out.split()[0]), sh.pid


def test_a_oneshot_script_on_n2_is_named_on_n1_with_its_node_pid_and_lineage(cluster):
    cli, sh = oneshot_shutdown(cluster)
    denied = wait_for(lambda: [e for e in cluster.denials(command="shutdown") if (e.get("sender") or {}).get("pid") == cli],
                      timeout=NAMED_WITHIN_S, what="the denial named with n2's process")[0]
    sender = denied["sender"]
    assert denied["client_addr"].startswith(cluster.hosts.b.ipv4 + ":")
    assert (sender["node"], sender["comm"], sender["alive"], sender["seen_by"]) == ("n2", "redis-cli", False, "tracefs")
    assert sender["connection"]["addr"] == denied["client_addr"]
    assert sender["ancestry"][0]["pid"] == sh
    # n1's own witness never took n2's process for a local client (it is another kernel's)
    wait_for(lambda: cluster.n1.status()["supervisor"]["kernel_trace_stats"]["other_netns_events"] >= 1,
             what="n1's witness counting n2's connects as another namespace's")
    audit = cluster.n1.ctl("audit", "--program", "redis", check=True).stdout
    assert f"DENIED shutdown by user default from n2 pid {cli} redis-cli" in audit
    assert f"<- pid {sh} " in audit


def test_over_ipv6_the_client_is_named_though_n2_reaches_redis_over_ipv4(cluster):
    # n2 answers from 10.254.0.2: believed for fd00:254::2 because n2 alone holds both
    cli, _ = oneshot_shutdown(cluster, cluster.hosts.a.ipv6)
    denied = wait_for(lambda: [e for e in cluster.denials(command="shutdown") if (e.get("sender") or {}).get("pid") == cli],
                      timeout=NAMED_WITHIN_S, what="the IPv6 client's denial named")[0]
    assert split_addr(denied["client_addr"])[0] == cluster.hosts.b.ipv6     # Redis 7 brackets it, 6.2 does not
    assert (denied["sender"]["node"], denied["sender"]["comm"]) == ("n2", "redis-cli")


def test_a_worker_on_n2_sending_shutdown_on_its_connection_is_named_with_its_instance(cluster):
    worker = cluster.n2.program("rqworker")["pid"]
    cluster.trigger.write_text("")
    denied = wait_for(lambda: [e for e in cluster.denials(command="shutdown")
                               if (e.get("sender") or {}).get("pid") == worker],
                      timeout=NAMED_WITHIN_S + 5, what="the worker's denial")[0]   # + one health_interval
    sender = denied["sender"]
    assert (sender["node"], sender["program"], sender["alive"], sender["seen_by"]) == ("n2", "rqworker", True, "procfs")
    audit = cluster.n1.ctl("audit", "--program", "redis", check=True).stdout
    assert f"DENIED shutdown by user default from n2 rqworker (pid {worker})" in audit


def test_an_address_no_node_claims_is_reported_as_outside_the_cluster(cluster):
    outsider = cluster.hosts.outsider
    probe = outsider.run([PYTHON, "-c", textwrap.dedent(f"""\
        import socket
        s = socket.create_connection(("{cluster.hosts.a.ipv4}", {cluster.port}))
        s.sendall(b"*1\\r\\n$8\\r\\nSHUTDOWN\\r\\n")
        print(s.getsockname()[1], s.recv(200))
        """)], capture_output=True, text=True, check=True)
    addr = f"{outsider.ipv4}:{int(probe.stdout.split()[0])}"
    assert "NOPERM" in probe.stdout
    denied = wait_for(lambda: cluster.denials(client_addr=addr), timeout=NAMED_WITHIN_S + 5,
                      what="the outsider's denial")[0]
    assert denied["sender"] is None
    assert denied["note"] == f"no relayq node holds {addr} (not a cluster member?)"
    audit = cluster.n1.ctl("audit", "--program", "redis", check=True).stdout
    assert f"from {addr} (no relayq node holds {addr} (not a cluster member?))" in audit


FORGER = textwrap.dedent("""\
    import hashlib, json, sys, time
    import redis
    host, port, password = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read().strip()
    def connect():
        return redis.Redis(host=host, port=port, username="relayq-node-n2", password=password)
    sub = connect().pubsub(ignore_subscribe_messages=True)
    sub.subscribe("relayq-cluster:whois:ask:n2")       # n2's questions: n2's user may read them
    print("listening", flush=True)
    for m in sub.listen():
        q = json.loads(m["data"])
        c = connect()
        lie = json.dumps({"id": q["id"], "node": "n2", "found": True, "note": None, "client_id": c.client_id(),
                          "sender": {"pid": 1, "comm": "innocent", "alive": True}}).encode()
        c.client_setname("relayq-whois:n2:%s:%s" % (q["id"], hashlib.sha256(lie).hexdigest()[:16]))
        c.publish("relayq-cluster:whois:answer:" + q["asker"], lie)
        print("forged", flush=True)
        time.sleep(30)
    """)


def test_a_node_cannot_answer_for_another_nodes_address(cluster, procs):
    # a holder of n2's credentials on another host answers n2's questions first, as n2
    forger = cluster.hosts.outsider.popen([PYTHON, "-c", FORGER, cluster.hosts.a.ipv4, str(cluster.port),
                                           str(cluster.node_pass("n2"))],
                                          stdout=subprocess.PIPE, text=True)
    procs.append(forger)
    assert forger.stdout.readline().strip() == "listening"
    cli, _ = oneshot_shutdown(cluster)
    assert forger.stdout.readline().strip() == "forged"
    denied = wait_for(lambda: [e for e in cluster.denials(command="shutdown") if (e.get("sender") or {}).get("pid") == cli],
                      timeout=10, what="the denial named by the real n2")[0]
    assert denied["sender"]["node"] == "n2" and denied["sender"]["comm"] == "redis-cli"
    # the forged answer is rejected whether it came before the real one or after it
    wait_for(lambda: f"node n2 answered from {cluster.hosts.outsider.ipv4}:" in cluster.n1.log(), timeout=10,
             what="the forged answer rejected")
    assert cluster.n1.status()["supervisor"]["whois"]["rejected"] >= 1


IMPOSTOR = textwrap.dedent("""\
    import hashlib, json, sys
    import redis
    host, port, password = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read().strip()
    def as_n2():
        return redis.Redis(host=host, port=port, username="relayq-node-n2", password=password)
    for user in (as_n2(), redis.Redis(host=host, port=port)):     # n2's user, then the workers'
        try:
            user.execute_command("SUBSCRIBE", "relayq-cluster:whois:ask:n3")
            print("subscribed", flush=True)
        except redis.exceptions.NoPermissionError:
            print("refused", flush=True)
    # told n3's questions all the same (here by the admin's password: however it learnt them)
    admin = redis.Redis(host=host, port=port, username="relayq-admin", password=open(sys.argv[4]).read().strip())
    sub = admin.pubsub(ignore_subscribe_messages=True)
    sub.subscribe("relayq-cluster:whois:ask:n3")
    print("listening", flush=True)
    held = []                  # each answering connection stays open for n1's check
    for m in sub.listen():     # every question (its own refused SUBSCRIBE is one too)
        q = json.loads(m["data"])
        c = as_n2()
        held.append(c)
        lie = json.dumps({"id": q["id"], "node": "n3", "found": True, "note": None, "client_id": c.client_id(),
                          "sender": {"pid": 1, "comm": "innocent", "alive": True}}).encode()
        c.client_setname("relayq-whois:n3:%s:%s" % (q["id"], hashlib.sha256(lie).hexdigest()[:16]))
        c.publish("relayq-cluster:whois:answer:" + q["asker"], lie)
        print("forged", flush=True)
    """)


def test_n2s_credentials_cannot_answer_as_n3(cluster, procs):
    # n3 (declared on n1, its user the only one that writes its status) holds the outsider's address;
    # n2's credentials, used from that very address, try to pin an attempt there on n3
    outsider = cluster.hosts.outsider

    def as_n3(*command: str) -> None:
        cluster.hosts.a.run([PYTHON, "-c", textwrap.dedent(f"""\
            import sys, redis
            r = redis.Redis(port={cluster.port}, username="relayq-node-n3", password=open(sys.argv[1]).read().strip())
            r.execute_command(*sys.argv[2:])
            """), str(cluster.node_pass("n3")), *command], check=True)
    as_n3("SET", "relayq-cluster:node:n3", json.dumps({"addresses": [outsider.ipv4]}), "EX", "60")
    impostor = outsider.popen([PYTHON, "-c", IMPOSTOR, cluster.hosts.a.ipv4, str(cluster.port),
                               str(cluster.node_pass("n2")), str(cluster.n1.dir / "run" / "redis-admin.pass")],
                              stdout=subprocess.PIPE, text=True)
    procs.append(impostor)
    try:
        assert impostor.stdout.readline().strip() == "refused"      # n3's questions are not n2's to read
        assert impostor.stdout.readline().strip() == "refused"      # nor the workers' (issue 17)
        assert impostor.stdout.readline().strip() == "listening"
        probe = outsider.run([PYTHON, "-c", textwrap.dedent(f"""\
            import socket
            s = socket.create_connection(("{cluster.hosts.a.ipv4}", {cluster.port}))
            s.sendall(b"*1\\r\\n$8\\r\\nSHUTDOWN\\r\\n")
            print(s.getsockname()[1], s.recv(200))
            """)], capture_output=True, text=True, check=True)
        addr = f"{outsider.ipv4}:{int(probe.stdout.split()[0])}"
        denied = wait_for(lambda: cluster.denials(client_addr=addr), timeout=10, what="the probe's denial")[0]
        assert denied["sender"] is None, denied
        assert denied["note"].startswith("node n3 did not answer within 1 s; rejected: the answer as n3 came "
                                         "from user 'relayq-node-n2', not n3's own relayq-node-n3"), denied["note"]
        # and n2's try at n3's questions is audited on n1, named by its user
        wait_for(lambda: cluster.denials(user="relayq-node-n2", command="relayq-cluster:whois:ask:n3"),
                 what="n2's SUBSCRIBE to n3's questions audited as denied")
    finally:
        as_n3("DEL", "relayq-cluster:node:n3")


def test_an_n2_that_does_not_answer_is_said_so_and_its_late_answer_amends_the_event(cluster):
    n2 = cluster.n2
    os.kill(n2.pid, signal.SIGSTOP)         # down for n1: its subscription stays, its answers do not come
    try:
        cli, _ = oneshot_shutdown(cluster)
        # n1 keeps supervising meanwhile: its control socket answers
        assert cluster.n1.ctl("status").returncode == 0
        denied = wait_for(lambda: [e for e in cluster.denials(command="shutdown") if e.get("note", "").startswith(
            "node n2 did not answer")], timeout=10, what="the denial without an answer")[-1]
        assert denied["sender"] is None and denied["id"]
    finally:
        os.kill(n2.pid, signal.SIGCONT)
    # n2 resumes, answers the question it was sent: the event is amended by `attribution`
    late = wait_for(lambda: [e for e in cluster.n1.audit_events("attribution") if e["denial"] == denied["id"]],
                    timeout=10, what="the late attribution")[0]
    assert (late["sender"]["node"], late["sender"]["pid"]) == ("n2", cli)
    audit = cluster.n1.ctl("audit", "--program", "redis", check=True).stdout
    assert f"(node n2 did not answer within 1 s; answered later: n2 pid {cli} redis-cli" in audit
    # the cluster's timeline too (n1's copy of its events, in the cluster's Redis)
    wait_for(lambda: f"answered later: n2 pid {cli} redis-cli" in cluster.n1.ctl("audit", "--cluster").stdout,
             what="the joined denial in audit --cluster")
    # `why redis` shows the denial amended in place
    why = cluster.n1.ctl("why", "redis", check=True).stdout
    assert f"DENIED shutdown by user default from n2 pid {cli} redis-cli" in why


def test_an_n2_that_is_gone_is_said_so_at_once(cluster):
    assert cluster.n2.terminate() == 0      # its heartbeat (and addresses) stay in the cluster's Redis
    cli, _ = oneshot_shutdown(cluster)
    denied = wait_for(lambda: [e for e in cluster.denials(command="shutdown")
                               if e.get("note") == "node n2 did not answer (not listening)"],
                      timeout=NAMED_WITHIN_S + 5, what="the denial of a client of a node that is gone")[-1]
    assert denied["sender"] is None
