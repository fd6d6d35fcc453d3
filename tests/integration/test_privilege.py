"""Issue 17, with real processes as root: Redis and a worker run as their own users, with
their limits, and a job cannot reach the supervisor's secrets nor stop Redis."""
from __future__ import annotations

import json
import os
import pwd
import signal
import site
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis
from support import PYTHON, REDIS_SERVER, Supervisor, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing a program's user takes root")

NOBODY = pwd.getpwnam("nobody")
# An interpreter every user may run: the venv's python3 may link to one under /root (0700),
# which --check rightly refuses for a program run as nobody. The probe needs only the stdlib.
SYSTEM_PYTHON = next((p for p in ("/usr/bin/python3", "/bin/python3") if os.access(p, os.X_OK)), None)

# The job a worker could run: tries what issue 17 says it must not be able to do, prints
# what happened to each attempt as one JSON line, then waits to be stopped.
PROBE = textwrap.dedent("""\
    import errno, json, os, signal, sys, time
    targets = json.loads(sys.argv[1])
    out = {}
    def attempt(label, action):
        try:
            action()
            out[label] = "ok"
        except OSError as e:
            out[label] = errno.errorcode.get(e.errno, str(e.errno))
    for label, path in targets.get("read", {}).items():
        attempt("read " + label, lambda p=path: open(p, "rb").close())
    for label, path in targets.get("append", {}).items():
        attempt("append " + label, lambda p=path: open(p, "ab").close())
    for label, path in targets.get("create", {}).items():
        attempt("create " + label, lambda p=path: open(os.path.join(p, "probe"), "xb").close())
    for label, (pid, signo) in targets.get("signal", {}).items():
        attempt("signal " + label, lambda p=pid, s=signo: os.kill(p, s))
    print(json.dumps(out), flush=True)
    while True:
        time.sleep(60)
""")


def status_of(path: str) -> dict[str, str]:
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def proc_status(pid: int) -> dict[str, str]:
    return status_of(f"/proc/{pid}/status")


def nofile_limits(pid: int) -> tuple[str, str]:
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return soft, hard


def uid_of(pid: int) -> int:
    return int(proc_status(pid)["Uid"].split()[1])     # real, effective, saved, fs: the effective one




@pytest.fixture
def supervisors():
    started: list[Supervisor] = []
    yield started
    for sup in started:
        sup.cleanup()


def config_text(port: int, redis_user: str, probe_targets: dict, *, extra_redis: str = "") -> str:
    return textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"

        [redis]
        binary = "{REDIS_SERVER}"
        port = {port}
        dir = "data"
        user = "{redis_user}"
        limits = {{ nofile = 4096 }}
        {extra_redis}
        [redis.config]
        appendonly = "yes"
        save = ""

        [redis.restart]
        stable_after = 1.0

        [[program]]
        name = "probe"
        command = ["{SYSTEM_PYTHON}", "probe.py", '{json.dumps(probe_targets)}']
        autostart = false
        user = "nobody"
        umask = "0027"
        stop_timeout = 2
        [program.limits]
        nofile = 256
        """)


def start_probe(sup: Supervisor) -> tuple[int, dict]:
    sup.ctl("start", "probe", check=True)
    pid = sup.wait_state("probe", "RUNNING")["pid"]
    log = sup.dir / "log" / "probe.log"
    line = wait_for(lambda: log.exists() and log.read_text().strip(), what="the probe's report")
    return pid, json.loads(line.split(" ", 1)[1])       # after the supervisor's arrival stamp


needs_system_python = pytest.mark.skipif(SYSTEM_PYTHON is None, reason="no /usr/bin/python3 for a probe run as nobody")


@needs_system_python
def test_redis_and_a_worker_as_nobody(open_tmp, port, supervisors):
    (open_tmp / "probe.py").write_text(PROBE)
    # the probe learns Redis' pid from its argv: the config is written once Redis' first pid is known
    sup = Supervisor(open_tmp, config_text(port, "nobody", {}))
    supervisors.append(sup)
    sup.start()
    redis_pid = sup.wait_state("redis", "RUNNING")["pid"]
    tap = sup.status()["supervisor"]["signal_tap"]
    # Redis as nobody, in the data dir the supervisor made for it, still traced by the (root) supervisor
    st = proc_status(redis_pid)
    assert st["Uid"].split() == [str(NOBODY.pw_uid)] * 4 and st["Gid"].split() == [str(NOBODY.pw_gid)] * 4
    assert st["NoNewPrivs"] == "1"
    assert nofile_limits(redis_pid) == ("4096", "4096")
    if tap == "attached":
        assert st["TracerPid"] == str(sup.pid), "Redis changed its uid after the tap seized it: it must stay traced"
    data = os.stat(open_tmp / "data")
    assert (data.st_uid, data.st_gid, stat.S_IMODE(data.st_mode)) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o750)
    assert sup.program("redis")["user"] == "nobody"

    conn = redis.Redis(port=port, socket_timeout=2)
    assert conn.ping()
    conn.set("survives", "restarts")
    aof = wait_for(lambda: [p for p in (open_tmp / "data").rglob("*.aof") if p.stat().st_size > 0],
                   what="an AOF with the write")
    assert all(p.stat().st_uid == NOBODY.pw_uid for p in aof)
    sup.ctl("restart", "redis", check=True)
    second = sup.wait_state("redis", "RUNNING")["pid"]
    assert second != redis_pid and uid_of(second) == NOBODY.pw_uid
    assert conn.get("survives") == b"restarts"

    # a worker as nobody (Redis' user too, so the kernel lets its SIGTERM through): the tap blocks it
    sup.config.write_text(config_text(port, "nobody", {"signal": {"redis": [second, int(signal.SIGTERM)]}}))
    sup.ctl("reload", check=True)
    probe_pid, report = start_probe(sup)
    assert report == {"signal redis": "ok"}
    pst = proc_status(probe_pid)
    assert int(pst["Uid"].split()[1]) == NOBODY.pw_uid
    assert pst["Umask"] == "0027" and pst["NoNewPrivs"] == "1"
    assert nofile_limits(probe_pid) == ("256", "256")
    if tap != "attached":
        pytest.skip(f"signal tap: {tap} (the kernel refused ptrace), so SIGTERM is not blocked here")
    event = wait_for(lambda: [e for e in sup.audit_events("signal") if e["target"]["pid"] == second
                              and e["signal"] == "SIGTERM"], what="the SIGTERM's audit event")[0]
    assert event["action"] == "blocked"
    assert event["sender"]["pid"] == probe_pid and event["sender"]["uid"] == NOBODY.pw_uid
    assert sup.program("redis")["pid"] == second and conn.ping()
    why = sup.ctl("why", "probe", check=True).stdout
    assert "runs as: nobody" in why


@needs_system_python
def test_a_worker_cannot_reach_redis_or_the_secrets(open_tmp, port, made_user, supervisors):
    # made_user before supervisors: fixtures end in reverse, so Redis has stopped when the user goes
    (open_tmp / "probe.py").write_text(PROBE)
    run, log, data = open_tmp / "run", open_tmp / "log", open_tmp / "data"
    sup = Supervisor(open_tmp, config_text(port, made_user.pw_name, {}))
    supervisors.append(sup)
    sup.start()
    redis_pid = sup.wait_state("redis", "RUNNING")["pid"]
    assert uid_of(redis_pid) == made_user.pw_uid
    assert redis.Redis(port=port, socket_timeout=2).ping()
    # the files: the password root's alone, the ACL and config Redis' user's alone
    for name, owner in (("redis-admin.pass", 0), ("redis-users.acl", made_user.pw_uid),
                        ("redis.conf", made_user.pw_uid)):
        st = os.stat(run / name)
        assert (name, st.st_uid, stat.S_IMODE(st.st_mode)) == (name, owner, 0o600)
    assert (log / "redis.log").exists()
    targets = {
        "read": {"password": str(run / "redis-admin.pass"), "acl": str(run / "redis-users.acl"),
                 "conf": str(run / "redis.conf")},
        "append": {"redis log": str(log / "redis.log"), "audit log": str(log / "audit.jsonl")},
        "create": {"data dir": str(data)},
        "signal": {"redis KILL": [redis_pid, int(signal.SIGKILL)], "redis TERM": [redis_pid, int(signal.SIGTERM)]},
    }
    sup.config.write_text(config_text(port, made_user.pw_name, targets))
    sup.ctl("reload", check=True)
    probe_pid, report = start_probe(sup)
    assert report == {"read password": "EACCES", "read acl": "EACCES", "read conf": "EACCES",
                      "append redis log": "EACCES", "append audit log": "EACCES",
                      "create data dir": "EACCES", "signal redis KILL": "EPERM", "signal redis TERM": "EPERM"}
    # its own credentials only: the Redis URL, its own user's identity, never the admin password
    with open(f"/proc/{probe_pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    assert env[b"RELAYQ_REDIS_URL"] == f"redis://127.0.0.1:{port}/0".encode()
    assert (env[b"USER"], env[b"HOME"]) == (b"nobody", NOBODY.pw_dir.encode())
    admin_password = (run / "redis-admin.pass").read_bytes().strip()
    assert all(admin_password not in value for value in env.values())
    assert sup.program("redis")["pid"] == redis_pid
    assert sup.program("redis")["user"] == made_user.pw_name


def check(config: str, *, as_user: str | None = None) -> subprocess.CompletedProcess:
    argv = [PYTHON, "-m", "relayq_supervisor", "--check", "-c", config]
    env = os.environ.copy()
    if as_user is not None:
        # the system interpreter of the same version, on this checkout and the venv's packages
        same = f"import sys; sys.exit(sys.version_info[:2] != {tuple(sys.version_info[:2])})"
        if SYSTEM_PYTHON is None or subprocess.run([SYSTEM_PYTHON, "-c", same]).returncode:
            pytest.skip(f"no system python{sys.version_info[0]}.{sys.version_info[1]} that {as_user} may run")
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), *site.getsitepackages()])
        pw = pwd.getpwnam(as_user)
        argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", SYSTEM_PYTHON, *argv[1:]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd="/")


def test_check_refuses_an_unknown_user_and_a_user_without_root(open_tmp):
    conf = open_tmp / "config.toml"
    conf.write_text('[[program]]\nname = "w"\ncommand = ["true"]\nuser = "no-such-user-rq"\n')
    r = check(str(conf))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"{conf}:4: user 'no-such-user-rq' is not a user on this machine (create it: "
                        "useradd --system no-such-user-rq, or fix the name)\n")
    conf.write_text('[[program]]\nname = "w"\ncommand = ["true"]\nuser = "root"\n')
    r = check(str(conf), as_user="nobody")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"{conf}:4: user = 'root' needs the supervisor to run as root (it runs as nobody): "
                        "start it as root (the shipped unit does) or remove 'user'\n")


def test_doctor_warns_about_a_program_that_runs_jobs_as_root(open_tmp):
    conf = open_tmp / "config.toml"
    conf.write_text('[[program]]\nname = "w"\ncommand = ["true"]\n'
                    '[[program]]\nname = "safe"\ncommand = ["true"]\nuser = "nobody"\n')
    (open_tmp / "clean").mkdir()
    argv = [PYTHON, "-m", "relayq_supervisor.ctl", "doctor", "-c", str(conf), "--root", str(open_tmp / "clean")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr          # a warning, not a rival
    assert "warning: program 'w' runs jobs as root (with no 'user' set, as the supervisor)" in r.stdout
    assert "'safe'" not in r.stdout
    warnings = json.loads(subprocess.run([*argv, "--json"], capture_output=True, text=True, timeout=60).stdout)["warnings"]
    assert [w.split("'")[1] for w in warnings] == ["w"]
