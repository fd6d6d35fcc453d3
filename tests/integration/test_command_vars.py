"""$VAR / ${VAR} / $$ in a real program's command, from the environment the supervisor gives it."""
from __future__ import annotations

import json
import textwrap

from support import PYTHON, wait_for

PRINT_ARGV = "import json, sys, time; print(json.dumps(sys.argv[1:]), flush=True); time.sleep(600)"


def test_command_variables_come_from_the_childs_environment(make_supervisor):
    sup = make_supervisor(textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"

        [[program]]
        name = "w"
        command = ["{PYTHON}", "-c", "{PRINT_ARGV}", "--name=${{RELAYQ_PROGRAM}}", "$FLAGS", "${{FLAGS}}", "a$$b"]
        environment = {{ FLAGS = "-v --fast" }}
        numprocs = 2
        ready_after = 0.2
        """))
    sup.start()
    sup.wait_state("w:1", "RUNNING")
    log = sup.dir / "log" / "w:1.log"
    line = wait_for(lambda: log.exists() and log.read_text().strip(), 10, what="w:1's argv")
    assert json.loads(line.split(" ", 1)[1]) == ["--name=w:1", "-v", "--fast", "-v --fast", "a$b"]
