"""relayqctl start/stop/restart: ask the arbiter, then wait for each program's outcome."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from relayq_supervisor.core.graph import Graph
from relayq_supervisor.core.program import Program
from relayq_supervisor.core.states import ENDED, State


@dataclass(frozen=True)
class Outcome:
    name: str
    state: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Operated(Protocol):
    """What operator commands need of the arbiter."""

    @property
    def graph(self) -> Graph[Program]: ...

    @property
    def shutting_down(self) -> bool: ...

    def want_started(self, targets: Iterable[Program], who: str) -> None: ...

    async def want_stopped(self, targets: list[Program], who: str, *, force: bool = False) -> None: ...

    async def stop_in_order(self, targets: Iterable[Program], reason: str, *, force: bool = False,
                            until_refused: bool = False) -> None: ...

    async def wait_until(self, check: Callable[[], Any]) -> Any: ...


def start_outcome(arbiter: Operated, p: Program, starts_before: int) -> Outcome | None:
    """None while a start is still on its way."""
    if p.state == State.RUNNING:
        return Outcome(p.name, p.state, True, f"running, pid {p.pid}")
    started = p.starts > starts_before
    if p.state in ENDED or (p.state == State.BACKOFF and started) or (p.state == State.STOPPED and not p.wanted):
        return Outcome(p.name, p.state, False, p.reason)
    for d in arbiter.graph.dependencies(p):
        if d.state in ENDED or not d.wanted:
            return Outcome(p.name, p.state, False, f"dependency {d.name} is {d.state}: {d.reason}")
    return None


async def start(arbiter: Operated, targets: list[Program], who: str, force: bool = False) -> None:
    """Start them (and what they depend on); return once each runs or has failed."""
    before = {p.name: p.starts for p in targets}
    arbiter.want_started(targets, who)
    await arbiter.wait_until(lambda: None if any(start_outcome(arbiter, p, before[p.name]) is None
                                                 for p in targets) else True)


async def stop(arbiter: Operated, targets: list[Program], who: str, force: bool = False) -> None:
    """Returns when they have exited, or when one's stop was refused (Redis' final save
    failed: it keeps running, and its reason says so)."""
    await arbiter.want_stopped(targets, who, force=force)


async def restart(arbiter: Operated, targets: list[Program], who: str, force: bool = False) -> None:
    await arbiter.stop_in_order(targets, who, until_refused=True)
    if any(p.proc is not None for p in targets):
        return      # a refused stop: it still runs, its reason says why
    await start(arbiter, targets, who)


ACTIONS = {"start": start, "stop": stop, "restart": restart}


def final_outcome(cmd: str, p: Program) -> Outcome:
    if cmd == "stop":
        return Outcome(p.name, p.state, p.state == State.STOPPED, p.reason)
    ok = p.state == State.RUNNING
    return Outcome(p.name, p.state, ok, f"running, pid {p.pid}" if ok else p.reason)
