"""relayqctl's output for people: colour only on a terminal, --watch, a reader that
goes away (`| head -1`)."""
from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import textwrap
import time

import pytest
from support import PYTHON

from relayq_supervisor.shell_text import command_line

CONFIG = textwrap.dedent(f"""\
    [supervisor]
    run_dir = "run"
    log_dir = "log"

    [[program]]
    name = "sleeper"
    command = ["{PYTHON}", "-c", "import time; time.sleep(3600)"]
    ready_after = 0.1

    [[program]]
    name = "idle"
    command = ["{PYTHON}", "-c", "import time; time.sleep(3600)"]
    autostart = false
    """)


@pytest.fixture
def running(make_supervisor):
    sup = make_supervisor(CONFIG).start()
    sup.wait_state("sleeper", "RUNNING")
    return sup


def ctl(sup, *args) -> list[str]:
    return [PYTHON, "-m", "relayq_supervisor.ctl", *args, "-c", str(sup.config)]


def run_on_terminal(argv, env, timeout=30.0) -> str:
    """argv's output when its stdout is a terminal (a pty)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(argv, stdout=terminal, stderr=subprocess.PIPE, env=env)
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:         # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout) in (0, 3)
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.decode()


def test_status_colours_states_on_a_terminal_only(running):
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm"}
    coloured = run_on_terminal(ctl(running, "status"), env)
    assert "\x1b[32mRUNNING" in coloured and "\x1b[2mSTOPPED" in coloured
    plain = run_on_terminal(ctl(running, "status"), env | {"NO_COLOR": "1"})
    assert "RUNNING" in plain and "\x1b[" not in plain
    piped = subprocess.run(ctl(running, "status"), capture_output=True, text=True, env=env, timeout=30)
    assert "RUNNING" in piped.stdout and "\x1b[" not in piped.stdout
    # colour codes do not shift the columns: each row's pid sits under the PID heading
    lines = coloured.replace("\r", "").splitlines()
    column = next(line for line in lines if line.startswith("NAME")).index("PID")
    for row in (line for line in lines if line.startswith(("sleeper", "idle"))):
        bare = row.replace("\x1b[32m", "").replace("\x1b[2m", "").replace("\x1b[0m", "")
        assert bare[column - 1] == " " and (bare[column].isdigit() or bare[column] == "-"), bare


def test_status_watch_redraws_until_interrupted(running):
    proc = subprocess.Popen(ctl(running, "status", "--watch"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = b""
        deadline = time.monotonic() + 20
        while seen.count(b"Ctrl-C to stop") < 3 or seen.count(b"sleeper") < 3:     # three whole redraws
            assert time.monotonic() < deadline, seen[-500:]
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if ready:
                seen += os.read(proc.stdout.fileno(), 65536)
        assert seen.count(b"sleeper") >= 3 and b"\x1b[2J" not in seen     # no screen codes into a pipe
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args", [("status",), ("logs", "supervisor", "-n", "100")])
def test_a_reader_that_goes_away_ends_it_quietly(running, args):
    # the pipe's reading end is closed before relayqctl writes: what `| head -1` does to it
    read_end, write_end = os.pipe()
    os.close(read_end)
    r = subprocess.run(ctl(running, *args), stdout=write_end, stderr=subprocess.PIPE, timeout=30)
    os.close(write_end)
    assert r.returncode == 1
    assert r.stderr == b""


def test_head_1_of_status(running):
    r = subprocess.run(["sh", "-c", " ".join(ctl(running, "status")) + " | head -1"], capture_output=True,
                       text=True, timeout=30)
    assert r.stdout.startswith("relayq-supervisor pid ")
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash to read the quoting back")
def test_bash_reads_a_quoted_command_back_to_the_same_argv():
    argv = ["redis-server", "--save", "", "echo hi\n2026 fake line\x1b[2J", "it's", "a b", "$HOME", "é"]
    text = command_line(argv)
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {text}"], capture_output=True, text=True, check=True)
    assert out.stdout.split("\0")[:-1] == argv
