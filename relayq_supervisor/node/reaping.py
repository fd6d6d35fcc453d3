"""Collecting the children's exits: every waitpid() result goes to the tap (a ptrace stop)
or to the arbiter (an exit); at shutdown, no child, grandchild or zombie survives."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Protocol

from relayq_supervisor.linux import ptrace
from relayq_supervisor.linux.pidfds import kill_pids
from relayq_supervisor.linux.procfs import own_children

REAP_BATCH = 256        # waitpid() results per loop pass (a signal storm stops a tracee at each signal)


class Stops(Protocol):
    """What reaping needs of the witnesses (node/witnessing.py's Witnessing)."""

    def tap_stop(self, pid: int, status: int) -> bool: ...

    def forget(self, pid: int) -> None: ...

    def follow_children(self, also: int | None = None) -> None: ...


class Reaper:
    def __init__(self, loop: asyncio.AbstractEventLoop, witnesses: Stops,
                 exited: Callable[[int, int | None], object]):
        self.loop = loop
        self.witnesses = witnesses
        self.exited = exited                    # Arbiter.child_exited
        self.reaped = asyncio.Event()           # set whenever reap() collects a process

    def reap(self) -> None:
        """Every waitpid() result: traced children's stops go to the tap, exits to the
        arbiter. __WALL: threads of traced children report too."""
        try:
            self.reap_all()
        finally:
            self.witnesses.follow_children()

    def reap_all(self) -> None:
        """The kernel witness's backlog is not read here: the arbiter reads it (Witness.catch_up)
        once it has started the successor of an exit that restarts at once, before judging
        the exit. Nor before a tap stop: a stopped program (Redis at each SIGCHLD of its save
        child) must not wait for the node's trace backlog; the tap's attribution catches up
        itself when it finds a sender gone."""
        for _ in range(REAP_BATCH):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | ptrace.WALL)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.witnesses.tap_stop(pid, status):
                continue
            self.reaped.set()
            self.exited(pid, status)
            self.witnesses.forget(pid)
        # a signal storm keeps a traced child stopping: let the loop answer others between batches
        self.loop.call_soon(self.reap)

    async def end_leftovers(self, deadline_s: float = 5.0) -> None:
        """No child, grandchild or zombie survives the supervisor."""
        deadline = time.monotonic() + deadline_s
        while True:
            self.reap()
            children = own_children()
            if not children or time.monotonic() > deadline:
                return
            kill_pids(children)         # not reaped yet, so each pid is still that child
            self.reaped.clear()
            try:        # their SIGCHLD wakes the signalfd, whose handler reaps and sets this
                await asyncio.wait_for(self.reaped.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass
