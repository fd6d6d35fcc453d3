"""relayqctl logs against a real supervisor's log_dir: stamps, rotation, -f across a
rotation and a restart, the supervisor's own log, and with the supervisor stopped."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import textwrap
import time

from support import PYTHON, wait_for

STAMPED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
COUNTER = "import os, time\nfor i in range(10**6):\n    print(os.getpid(), i, flush=True)\n    time.sleep(0.01)"


def config(numprocs: int = 1) -> str:
    return textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"
        log_max_bytes = 2048
        log_backups = 3

        [[program]]
        name = "counter"
        command = ["{PYTHON}", "-c", {COUNTER!r}]
        numprocs = {numprocs}
        ready_after = 0.2
        """).replace("'", '"')


def ctl_argv(sup, *args):
    return [PYTHON, "-m", "relayq_supervisor.ctl", "logs", "-c", str(sup.config), *args]


def read_lines_until(proc, done, lines: list[str], timeout=30.0) -> list[str]:
    """Lines from proc's stdout added to `lines` until done(lines) is true, with a deadline.
    (A partial line left in the pipe stays there until the next call reads it.)"""
    buf = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while not done(lines):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; last lines: {lines[-5:]}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"relayqctl logs -f ended: {proc.stderr.read().decode()}")
            buf += chunk
            while buf and not buf.endswith(b"\n"):     # whole lines only, so the next call starts clean
                buf += os.read(fd, 65536)
            *complete, buf = buf.split(b"\n")
            lines += [c.decode() for c in complete]
    return lines


def test_logs_follow_across_rotation_and_restart(make_supervisor, procs):
    sup = make_supervisor(config()).start()
    first = sup.wait_state("counter", "RUNNING")["pid"]
    follow = subprocess.Popen(ctl_argv(sup, "counter", "-f", "-n", "3"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    procs.append(follow)
    log_dir = sup.dir / "log"
    # past two rotations (2 KiB files, ~30 bytes a line)
    lines: list[str] = []
    read_lines_until(follow, lambda ls: len(ls) > 200, lines)
    assert (log_dir / "counter.log.2").exists()
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (p := sup.program("counter"))["state"] == "RUNNING" and p["pid"] != first
                      and p["pid"], 20, 0.05, "counter restarted")
    read_lines_until(follow, lambda ls: sum(f" {second} " in x for x in ls) > 20, lines)
    follow.send_signal(signal.SIGINT)
    assert follow.wait(10) == 0
    assert "Traceback" not in follow.stderr.read().decode()

    assert all(STAMPED.match(x) for x in lines), [x for x in lines if not STAMPED.match(x)][:3]
    seen: dict[int, list[int]] = {}
    for x in lines:
        pid, i = x.split()[1:3]
        seen.setdefault(int(pid), []).append(int(i))
    assert set(seen) == {first, second}
    for pid, counts in seen.items():        # nothing lost or repeated across the rotations
        assert counts == list(range(counts[0], counts[0] + len(counts))), pid
    assert seen[second][0] == 0             # the restarted process from its first line


def test_logs_history_instances_supervisor_and_nothing(make_supervisor):
    sup = make_supervisor(config(numprocs=2)).start()
    sup.wait_state("counter:1", "RUNNING")
    wait_for(lambda: (sup.dir / "log" / "counter:1.log.2").exists(), 30, 0.1, "two rotations")
    sup.terminate()                       # works with the supervisor down

    r = subprocess.run(ctl_argv(sup, "counter", "-n", "50"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 50
    assert {x.split()[1] for x in lines} == {"[counter:0]", "[counter:1]"}
    stamps = [x.split()[0] for x in lines]
    assert stamps == sorted(stamps)       # merged by time

    one = subprocess.run(ctl_argv(sup, "counter:1", "-n", "100"), capture_output=True, text=True, timeout=30)
    counts = [int(x.split()[2]) for x in one.stdout.splitlines()]
    assert len(counts) == 100 and counts == list(range(counts[0], counts[0] + 100))   # rotated files too

    own = subprocess.run(ctl_argv(sup, "supervisor"), capture_output=True, text=True, timeout=30)
    assert own.returncode == 0 and STAMPED.match(own.stdout)
    assert "all programs stopped, exiting" in own.stdout.splitlines()[-1]

    since = subprocess.run(ctl_argv(sup, "counter", "--since", "2030-01-01T00:00:00"), capture_output=True,
                           text=True, timeout=30)
    assert (since.returncode, since.stdout) == (0, "")
    assert "nothing since 2030-01-01T00:00:00" in since.stderr

    unknown = subprocess.run(ctl_argv(sup, "nope"), capture_output=True, text=True, timeout=30)
    assert unknown.returncode == 4
    assert "no program or instance named 'nope' (known: supervisor, counter, counter:0, counter:1)" in unknown.stderr

    bad = subprocess.run(ctl_argv(sup, "counter", "--since", "yesterday"), capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_logs_of_a_program_that_wrote_nothing(make_supervisor):
    sup = make_supervisor(config().replace("autostart", "x") + "autostart = false\n")
    r = subprocess.run(ctl_argv(sup, "counter"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == ""
    assert "counter: no output yet" in r.stderr
