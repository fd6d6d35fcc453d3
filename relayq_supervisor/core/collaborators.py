"""What the arbiter and its parts (core/watching.py, core/stopping.py) see of the world,
as narrow Protocols: processes from a Spawner, time from a Clock, signal records from the
Witness, /proc readings from a Probe, events to the Audit. The real ones are wired up in
node/; tests/support/fakes.py has in-process stand-ins."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from relayq_supervisor.core.program import ChildHandle, Program
from relayq_supervisor.kinds import Cancellable


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Cancellable: ...


class Spawner(Protocol):
    def spawn(self, p: Program, argv: list[str], env: dict[str, str]) -> ChildHandle:
        """Start p's process (OSError if it cannot); its output goes where p.spec says."""
        ...

    def release(self, p: Program) -> None:
        """p is gone for good (removed, or the supervisor exits): close its output."""
        ...


class Witness(Protocol):
    def traced(self, pid: int) -> bool:
        """Does the signal tap stop at this process' signals (so a SIGKILL is one it missed)?"""
        ...

    def record(self, p: Program | None, pid: int, signo: int, **fields: Any) -> dict[str, Any]: ...

    def catch_up(self) -> None:
        """Read what the witnesses learnt but have not delivered yet (the kernel trace's
        backlog): before an exit is judged, the signal that caused it is known."""
        ...


class Audit(Protocol):
    def __call__(self, kind: str, **fields: Any) -> dict[str, Any]: ...


class Probe(Protocol):
    """What the watchdog reads of a live process (witness/evidence.py)."""

    def rss(self, pgid: int, members: list[int] | None = None) -> int | None: ...

    def evidence(self, pid: int) -> dict[str, Any]: ...
