"""core/containment.py without cgroups: which of the supervisor's children carry which run's
marker. A main process we spawned is known by its run (its environ is not read); the
others' (orphans adopted as subreaper) are read. Pids past pid_max: no real process is touched."""
from __future__ import annotations

from relayq_supervisor.core import containment
from relayq_supervisor.core.containment import Containment, Run

MAIN, ORPHAN = 4_194_304 + 11, 4_194_304 + 12     # above the largest pid_max: never a process


def test_a_main_process_marker_is_known_and_only_the_orphans_are_read(monkeypatch):
    children, reads = [MAIN, ORPHAN], []
    monkeypatch.setattr(containment, "own_children", lambda: list(children))
    monkeypatch.setattr(containment, "process_environ_value", lambda pid, name: reads.append(pid) or "a@1")
    c = Containment(None, "k", "test")
    run = Run("a@1", None)
    c.place(run, MAIN)
    assert c._marked(fresh=True) == {"a@1": [MAIN, ORPHAN]}
    assert reads == [ORPHAN]
    # once its run ended (after its reap), a process of that pid is read like any other
    assert c.end_run(run) == 0
    reads.clear()
    assert c._marked(fresh=True) == {"a@1": [MAIN, ORPHAN]}
    assert reads == [MAIN, ORPHAN]


def test_a_main_that_is_no_longer_our_child_is_forgotten(monkeypatch):
    children, reads = [MAIN], []
    monkeypatch.setattr(containment, "own_children", lambda: list(children))
    monkeypatch.setattr(containment, "process_environ_value", lambda pid, name: reads.append(pid) or None)
    c = Containment(None, "k", "test")
    c.place(Run("a@1", None), MAIN)
    assert c._marked(fresh=True) == {"a@1": [MAIN]} and reads == []
    children.clear()
    assert c._marked(fresh=True) == {} and c.mains == {}
    children.append(MAIN)       # the pid again, another process: its own environ says
    assert c._marked(fresh=True) == {} and reads == [MAIN]
