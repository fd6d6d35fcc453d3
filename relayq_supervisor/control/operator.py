"""relayqctl start/stop/restart: ask the arbiter, then wait for each program's outcome."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from relayq_supervisor.core.graph import Graph
from relayq_supervisor.core.program import ExitInfo, Program
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


@dataclass
class Began:
    """What an instance was when an operator's start began: a run of it that ends after
    this is a death during the operation, whatever its restart rules do next."""
    starts: int
    last_exit: ExitInfo | None

    @classmethod
    def of(cls, p: Program) -> Began:
        return cls(p.starts, p.last_exit)


def died_during(p: Program, began: Began) -> str | None:
    """`pid 812 died during the start: killed by SIGKILL, ...`, or None."""
    if p.last_exit is began.last_exit or p.starts <= began.starts or p.last_exit is None:
        return None
    pid = (p.last_stop or {}).get("exit", {}).get("pid")
    return f"{f'pid {pid} ' if pid else ''}died during the start: {p.last_exit.describe()}"


def start_outcome(arbiter: Operated, p: Program, began: Began) -> Outcome | None:
    """None while a start is still on its way. An instance that died after it was started
    is settled at once, whatever its restart rules do next: the operation waits for no
    backoff (the others' outcomes do not wait on it), and says what happened."""
    died = died_during(p, began)
    if p.state == State.RUNNING:
        return Outcome(p.name, p.state, True, f"running, pid {p.pid}" + (f" (again, after {died})" if died else ""))
    if died:
        if p.state == State.STARTING:
            now = f"started again, pid {p.pid}, not ready yet"
        elif p.state == State.BACKOFF and p.next_start_at is not None:
            now = f"BACKOFF, next start in {p.status()['next_start_in_s']:.1f}s, {p.tracker.failures_text()}"
        else:
            now = f"{p.state}: {p.reason}"
        return Outcome(p.name, p.state, False, f"{died}; now {now}")
    if p.state in ENDED or (p.state == State.STOPPED and not p.wanted):
        return Outcome(p.name, p.state, False, p.reason)
    for d in arbiter.graph.dependencies(p):
        if d.state in ENDED or not d.wanted:
            return Outcome(p.name, p.state, False, f"dependency {d.name} is {d.state}: {d.reason}")
    return None


async def start(arbiter: Operated, targets: list[Program], who: str, force: bool = False) -> list[Outcome]:
    """Start them (and what they depend on); return once each runs or has failed, with
    each one's outcome as it was at that moment."""
    began = {p.name: Began.of(p) for p in targets}
    arbiter.want_started(targets, who)

    def settled() -> list[Outcome] | None:
        outcomes = [start_outcome(arbiter, p, began[p.name]) for p in targets]
        return None if any(o is None for o in outcomes) else [o for o in outcomes if o is not None]
    outcomes: list[Outcome] = await arbiter.wait_until(settled)
    return outcomes


async def stop(arbiter: Operated, targets: list[Program], who: str, force: bool = False) -> list[Outcome]:
    """Returns when they have exited, or when one's stop was refused (Redis' final save
    failed: it keeps running, and its reason says so)."""
    await arbiter.want_stopped(targets, who, force=force)
    return [final_outcome("stop", p) for p in targets]


async def restart(arbiter: Operated, targets: list[Program], who: str, force: bool = False) -> list[Outcome]:
    await arbiter.stop_in_order(targets, who, until_refused=True)
    if any(p.proc is not None for p in targets):
        return [final_outcome("restart", p) for p in targets]      # a refused stop: it still runs, its reason says why
    return await start(arbiter, targets, who)


ACTIONS = {"start": start, "stop": stop, "restart": restart}


def final_outcome(cmd: str, p: Program) -> Outcome:
    if cmd == "stop":
        return Outcome(p.name, p.state, p.state == State.STOPPED, p.reason)
    ok = p.state == State.RUNNING
    return Outcome(p.name, p.state, ok, f"running, pid {p.pid}" if ok else p.reason)
