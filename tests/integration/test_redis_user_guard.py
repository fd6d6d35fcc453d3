"""Redis as its own user cannot undo what the supervisor keeps about it (issue 17, least
privilege): the data-dir owner record, the one-owner guarantee. Real processes, as root."""
from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
import redis
from support import PYTHON, REDIS_SERVER, Supervisor, free_port, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing Redis' user takes root")

NOBODY = pwd.getpwnam("nobody")
# what nobody may run: the venv's interpreter may sit under /root (0700)
SYSTEM_PYTHON = next((p for p in ("/usr/bin/python3", "/bin/python3") if os.access(p, os.X_OK)), None)
needs_system_python = pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no /usr/bin/python3 to run as nobody")

# As Redis' user: delete and forge every lock file in the data dir, try the record kept in
# run_dir; print what happened to each attempt.
TAMPER = textwrap.dedent("""\
    import errno, glob, json, os, sys
    data, run, forged = sys.argv[1], sys.argv[2], sys.argv[3]
    out = {}
    def attempt(label, action):
        try:
            action()
            out[label] = "ok"
        except OSError as e:
            out[label] = errno.errorcode.get(e.errno, str(e.errno))
    lock = os.path.join(data, "relayq.lock")
    attempt("unlink data-dir lock", lambda: os.unlink(lock))
    def forge():
        with open(lock, "w") as f:
            f.write(forged)
    attempt("forge data-dir lock", forge)
    for path in glob.glob(os.path.join(run, "redis-dir@*.lock")):
        attempt("unlink record", lambda p=path: os.unlink(p))
        attempt("write record", lambda p=path: open(p, "r+").close())
    print(json.dumps(out))
""")


def config(port: int, data: str) -> str:
    return textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"

        [redis]
        binary = "{REDIS_SERVER}"
        port = {port}
        dir = "{data}"
        user = "nobody"
        args = ["--save", ""]
        """)


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[],
                          capture_output=True, text=True, timeout=30, cwd="/")


@pytest.fixture
def supervisors():
    started: list[Supervisor] = []
    yield started
    for sup in started:
        sup.cleanup()


@needs_system_python
def test_redis_user_can_neither_forge_nor_remove_the_data_dir_record(open_tmp, supervisors):
    data = open_tmp / "data"
    first = Supervisor(open_tmp, config(free_port(), str(data)))
    supervisors.append(first)
    first.start()
    redis_pid = first.wait_state("redis", "RUNNING")["pid"]
    first.seen.add(redis_pid)
    records = sorted((open_tmp / "run").glob("redis-dir@*.lock"))
    assert len(records) == 1, "the data dir's owner record is kept in run_dir"
    st = os.stat(records[0])
    assert (st.st_uid, st.st_mode & 0o022) == (0, 0)
    assert json.loads(records[0].read_text())["redis"]["pid"] == redis_pid

    # Redis' user rewrites what it can: it names a process of its own as the Redis to adopt
    forged = json.dumps({"pid": 1, "redis": {"pid": 1, "start_ticks": 1, "port": 1}})
    r = as_nobody(SYSTEM_PYTHON, "-c", TAMPER, str(data), str(open_tmp / "run"), forged)
    report = json.loads(r.stdout)
    assert report["unlink data-dir lock"] == "ok", "the data dir is Redis' own: it may remove the lock file there"
    assert (report["unlink record"], report["write record"]) == ("EACCES", "EACCES")

    # a second supervisor on the same data dir (its own run_dir, config and port) is still refused
    other = open_tmp / "other"
    other.mkdir(mode=0o755)
    second = Supervisor(other, config(free_port(), str(data)))
    supervisors.append(second)
    second.start()
    assert second.proc.wait(30) == 2, second.log()
    assert f"{data} is owned by pid {first.pid}" in second.log()

    # after a crash the next supervisor adopts the Redis of the genuine record, not the forged one
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    first.log_file.close()
    first.start()
    wait_for(lambda: first.ctl("pid").returncode == 0, timeout=30, what="the next supervisor's socket")
    st = first.wait_state("redis", "RUNNING")
    assert st["pid"] == redis_pid and st["reason"] == f"adopted pid {redis_pid} from the previous supervisor", \
        first.log()




def owners(top: Path) -> set[int]:
    return {p.lstat().st_uid for p in (top, *top.rglob("*")) if p.name != "relayq.lock"}


def test_a_new_redis_user_gets_the_data_dir_the_supervisor_made(open_tmp, made_user, supervisors):
    # made_user before supervisors: fixtures end in reverse, so Redis has stopped when the user goes
    data, run, port = open_tmp / "data", open_tmp / "run", free_port()
    text = config(port, str(data)).replace('args = ["--save", ""]', 'args = ["--save", "", "--appendonly", "yes"]')
    sup = Supervisor(open_tmp, text)
    supervisors.append(sup)
    sup.start()
    sup.wait_state("redis", "RUNNING")
    with redis.Redis(port=port, socket_timeout=5) as conn:
        conn.set("kept", "across the change of user")
    wait_for(lambda: [p for p in data.rglob("*.aof") if p.stat().st_size > 0], what="the AOF with the write")
    assert owners(data) == {NOBODY.pw_uid}

    # a reload that changes Redis' user: restarted as the new user, in its own data dir
    sup.config.write_text(text.replace('user = "nobody"', f'user = "{made_user.pw_name}"'))
    sup.ctl("reload", check=True)
    pid = sup.wait_state("redis", "RUNNING", user=made_user.pw_name)["pid"]
    sup.seen.add(pid)
    assert owners(data) == {made_user.pw_uid}
    assert (data / "relayq.lock").stat().st_uid == 0           # what was not the old user's stays as it was
    # the hand-over is evidence: an audit event, one readable line in `relayqctl audit`
    [given] = wait_for(lambda: sup.audit_events("redis_dir_given"), what="the redis_dir_given event")
    assert (given["from_uid"], given["uid"], given["user"]) == (NOBODY.pw_uid, made_user.pw_uid, made_user.pw_name)
    assert given["changed"] >= 3 and given["why"] == "Redis' user changed"
    shown = sup.ctl("audit", check=True).stdout
    assert f"redis data dir {data} given to user {made_user.pw_name} (uid {made_user.pw_uid}): " \
           f"{given['changed']} entries of nobody changed owner (Redis' user changed)" in shown, shown
    for name in ("redis.conf", "redis-users.acl"):
        assert (run / name).stat().st_uid == made_user.pw_uid
    with redis.Redis(port=port, socket_timeout=5) as conn:
        assert conn.get("kept") == b"across the change of user"
        assert conn.set("written", "by the new user")         # its AOF is writable by it

    # a data dir the supervisor did not make is not taken over: --check names the chown to run
    other = open_tmp / "theirs"
    other.mkdir(mode=0o750)
    os.chown(other, NOBODY.pw_uid, NOBODY.pw_gid)
    (open_tmp / "theirs.toml").write_text(config(free_port(), str(other)).replace('user = "nobody"',
                                                                                  f'user = "{made_user.pw_name}"'))
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor", "--check", "-c", str(open_tmp / "theirs.toml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "the supervisor did not make it" in r.stderr, r.stderr
    assert f"`chown -R {made_user.pw_name}: {other}`" in r.stderr and "Traceback" not in r.stderr


def test_redis_user_unset_and_set_again_gets_back_what_redis_wrote_as_root(open_tmp, supervisors):
    data, port = open_tmp / "data", free_port()
    text = config(port, str(data)).replace('args = ["--save", ""]', 'args = ["--save", "", "--appendonly", "yes"]')
    sup = Supervisor(open_tmp, text)
    supervisors.append(sup)
    sup.start()
    sup.wait_state("redis", "RUNNING", user="nobody")

    # `user` unset: Redis runs as the supervisor's user (root) and rewrites its AOF as root's files
    sup.config.write_text(text.replace('user = "nobody"\n', ""))
    sup.ctl("reload", check=True)
    sup.seen.add(sup.wait_state("redis", "RUNNING", user="root")["pid"])
    with redis.Redis(port=port, socket_timeout=5) as conn:
        conn.set("kept", "written by root's Redis")
        conn.bgrewriteaof()
        wait_for(lambda: not int(conn.info("persistence")["aof_rewrite_in_progress"]) and
                 not int(conn.info("persistence")["aof_rewrite_scheduled"]), what="the AOF rewrite")
    assert 0 in owners(data), "root's Redis left files of root's"

    sup.config.write_text(text)
    sup.ctl("reload", check=True)
    sup.seen.add(sup.wait_state("redis", "RUNNING", user="nobody")["pid"])
    assert owners(data) == {NOBODY.pw_uid}
    with redis.Redis(port=port, socket_timeout=5) as conn:
        assert conn.get("kept") == b"written by root's Redis"
        assert conn.set("written", "by nobody")              # its AOF is nobody's to append to
        assert conn.info("persistence")["aof_last_write_status"] == "ok"
    [given] = wait_for(lambda: sup.audit_events("redis_dir_given"), what="the redis_dir_given event")
    assert (given["from_uid"], given["uid"], given["skipped"]) == (0, NOBODY.pw_uid, 0) and given["changed"] >= 2


HOLD_FLOCK = textwrap.dedent("""\
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDONLY)      # the supervisor's file, 0644: readable is enough to flock
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()
""")


@needs_system_python
def test_redis_user_holding_the_data_dir_flock_does_not_keep_the_supervisor_from_starting(open_tmp, supervisors):
    data = open_tmp / "data"
    sup = Supervisor(open_tmp, config(free_port(), str(data)))
    supervisors.append(sup)
    sup.start()
    sup.wait_state("redis", "RUNNING")
    assert sup.terminate() == 0
    sup.log_file.close()

    lock = data / "relayq.lock"
    holder = subprocess.Popen([SYSTEM_PYTHON, "-c", HOLD_FLOCK, str(lock)], user=NOBODY.pw_uid, group=NOBODY.pw_gid,
                              extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert holder.stdout.readline() == "held\n"
        sup.start()
        sup.seen.add(sup.wait_state("redis", "RUNNING")["pid"])
        [tamper] = wait_for(lambda: [e for e in sup.audit_events("tamper") if e["path"] == str(lock)],
                            what="the tamper event")
        assert tamper["sender"]["pid"] == holder.pid and tamper["sender"]["uid"] == NOBODY.pw_uid
        assert f"flocked by pid {holder.pid} " in tamper["what"] and "not a supervisor" in tamper["what"]
        assert f"{lock} was flocked by pid {holder.pid}" in sup.log()
        assert f"TAMPER {lock}: flocked by pid {holder.pid}" in sup.ctl("audit", check=True).stdout
        # the supervisor holds the data dir's lock file again, for the tools that ask
        assert subprocess.run(["flock", "-n", str(lock), "true"]).returncode == 1
        assert json.loads(lock.read_text())["pid"] == sup.pid
    finally:
        holder.stdin.close()
        holder.wait(10)
