"""[cluster] without processes: its config, the node ACL user, the publisher's bounded
queue, the view's repeat filter and exit status."""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import textwrap
from pathlib import Path

import pytest

from relayq_supervisor.audit.log import AuditLog, make_event
from relayq_supervisor.cluster import link
from relayq_supervisor.cluster.publisher import ClusterPublisher
from relayq_supervisor.cluster.view import entry_event
from relayq_supervisor.config.load import parse_config
from relayq_supervisor.ctl.cluster import exit_status
from relayq_supervisor.errors import ConfigError
from relayq_supervisor.kinds.redis.acl import AdminCredentials, acl_file_text, acl_weaknesses, keys_outside

PATH = "/etc/relayq/config.toml"
WORKER = "[[program]]\nname = 'worker'\ncommand = ['true']\ndepends_on = ['redis']\n"


def parse(text: str):
    return parse_config(textwrap.dedent(text).encode(), PATH)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as failed:
        parse(text)
    return str(failed.value)


def redis_table(tmp_path: Path) -> str:
    binary = tmp_path / "redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return f"[redis]\nbinary = '{binary}'\n"


def test_worker_only_node_depends_on_the_cluster_redis():
    config = parse("[cluster]\nnode = 'n2'\nredis_url = 'redis://redis-node:6379/0'\n" + WORKER)
    assert config.redis is None
    assert config.cluster is not None and config.cluster.node == "n2" and config.cluster.heartbeat_interval == 2.0
    assert config.remote_dependencies == ("redis",)
    assert config.programs[0].depends_on == ("redis",)


def test_without_cluster_redis_stays_an_unknown_dependency():
    assert "depends on unknown program 'redis'" in error(WORKER)


def test_worker_only_node_needs_a_redis_url():
    assert error("[cluster]\nnode = 'n2'\n" + WORKER) == (
        f"{PATH}:1: [cluster] needs redis_url on a node without [redis] (like \"redis://redis-node:6379/0\")")


@pytest.mark.parametrize("url, says", [
    ("http://x:6379", "must start with redis:// or rediss://"),
    ("redis://:6379/0", "names no host"),
    ("redis://x:99999/0", "not a URL"),
    ("redis://x:6379/db", "database 'db' is not a number"),
])
def test_bad_redis_url_is_named_with_its_line(url, says):
    text = error(f"[cluster]\nnode = 'n2'\nredis_url = '{url}'\n" + WORKER)
    assert text.startswith(f"{PATH}:3: redis_url {url!r}: ") and says in text, text


def test_cluster_keys_are_checked(tmp_path):
    assert "unknown key 'node_name'" in error("[cluster]\nnode_name = 'n2'\nredis_url = 'redis://x'\n" + WORKER)
    assert "'heartbeat_interval' must be at least 0.1" in error(
        "[cluster]\nredis_url = 'redis://x'\nheartbeat_interval = 0.01\n" + WORKER)
    assert "node name 'n 2'" in error("[cluster]\nnode = 'n 2'\nredis_url = 'redis://x'\n" + WORKER)
    missing = tmp_path / "nope.pass"
    text = error(f"[cluster]\nredis_url = 'redis://x'\npassword_file = '{missing}'\n" + WORKER)
    assert "cannot read password file" in text and "redis-node-" in text


def test_redis_node_gets_a_user_per_node_and_a_default_url(tmp_path):
    config = parse(redis_table(tmp_path) + "[cluster]\nnode = 'n1'\n")
    assert config.redis is not None and config.redis.redis is not None
    assert config.redis.redis.cluster_nodes == ("n1",)          # the Redis node is always a member
    assert config.remote_dependencies == ()
    assert link.cluster_url(config) == "redis://127.0.0.1:6379/0"
    three = parse(redis_table(tmp_path) + "[cluster]\nnode = 'n1'\nnodes = ['n2', 'n3']\n")
    assert three.redis is not None and three.redis.redis is not None
    assert three.redis.redis.cluster_nodes == ("n1", "n2", "n3")
    plain = parse(redis_table(tmp_path))
    assert plain.redis is not None and plain.redis.redis is not None and plain.redis.redis.cluster_nodes == ()


def test_cluster_nodes_are_checked(tmp_path):
    base = redis_table(tmp_path) + "[cluster]\nnode = 'n1'\n"
    assert error(base + "nodes = ['n2', 'n 3']\n") == (
        f"{PATH}:5: node name 'n 3' may use only letters, digits, '_', '-' and '.' (at most 64)")
    assert error(base + "nodes = ['n2', 'n2']\n") == f"{PATH}:5: node 'n2' is listed twice"
    assert error(base + "nodes = 'n2'\n") == f"{PATH}:5: 'nodes' must be a list, not 'n2'"
    assert error("[cluster]\nnode = 'n2'\nredis_url = 'redis://x'\nnodes = ['n2']\n" + WORKER).startswith(
        f"{PATH}:4: 'nodes' belongs on the Redis node")


def test_connection_uses_the_node_user_with_password_file(tmp_path):
    secret = tmp_path / "redis-node-n2.pass"
    secret.write_text("s3cret\n")
    config = parse(f"[cluster]\nnode = 'n2'\nredis_url = 'redis://:workerpw@h:7000/2'\npassword_file = '{secret}'\n" + WORKER)
    options = link.connection_options(config, 1.0)
    assert (options["host"], options["port"], options["db"]) == ("h", 7000, 2)
    assert (options["username"], options["password"]) == ("relayq-node-n2", "s3cret")
    assert link.display_url(link.cluster_url(config)) == "redis://h:7000/2"


def test_a_reader_logs_in_as_the_view_user_and_the_redis_node_as_its_own_user(tmp_path):
    secret = tmp_path / "redis-node-n2.pass"
    secret.write_text("s3cret\n")
    config = parse(f"[cluster]\nnode = 'n2'\nredis_url = 'redis://h:7000/2'\npassword_file = '{secret}'\n" + WORKER)
    options = link.connection_options(config, 1.0, reader=True)
    assert (options["username"], options["password"]) == ("relayq-view-n2", "s3cret")
    # the Redis node: its own user, its password read from run_dir at each connect (made after the client)
    run = tmp_path / "run"
    node = parse(f"[supervisor]\nrun_dir = '{run}'\n" + redis_table(tmp_path) + "[cluster]\nnode = 'n1'\nnodes = ['n2']\n")
    provider = link.connection_options(node, 1.0)["credential_provider"]
    assert provider.get_credentials() == ()         # not made yet: the URL's (no AUTH)
    run.mkdir()
    (run / "redis-node-n1.pass").write_text("own\n")
    assert provider.get_credentials() == ("relayq-node-n1", "own")
    assert link.connection_options(node, 1.0, reader=True)["credential_provider"].get_credentials() == \
        ("relayq-view-n1", "own")


@pytest.mark.parametrize("version, channels, read_only", [
    ((7, 2, 4), True, True), ((7, 0, 15), True, True), ((6, 2, 6), True, False), ((6, 0, 16), False, False)])
def test_a_user_per_node_acl_lines(version, channels, read_only):
    admin = AdminCredentials("relayq-admin", "a" * 64)
    nodes = {"n3": AdminCredentials("relayq-node-n3", "c" * 64), "n2": AdminCredentials("relayq-node-n2", "b" * 64),
             "n1": AdminCredentials("relayq-node-n1", "d" * 64)}
    lines = acl_file_text(("shutdown",), version, admin, nodes=nodes, redis_node="n1").splitlines()
    assert len(lines) == 8          # default, admin, then relayq-node-<n> and relayq-view-<n> per node
    users = {line.split()[1]: line.split() for line in lines}
    n1, n2, n3, view2 = users["relayq-node-n1"], users["relayq-node-n2"], users["relayq-node-n3"], users["relayq-view-n2"]
    assert n2[:3] == ["user", "relayq-node-n2", "on"] and "b" * 64 not in " ".join(n2)
    assert n2[3] != n3[3] and view2[3] == n2[3]       # its own password, shared with its view user
    assert "-@all" in n2 and "+xadd" in n2
    assert not {"+shutdown", "+config", "+acl", "+@all", "~*", "+flushall"} & set(n2)
    own = {"~relayq-cluster:node:n2", "~relayq-cluster:why:n2", "~relayq-cluster:audit:n2"}
    assert own <= set(n2)
    assert not [w for w in n2 if "~" in w and "n3" in w] and "~relayq-cluster:*" not in n2
    if read_only:       # its own keys read-write, the rest (the index too) read-only
        assert "%R~relayq-cluster:*" in n2 and "~relayq-cluster:nodes" not in n2
    else:               # 6.x: one pattern reads and writes: its own keys and the index; said at start
        assert "~relayq-cluster:nodes" in n2 and not [w for w in n2 if w.startswith("%")]
        assert "index of node names" in " ".join(acl_weaknesses(version))
    # the view user: every cluster key, read commands only
    assert ("%R~relayq-cluster:*" if read_only else "~relayq-cluster:*") in view2
    assert "+xrange" in view2 and not {"+set", "+xadd", "+del", "+hset", "+zadd", "+eval", "+publish"} & set(view2)
    # the Redis node's own user: all of the view (it writes the index, asks every node)
    assert "~relayq-cluster:*" in n1
    # the workers may write anything but the cluster view
    default = users["default"]
    assert "~*" not in default and "~[^r]*" in default and "~relayq-cluster[^:]*" in default
    assert ("%R~*" in default) == read_only
    if channels:        # its own questions; answers to the asker
        assert {"&relayq-cluster:whois:ask:n2", "&relayq-cluster:whois:answer:*"} <= set(n2)
        assert "&relayq-cluster:whois:ask:n3" not in n2 and "&relayq-cluster:*" not in n2
        assert "&*" not in default and "&relayq-cluster[^:]*" in default
    else:
        assert not [w for w in n2 if w.startswith("&")]
    # no other node declared (the nodes publish with the workers' credentials): the workers keep the view
    alone = acl_file_text(("shutdown",), version, admin, nodes={"n1": nodes["n1"]}, redis_node="n1").splitlines()
    assert "~*" in alone[0].split()
    assert len(acl_file_text(("shutdown",), version, admin).splitlines()) == 2
    assert acl_weaknesses(version) == [] if read_only else acl_weaknesses(version)


def test_keys_outside_the_cluster_prefix():
    import fnmatch
    patterns = keys_outside("relayq-cluster:")
    def allowed(key):
        return any(fnmatch.fnmatchcase(key, p.replace("[^", "[!")) for p in patterns)
    for key in ("jobs", "r", "relayq", "relayq-cluster", "relayq-clusterX", "Relayq-cluster:x", "rq:1"):
        assert allowed(key), key
    for key in ("relayq-cluster:", "relayq-cluster:node:n1", "relayq-cluster:nodes"):
        assert not allowed(key), key


def publisher(tmp_path: Path, max_backlog: int) -> ClusterPublisher:
    config = parse("[cluster]\nnode = 'n2'\nredis_url = 'redis://127.0.0.1:1/0'\n" + WORKER)
    return ClusterPublisher(config, lambda: {}, lambda: [], max_backlog=max_backlog)


def test_audit_log_listener_feeds_a_bounded_backlog(tmp_path):
    async def run():
        pub = publisher(tmp_path, max_backlog=3)
        with AuditLog(tmp_path / "audit.jsonl") as log:
            log.add_listener(pub.audit_written)
            for i in range(5):
                log.write(make_event("spawn", pid=i))
        await pub.client.aclose()
        return pub
    pub = asyncio.run(run())
    assert [json.loads(line)["pid"] for _, line in pub.backlog] == [2, 3, 4]   # the oldest dropped
    assert [seq for seq, _ in pub.backlog] == [3, 4, 5]
    assert pub.dropped == 2 and "2 audit events dropped" in (pub.note() or "")
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 5       # the record keeps all


def test_a_failing_listener_costs_the_record_nothing(tmp_path):
    errors = []

    def broken(event, line):
        raise RuntimeError("boom")
    with AuditLog(tmp_path / "audit.jsonl", on_error=errors.append) as log:
        log.add_listener(broken)
        assert log.write(make_event("spawn", pid=1))
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 1
    assert "boom" in errors[0]


def test_repeated_stream_entries_are_shown_once():
    seen: set = set()
    fields = {b"node": b"n2", b"id": b"1.2:7", b"event": b'{"event":"spawn","pid":3}'}
    assert entry_event(fields, seen, "n2") == {"event": "spawn", "pid": 3, "node": "n2"}
    assert entry_event(dict(fields), seen, "n2") is None
    assert entry_event({**fields, b"id": b"1.2:8", b"event": b"not json"}, seen, "n2") is None
    # the node is the stream's (only that node's user writes it), not what the entry says
    assert entry_event({**fields, b"node": b"n3", b"id": b"1.2:9"}, seen, "n2")["node"] == "n2"


def test_each_node_stream_gets_a_share_of_the_cap():
    assert link.stream_key("n2") == "relayq-cluster:audit:n2"
    assert link.stream_maxlen(1) == link.STREAM_MAXLEN
    assert link.stream_maxlen(4) == link.STREAM_MAXLEN // 4
    assert link.stream_maxlen(0) == link.STREAM_MAXLEN and link.stream_maxlen(10_000) == link.STREAM_MIN_PER_NODE


def test_cluster_exit_status():
    running = {"node": "n1", "stale": False, "programs": [{"state": "RUNNING"}]}
    assert exit_status({"nodes": [running]}) == 0
    assert exit_status({"nodes": [running, {**running, "stale": True}]}) == 3
    assert exit_status({"nodes": [{**running, "programs": [{"state": "BACKOFF"}]}]}) == 3
    assert exit_status({"nodes": [{**running, "shut_down": True}]}) == 3


def test_a_remote_redis_gates_the_start_and_its_loss_stops_nothing():
    from support.fakes import Rig
    rig = Rig("[cluster]\nnode = 'n2'\nredis_url = 'redis://h:6379/0'\n" + WORKER.replace("'true'", "'sleep'"))
    up = False
    rig.arbiter.remote_ready = lambda name: up
    rig.arbiter.reconcile()
    assert rig.state("worker") == "STOPPED" and rig.program("worker").reason == "waiting for redis (remote)"
    assert rig.arbiter.awaits_other_node(rig.program("worker"))     # systemd's READY=1 is not held for it
    up = True
    rig.arbiter.reconcile()
    assert rig.state("worker") == "STARTING" and not rig.arbiter.awaits_other_node(rig.program("worker"))
    rig.clock.advance(1.0)
    assert rig.state("worker") == "RUNNING"
    up = False                      # lost: shown in status by the node, nothing is stopped
    rig.arbiter.reconcile()
    assert rig.state("worker") == "RUNNING" and not rig.events_of("exit")


def test_cluster_metrics_read_the_publisher(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from relayq_supervisor.cluster.metrics import ClusterCollector

    async def run():
        pub = publisher(tmp_path, max_backlog=2)
        for _ in range(3):
            pub.audit_written({}, b'{"event":"spawn"}\n')
        await pub.client.aclose()
        return pub
    registry = CollectorRegistry()
    registry.register(ClusterCollector(asyncio.run(run())))
    text = generate_latest(registry).decode()
    assert "relayq_cluster_events_dropped_total 1.0" in text
    assert "relayq_cluster_backlog_events 2.0" in text and "relayq_cluster_redis_up 0.0" in text


def test_the_redis_node_warns_only_when_its_redis_was_up(tmp_path, caplog):
    """The Redis node's publisher starts before its own Redis: not answering then is no warning
    (every start of the Redis node logged one); a worker node's first failure and any later loss are."""
    caplog.set_level(logging.INFO, logger="relayq_supervisor.cluster.publisher")
    own = ClusterPublisher(parse(redis_table(tmp_path) + "[cluster]\nnode = 'n1'\n"), lambda: {}, lambda: [])
    own.set_reachable(False, "Connection refused")
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    own.set_reachable(True, None)
    own.set_reachable(False, "Connection refused")
    assert [r.levelno for r in caplog.records][-1] == logging.ERROR
    caplog.clear()
    publisher(tmp_path, 10).set_reachable(False, "Connection refused")
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_cluster_status_from_a_silent_redis_is_an_error_within_its_deadline(monkeypatch):
    """`cluster-status` on a Redis that accepts and never answers: the supervisor's reply is
    an error within its deadline, not a wait (relayqctl then reads Redis itself)."""
    from relayq_supervisor.cluster.link import ClusterUnreachable
    from relayq_supervisor.node import clustering
    monkeypatch.setattr(clustering, "READ_TIMEOUT_S", 0.05)
    monkeypatch.setattr(clustering, "ANSWER_TIMEOUT_S", 0.1)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()         # the kernel completes the connect; nothing ever reads or answers
        config = parse(f"[cluster]\nnode = 'n2'\nredis_url = 'redis://127.0.0.1:{silent.getsockname()[1]}/0'\n"
                       + WORKER)
        node = clustering.Clustering(config, status=dict, programs=list, reconcile=lambda: None,
                                     redis_admin=lambda: None, name_process=lambda pid: None, who_held=None)

        async def ask() -> None:
            with pytest.raises(ClusterUnreachable, match=r"cluster Redis redis://127\.0\.0\.1:\d+/0: "):
                await node.cluster_status()
            await node.close_after_programs()
        asyncio.run(ask())
    assert node.reader is None


@pytest.mark.parametrize("raw, stop", [(b"not json", None), (b"[1, 2]", None),
                                       (json.dumps({"programs": [{"name": "redis"}]}).encode(), b"{torn")])
def test_why_of_a_node_whose_published_status_is_not_its_json_is_an_error_not_a_traceback(raw, stop):
    from relayq_supervisor.cluster.view import ClusterUnreadable, why_result
    with pytest.raises(ClusterUnreadable, match="node n2's published status is not readable JSON"):
        why_result("n2", "redis", raw, stop)


def test_why_of_a_readable_status_names_the_program_and_its_last_stop():
    from relayq_supervisor.cluster.view import why_result
    raw = json.dumps({"programs": [{"name": "redis", "state": "RUNNING"}, "junk"]}).encode()
    got = why_result("n2", "redis", raw, json.dumps({"signal": "SIGKILL"}).encode())
    assert got == {"node": "n2", "program": {"name": "redis", "state": "RUNNING"}, "last_stop": {"signal": "SIGKILL"}}
