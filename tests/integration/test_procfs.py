"""The /proc readers that need a real child process (the pure ones are in tests/unit/test_procfs.py)."""
import subprocess

from relayq_supervisor.linux.procfs import own_children


def test_own_children_lists_a_child_of_this_process(procs):
    child = subprocess.Popen(["sleep", "30"])
    procs.append(child)
    assert child.pid in own_children()
