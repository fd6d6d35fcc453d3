"""The core supervisor with real children and a real redis-server."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import textwrap

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import PYTHON, REDIS_SERVER, WORKER, descendants, free_port, redis_config, wait_for


def ping(port: int) -> bool:
    # a Redis that is up answers at once, but a loaded 2-core machine can hold a reply past 0.5 s;
    # no retry: redis-py's default one backs off ~4 s before a refused port counts as down
    try:
        return redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0)).ping()
    except redis.RedisError:
        return False


def test_redis_and_workers_run_and_a_job_returns_success(make_supervisor, port):
    sup = make_supervisor(redis_config(None, port, programs=WORKER)).start()
    st = sup.wait_all_running()
    names = [p["name"] for p in st["programs"]]
    assert names == ["redis", "worker:0", "worker:1"]
    redis_started = st["programs"][0]["started_at"]
    assert all(p["started_at"] >= redis_started for p in st["programs"][1:])
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor.selftest", "run", "-c", str(sup.config), "echo SUCCESS"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "SUCCESS"
    # each child logs into its own file
    assert (sup.dir / "log" / "redis.log").exists()
    assert (sup.dir / "log" / "worker:0.log").exists()
    assert sup.terminate() == 0
    log = sup.log()
    # workers stop before the Redis they depend on
    assert log.index("worker:0: STOPPING -> STOPPED") < log.index("redis: RUNNING -> STOPPING")


def test_kill_9_of_stable_redis_restarts_it_at_once(make_supervisor, port):
    sup = make_supervisor(redis_config(None, port)).start()
    first = sup.wait_state("redis", "RUNNING")
    # a run longer than stable_after (1s) ends any streak: the restart has no delay
    wait_for(lambda: sup.program("redis")["uptime_s"] >= 1.1, what="redis stable")
    os.kill(first["pid"], signal.SIGKILL)
    again = sup.wait_state("redis", "RUNNING", restarts=1)
    assert again["pid"] != first["pid"]
    assert again["last_exit"]["signal"] == "SIGKILL"
    assert ping(port)
    assert "stable run of" in sup.log()


def test_quick_kills_back_off_then_give_up(make_supervisor, port):
    restart = """
        backoff_initial = 0.2
        backoff_factor = 2.0
        jitter = 0.0
        stable_after = 30
        start_limit_burst = 3
        start_limit_interval = 60
    """
    text = redis_config(None, port).replace("[redis.restart]\nstable_after = 1.0\n",
                                            "[redis.restart]\n" + textwrap.dedent(restart))
    sup = make_supervisor(text).start()
    for restarts in range(3):
        p = sup.wait_state("redis", "RUNNING", restarts=restarts)
        os.kill(p["pid"], signal.SIGKILL)
    fatal = sup.wait_state("redis", "FATAL")
    assert "gave up: 3 starts in 60s" in fatal["reason"]
    log = sup.log()
    assert "next start in 0.2s, failure 1 of 3" in log
    assert "next start in 0.4s, failure 2 of 3" in log
    assert re.search(r"redis: BACKOFF -> STARTING|redis: STOPPED -> STARTING", log)
    assert "FATAL (gave up: 3 starts in 60s" in log
    assert not ping(port)
    # an operator start revives it with a fresh streak and window
    r = sup.ctl("start", "redis")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sup.program("redis")["state"] == "RUNNING"


def test_second_supervisor_on_same_run_dir_exits_2(make_supervisor, port):
    first = make_supervisor(redis_config(None, port)).start()
    first.wait_state("redis", "RUNNING")
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor", "-c", str(first.config)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    run_dir = first.dir / "run"
    assert f"relayq-supervisor: {run_dir} is owned by pid {first.pid} (started " in r.stderr
    assert f"config {first.config})" in r.stderr
    assert first.program("redis")["state"] == "RUNNING"


def test_two_run_dirs_cannot_share_one_redis_data_dir(make_supervisor, port, tmp_path):
    data = tmp_path / "shared-data"
    a = make_supervisor(redis_config(None, port).replace('dir = "data"', f'dir = "{data}"'), "a").start()
    a.wait_state("redis", "RUNNING")
    b = make_supervisor(redis_config(None, free_port()).replace('dir = "data"', f'dir = "{data}"'), "b")
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor", "-c", str(b.config)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert f"Redis data directory {data} is owned by pid {a.pid}" in r.stderr


def test_foreign_redis_on_the_port_is_named_and_nothing_starts(make_supervisor, port, tmp_path):
    foreign = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: ping(port), what="foreign redis")
        sup = make_supervisor(redis_config(None, port, programs=WORKER))
        r = subprocess.run([PYTHON, "-m", "relayq_supervisor", "-c", str(sup.config)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 2, r.stderr
        assert f"port {port} is held by pid {foreign.pid} ({REDIS_SERVER}" in r.stderr
        assert "stop and disable that manager first" in r.stderr
        assert not (sup.dir / "log" / "worker:0.log").exists()
    finally:
        foreign.kill()
        foreign.wait()


def test_port_taken_during_a_restart_is_fatal_not_a_loop(make_supervisor, port, tmp_path):
    sup = make_supervisor(redis_config(None, port)).start()
    p = sup.wait_state("redis", "RUNNING")
    squatter = subprocess.Popen([PYTHON, "-c", textwrap.dedent(f"""
        import socket, time, sys
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        print("trying", flush=True)
        while True:
            try:
                s.bind(("127.0.0.1", {port})); break
            except OSError:
                time.sleep(0.001)
        s.listen(); print("bound", flush=True); time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(squatter, 30) == "trying"          # started, and Redis still holds the port
        # the supervisor is frozen while Redis dies and the rival takes its port: its restart
        # then finds the port held (unfrozen, the restart could bind first: a CI run timed out)
        os.kill(sup.pid, signal.SIGSTOP)
        try:
            os.kill(p["pid"], signal.SIGKILL)
            assert read_line(squatter, 30) == "bound"
        finally:
            os.kill(sup.pid, signal.SIGCONT)
        fatal = sup.wait_state("redis", "FATAL", timeout=30)
        assert f"port {port} is held by pid {squatter.pid}" in fatal["reason"]
    finally:
        squatter.kill()
        squatter.wait()


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """`proc`'s next stdout line, stripped; fails after `timeout` s without one."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no line from pid {proc.pid} within {timeout}s"
    return proc.stdout.readline().strip()


# Every config error is a unit test (tests/unit/test_config.py) against the parser; these run
# each entry point once on a broken file: exit status 2, the message alone on stderr, nothing made.
BROKEN = "[[program]]\nname = 'a'\ncommand = ['true']\n[program.restart]\npolicy = 'sometimes'\n"
BROKEN_SAYS = ":5: 'policy' must be \"always\", \"on-failure\" or \"never\", not 'sometimes'\n"


@pytest.mark.parametrize("extra", [[], ["--check"]], ids=["run", "check"])
def test_a_broken_config_names_the_line_exits_2_and_starts_nothing(tmp_path, extra):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(BROKEN)
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor", "-c", str(cfg), *extra], capture_output=True,
                       text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == f"{cfg}{BROKEN_SAYS}"
    assert r.stdout == ""
    assert os.listdir(tmp_path) == ["bad.toml"]         # no run, log or data directory: nothing started


def test_relayqctl_on_a_broken_supervisor_table_exits_2(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[supervisor]\nhealth_interval = 0\n")
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor.ctl", "status", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == f"relayqctl: {cfg}:2: 'health_interval' must be positive\n"
    assert os.listdir(tmp_path) == ["bad.toml"]


def test_check_prints_binary_and_version(tmp_path, port):
    cfg = tmp_path / "c.toml"
    cfg.write_text(redis_config(None, port, programs=WORKER))
    r = subprocess.run([PYTHON, "-m", "relayq_supervisor", "-c", str(cfg), "--check"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"redis: {REDIS_SERVER} (version " in r.stdout
    assert "worker:0, worker:1" in r.stdout


def test_sigterm_leaves_no_child_grandchild_or_zombie(make_supervisor, port):
    programs = f"""
    [[program]]
    name = "forker"
    command = ["sh", "-c", "sleep 300 & sleep 301 & exec sleep 302"]
    ready_after = 0.1
    [[program]]
    name = "stubborn"
    command = ["{PYTHON}", "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"]
    stop_timeout = 0.5
    ready_after = 0.1
    """
    sup = make_supervisor(redis_config(None, port, programs=programs)).start()
    sup.wait_all_running()
    tree = descendants(sup.pid)
    assert len(tree) >= 5       # redis, sh's three sleeps, stubborn
    assert sup.terminate() == 0
    assert "did not exit 0.5s after SIGTERM: SIGKILL to process group" in sup.log()
    alive = [pid for pid in tree if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_leftovers_in_a_process_group_die_with_the_main_process(make_supervisor, port):
    programs = """
    [[program]]
    name = "parent"
    command = ["sh", "-c", "sleep 300 & echo $! > child.pid; sleep 300"]
    ready_after = 0.1
    """
    sup = make_supervisor(redis_config(None, port, programs=programs)).start()
    p = sup.wait_state("parent", "RUNNING")
    pidfile = sup.dir / "child.pid"
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), what="child pid file")
    orphan = int(pidfile.read_text())
    os.kill(p["pid"], signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE,
             what="orphan killed")


def test_daemonize_yes_is_overridden(make_supervisor, port):
    text = redis_config(None, port).replace('args = ["--save", ""]', 'args = ["--save", "", "--daemonize", "yes"]')
    sup = make_supervisor(text).start()
    p = sup.wait_state("redis", "RUNNING")
    assert "'--daemonize yes' in [redis] args is overridden" in sup.log()
    assert psutil.Process(p["pid"]).ppid() == sup.pid      # still our child, in the foreground


def test_lock_files_are_held_and_readable_by_other_tools(make_supervisor, port):
    sup = make_supervisor(redis_config(None, port)).start()
    sup.wait_state("redis", "RUNNING")
    for path in (sup.dir / "run" / "supervisor.lock", sup.dir / "run" / "redis.lock", sup.dir / "data" / "relayq.lock"):
        r = subprocess.run(["flock", "-n", str(path), "true"])
        assert r.returncode == 1, f"{path} is not locked"
        assert f'"pid": {sup.pid}' in path.read_text()
    assert sup.terminate() == 0
    r = subprocess.run(["flock", "-n", str(sup.dir / "run" / "redis.lock"), "true"])
    assert r.returncode == 0


def test_inherit_log_prefixes_lines(make_supervisor, port):
    programs = """
    [[program]]
    name = "talker"
    command = ["sh", "-c", "echo hello from talker; echo oops >&2; exec sleep 300"]
    log = "inherit"
    ready_after = 0.1
    """
    sup = make_supervisor(redis_config(None, port, programs=programs)).start()
    sup.wait_state("talker", "RUNNING")
    wait_for(lambda: "[talker] oops" in sup.log(), what="prefixed output")
    assert "[talker] hello from talker" in sup.log()


def test_a_program_that_keeps_failing_ends_fatal_with_exit_code(make_supervisor, port):
    programs = """
    [[program]]
    name = "broken"
    command = ["sh", "-c", "exit 3"]
    ready_after = 5
    [program.restart]
    backoff_initial = 0.05
    jitter = 0
    start_limit_burst = 2
    """
    sup = make_supervisor(redis_config(None, port, programs=programs)).start()
    fatal = sup.wait_state("broken", "FATAL")
    assert fatal["last_exit"]["code"] == 3
    assert "gave up: 2 starts in 60s" in fatal["reason"]
    assert "exited 3" in fatal["reason"]


def test_on_failure_and_never_policies(make_supervisor, port):
    programs = """
    [[program]]
    name = "clean"
    command = ["true"]
    ready_after = 5
    [program.restart]
    policy = "on-failure"
    [[program]]
    name = "once"
    command = ["false"]
    ready_after = 5
    [program.restart]
    policy = "never"
    """
    sup = make_supervisor(redis_config(None, port, programs=programs)).start()
    clean = sup.wait_state("clean", "EXITED")
    assert "exited 0 with policy on-failure" in clean["reason"]
    once = sup.wait_state("once", "EXITED")
    assert "policy never" in once["reason"] and once["last_exit"]["code"] == 1


def test_child_stdout_is_a_blocking_pipe(make_supervisor, port):
    # a child must never see EAGAIN on its stdout: only the supervisor's end is non-blocking
    programs = f"""
    [[program]]
    name = "flags"
    command = ["{PYTHON}", "-c",
               "import os, time; print(('' if os.get_blocking(1) else 'non') + 'blocking', flush=True); time.sleep(300)"]
    ready_after = 0.1
    """
    sup = make_supervisor(redis_config(None, port, programs=programs)).start()
    sup.wait_state("flags", "RUNNING")
    log_file = sup.dir / "log" / "flags.log"
    wait_for(lambda: log_file.exists() and log_file.read_text().strip(), what="flags output")
    # the supervisor starts each line with the time it arrived
    assert log_file.read_text().strip().split(" ", 1)[1] == "blocking"
