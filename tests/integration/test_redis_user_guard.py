"""Redis as its own user cannot undo what the supervisor keeps about it (issue 17, least
privilege): the data-dir owner record, the one-owner guarantee. Real processes, as root."""
from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import textwrap

import pytest
from support import REDIS_SERVER, Supervisor, free_port, wait_for

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


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
