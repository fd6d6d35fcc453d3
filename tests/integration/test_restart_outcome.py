"""relayqctl restart of a program whose instance dies while it starts: each instance's line
says what happened to it (issue 15, item 6)."""
from __future__ import annotations

import os
import signal
import subprocess
import textwrap

from support import PYTHON, wait_for


def test_restart_names_the_instance_that_died_while_starting(make_supervisor, procs):
    sup = make_supervisor(textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"

        [[program]]
        name = "rqworker"
        command = ["{PYTHON}", "-c", "import time; time.sleep(600)"]
        numprocs = 2
        ready_after = 2.0
        """))
    sup.start()
    old = sup.wait_state("rqworker:1", "RUNNING")["pid"]
    restart = subprocess.Popen([PYTHON, "-m", "relayq_supervisor.ctl", "restart", "-c", str(sup.config), "rqworker"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=sup.dir)
    procs.append(restart)

    def new_starting_pid():
        p = next(p for p in sup.status()["programs"] if p["name"] == "rqworker:1")
        return p["pid"] if p["state"] == "STARTING" and p["pid"] not in (None, old) else None
    victim = wait_for(new_starting_pid, 20, what="rqworker:1 started again by the restart")
    os.kill(victim, signal.SIGKILL)
    out, err = restart.communicate(timeout=60)
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["rqworker:0"].startswith("RUNNING (running, pid "), out
    assert f"pid {victim} died during the start: killed by SIGKILL" in lines["rqworker:1"], out
    # it was still on its way back when rqworker:0 was ready (ready_after 2 s): not all RUNNING
    assert restart.returncode == 1 and " now " in lines["rqworker:1"], (restart.returncode, out, err)
