"""Everything a program started goes when it goes: its descendants, found and stopped.

A program that double-forks and calls setsid() leaves its process group and session; its
daemon is reparented to the supervisor (a subreaper) and would outlive stops and restarts.

With a cgroup hierarchy we may write (root, or systemd's Delegate=yes): each run of a
program gets a group of its own, `<our group>/relayq-<owner key>/<instance>@<run>`, which
the child enters at spawn's exec gate, before the program's first instruction; stopping
kills the whole group and removes it once empty; the supervisor's exit removes the rest.
One group per run, not per instance: a run's leftovers may still be dying while its
successor starts, and a kill pass over the old group must not reach the new process.

Off the restart path: once a run has started, its successor's empty group is made
(`prepare`), so a restart only writes the new pid into cgroup.procs; a group is always
made new (mkdir that fails on an existing name: a predecessor's group of the same run id
may still be draining), and an old run's empty group is removed after the loop has
started its successor. What stays on the path is the kernel's: moving a process between
groups waits for an RCU grace period (cgroup_threadgroup_rwsem, several ms on an idle
machine) unless the hierarchy is mounted with `favordynmods` (cgroup-v2.rst). So the wait
is begun early (`warm_up`, on the first sign of a child's end, in a thread of its own): a
move that comes while that grace period runs, or just after, waits only for what is left.
On cgroup v2 no move is needed at all where the kernel takes clone3's CLONE_INTO_CGROUP:
core/spawn.py then makes the child in its group (`open_group` gives it the group), and the
end of such a child begins no warm-up (that fork is made only while the supervisor runs
one thread, so a warm-up thread would turn it off).

Without one (`[supervisor] cgroups = false`, no hierarchy, not allowed): a descendant is
what the main process' tree holds, plus the supervisor's reparented children (orphans
come to a subreaper) that carry the run's RELAYQ_INSTANCE in their environment (set at
spawn, inherited through forks and execs unless a program clears it), and their trees.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass

from relayq_supervisor.background import start_task
from relayq_supervisor.linux import cgroups
from relayq_supervisor.linux.pidfds import kill_pids
from relayq_supervisor.linux.procfs import own_children, process_children, process_environ_value, process_state

log = logging.getLogger(__name__)

DRAIN_DEADLINE_S = 5.0      # killing a group's members: give up (and say so) after this long
DRAIN_PAUSE_S = 0.02
# Without groups, the supervisor's children are sorted by marker once for a whole status
# call, not once per program: 1000 instances would read 10^6 (and the environ of none of
# the main processes: _marked).
MARKS_FRESH_S = 0.2
MARKER = "RELAYQ_INSTANCE"  # "<instance>@<run>", in every program's environment


@dataclass(frozen=True)
class Run:
    """One run of a program instance: its id (the group's name and the marker's value) and its group."""
    id: str
    group: str | None


class Containment:
    """The supervisor's groups for program runs, or the fallback when there are none."""

    def __init__(self, hierarchy: cgroups.Hierarchy | None, key: str, why_none: str = ""):
        self.hierarchy = hierarchy
        self.base = os.path.join(hierarchy.own, f"relayq-{key}") if hierarchy is not None else None
        self.why_none = why_none
        self.runs = 0
        self.draining: dict[str, asyncio.Task[None]] = {}
        self._marks: dict[str, list[int]] = {}     # run id -> our children that carry it
        self._marks_at = float("-inf")
        self.mains: dict[int, str] = {}            # main pid -> its run id, while it is our child
        self.prepared: dict[str, Run] = {}         # instance -> the empty group of its next run
        # a short-lived thread per warm-up: while none runs, spawn's clone way (one thread only) may fork
        self._warming: threading.Thread | None = None
        self._warm_refused = False
        self.born_in_group = False      # the last child was made in its group (no move): for `state`

    @classmethod
    def open(cls, enabled: bool, key: str) -> Containment:
        """Groups where we may make them (checked by making our base group); else the fallback."""
        if not enabled:
            return cls(None, key, "[supervisor] cgroups = false")
        hierarchy = cgroups.own_hierarchy()
        if hierarchy is None:
            return cls(None, key, "no cgroup hierarchy mounted")
        made = cls(hierarchy, key)
        assert made.base is not None
        try:
            cgroups.make_group(made.base)
        except OSError as e:
            return cls(None, key, f"cannot make a cgroup under {hierarchy.own}: {e.strerror}; "
                                  "under systemd that needs Delegate=yes and "
                                  "ProtectControlGroups=no")
        return made

    @property
    def state(self) -> str:
        if self.hierarchy is None:
            return f"by process tree and environment ({self.why_none})"
        kill = "cgroup.kill" if self.base and self.hierarchy.has_kill_file(self.base) else "SIGKILL to each member"
        moves = "children born in their group" if self.born_in_group else "favordynmods" \
            if self.hierarchy.favordynmods else "no favordynmods: a move waits for an RCU grace period"
        return f"cgroup v{self.hierarchy.version} {self.base} ({kill}; {moves})"

    def new_run(self, instance: str) -> Run:
        """A fresh run of `instance`, with a group of its own where groups can be made (the
        one `prepare` made ahead, if any)."""
        run = self.prepared.pop(instance, None)
        if run is not None:
            return run
        return self._make_run(instance, quiet=False)

    def prepare(self, instance: str) -> None:
        """Make the empty group of `instance`'s next run now, off the restart path."""
        if self.base is not None and instance not in self.prepared:
            run = self._make_run(instance, quiet=True)
            if run.group is not None:
                self.prepared[instance] = run

    def discard(self, instance: str) -> None:
        """Remove the group prepared for `instance`'s next run (it will not run again)."""
        run = self.prepared.pop(instance, None)
        if run is not None:
            self._remove(run)

    def _make_run(self, instance: str, quiet: bool) -> Run:
        while True:
            self.runs += 1
            run_id = f"{instance}@{self.runs}"
            if self.base is None:
                return Run(run_id, None)
            path = os.path.join(self.base, run_id)
            try:
                cgroups.make_new_group(path)
                return Run(run_id, path)
            except FileExistsError:
                continue        # a predecessor's run of this id (adopted, or still draining)
            except OSError as e:
                if not quiet:
                    log.warning("%s: cannot make cgroup %s (%s); its descendants are found by process tree",
                                instance, path, e.strerror)
                return Run(run_id, None)

    def warm_up(self) -> None:
        """A move into a group is coming (a child ended, its restart may follow): begin the
        kernel's grace period now, off the loop (see the module doc). Not where moves are
        cheap (favordynmods) or one is already under way; given up after a refusal."""
        hierarchy = self.hierarchy
        if hierarchy is None or hierarchy.favordynmods or self._warm_refused or \
                (self._warming is not None and self._warming.is_alive()):
            return
        self._warming = threading.Thread(target=self._rewrite_own, args=(hierarchy,), name="relayq-cgroup-warm",
                                         daemon=True)
        self._warming.start()

    def _rewrite_own(self, hierarchy: cgroups.Hierarchy) -> None:
        try:
            cgroups.rewrite_own(hierarchy)
        except OSError as e:
            log.info("cgroup %s: cannot write our own pid (%s); moves are not begun early", hierarchy.own,
                     e.strerror)
            self._warm_refused = True

    def open_group(self, run: Run) -> int | None:
        """An fd on the run's group directory for a child to be born in (clone3's
        CLONE_INTO_CGROUP: cgroup v2 only), or None; the caller closes it."""
        if run.group is None or self.hierarchy is None or self.hierarchy.version != 2:
            return None
        try:
            return os.open(run.group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None

    def place(self, run: Run, pid: int) -> None:
        """Before exec (at spawn's gate): every process it will ever fork is born in the group."""
        self.mains[pid] = run.id
        if run.group is not None:
            cgroups.place(run.group, pid)

    def adopted_run(self, pid: int) -> Run | None:
        """The run of a process a predecessor started, if its group is one of ours (same owner key)."""
        if self.hierarchy is None or self.base is None:
            return None
        group = cgroups.group_of(pid, self.hierarchy)
        if group is None or not group.startswith(self.base + "/"):
            return None
        return Run(os.path.basename(group), group)

    def members(self, run: Run) -> list[int]:
        """Every process in the run's group and below (empty without a group)."""
        return cgroups.all_members(run.group) if run.group is not None else []

    def descendants(self, run: Run, main_pid: int | None, *, fresh: bool = False) -> list[int]:
        """Every live process of this run but the main one. Without a group, from our
        children's markers as read at most MARKS_FRESH_S ago unless `fresh` (for killing)."""
        if run.group is not None:
            return sorted(p for p in cgroups.all_members(run.group) if p != main_pid)
        roots = [main_pid] if main_pid is not None else []
        roots += [p for p in self._marked(fresh).get(run.id, []) if p != main_pid]
        seen = set(roots)
        stack = list(roots)
        found = []
        while stack:
            pid = stack.pop()
            if pid != main_pid and process_state(pid) not in (None, "Z"):     # a zombie is not running
                found.append(pid)
            for child in process_children(pid):
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        return sorted(found)

    def _marked(self, fresh: bool) -> dict[str, list[int]]:
        """Our children by marker: a main process we spawned carries its run's (placed at
        spawn, forgotten at end_run, after its reap), only the others' (orphans adopted as
        subreaper) are read from /proc/PID/environ, which reaches into each one's memory."""
        now = time.monotonic()
        if fresh or now - self._marks_at > MARKS_FRESH_S:
            marks: dict[str, list[int]] = {}
            children = own_children()
            for pid in children:
                mark = self.mains.get(pid)
                if mark is None:
                    mark = process_environ_value(pid, MARKER)
                if mark is not None:
                    marks.setdefault(mark, []).append(pid)
            alive = set(children)       # a main no longer our child is forgotten, however that came
            self.mains = {pid: run_id for pid, run_id in self.mains.items() if pid in alive}
            self._marks, self._marks_at = marks, now
        return self._marks

    def end_run(self, run: Run) -> int:
        """After the main process is gone: SIGKILL to what it left, then (in the background)
        again to what those forked meanwhile, until none is left or DRAIN_DEADLINE_S; an
        empty group is removed. Answers how many were signalled now (-1: cgroup.kill, count
        unknown)."""
        for pid in [pid for pid, run_id in self.mains.items() if run_id == run.id]:
            del self.mains[pid]
        if not self.descendants(run, None, fresh=True):
            self._remove_soon(run)
            return 0
        killed = self._kill(run)
        if run.id not in self.draining:
            self.draining[run.id] = start_task(self.drain(run), f"drain {run.id}")
        return killed

    async def drain(self, run: Run, deadline_s: float = DRAIN_DEADLINE_S) -> None:
        deadline = time.monotonic() + deadline_s
        try:
            while left := self.descendants(run, None, fresh=True):
                if time.monotonic() > deadline:
                    log.error("%s: processes still alive %gs after SIGKILL (pids %s)", run.id, deadline_s,
                              " ".join(map(str, left[:10])))
                    return
                self._kill(run)
                await asyncio.sleep(DRAIN_PAUSE_S)
            self._remove(run)
        finally:
            self.draining.pop(run.id, None)

    def _kill(self, run: Run) -> int:
        if run.group is not None and self.hierarchy is not None:
            return cgroups.kill_all(run.group, self.hierarchy)
        return kill_pids(self.descendants(run, None, fresh=True))

    def _remove_soon(self, run: Run) -> None:
        """After what the loop has due now (a restart): the group is empty, its removal can wait."""
        if run.group is None:
            return
        try:
            asyncio.get_running_loop().call_soon(self._remove, run)
        except RuntimeError:
            self._remove(run)

    @staticmethod
    def _remove(run: Run) -> None:
        if run.group is not None and not cgroups.remove(run.group):
            log.warning("%s: cannot remove cgroup %s", run.id, run.group)

    async def shutdown(self) -> None:
        """At the supervisor's exit, after its programs stopped: empty our groups (bounded)."""
        if self.base is None or self.hierarchy is None:
            return
        deadline = time.monotonic() + DRAIN_DEADLINE_S
        while cgroups.all_members(self.base) and time.monotonic() < deadline:
            cgroups.kill_all(self.base, self.hierarchy)
            await asyncio.sleep(DRAIN_PAUSE_S)

    def close(self) -> None:
        """Remove our groups (what the loop cannot wait for any more is left, and said)."""
        for task in list(self.draining.values()):
            task.cancel()
        self.prepared.clear()       # empty groups under base: removed with it
        if self.base is not None and not cgroups.remove(self.base):
            log.warning("cgroup %s: cannot remove it at exit (pids %s)", self.base,
                        " ".join(map(str, cgroups.all_members(self.base)[:10])))

