"""The Redis command guard without a server: ACL rules per version, the ACL file and admin
password file, and the ACL LOG bookkeeping on recorded entries."""
from __future__ import annotations

import logging
import os
import stat

import pytest

from relayq_supervisor.config.model import RedisSpec
from relayq_supervisor.kinds.redis.acl import (
    AclLogReader,
    AclSetupError,
    AdminCredentials,
    Denial,
    acl_rules,
    parse_client_info,
    version_tuple,
    write_acl_file,
)
from relayq_supervisor.kinds.redis.health import denial_hint
from relayq_supervisor.witness.socket_holder import split_addr

DENIED = RedisSpec.denied_commands


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
    with caplog.at_level(logging.WARNING, logger="relayq_supervisor"):
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


def test_unwritable_run_dir_is_an_error_for_people(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(AclSetupError, match="cannot write the Redis admin password file .*nope"):
        AdminCredentials.load_or_create(missing)


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
    with caplog.at_level(logging.WARNING, logger="relayq_supervisor"):
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
    def e(count, age, eid):
        return entry(count, age, **{"entry-id": eid, "timestamp-created": 1000 + eid,
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


def test_a_client_address_of_a_unix_socket_or_garbage_is_no_tcp_address():
    assert split_addr("/tmp/redis.sock:0") is None
    assert split_addr("") is None
    assert split_addr("not-an-ip:12") is None
    assert split_addr("[::ffff:127.0.0.1]:5123") == ("127.0.0.1", 5123)
    assert split_addr("fd00::2:51234") == ("fd00::2", 51234)


@pytest.mark.parametrize("reason, user, hint", [
    ("command", "default", "only the supervisor may stop Redis"),
    ("command", "relayq-node-n2", "user relayq-node-n2 may run only the cluster view's commands"),
    ("key", "relayq-node-n2", "user relayq-node-n2 may not touch that key"),
    ("channel", "relayq-node-n2", "user relayq-node-n2 may not touch that channel"),
])
def test_a_denial_log_line_says_what_kind_of_refusal_it_was(reason, user, hint):
    d = Denial(command="set", reason=reason, context="toplevel", user=user, client_addr="10.0.0.2:5000",
                         client_laddr=None, client_name=None, count_new=1, count_total=1, age_s=0.0, client_info={})
    assert hint in denial_hint(d)
