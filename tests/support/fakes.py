"""In-process stand-ins for the arbiter's collaborators: a clock whose time moves only
when a test says so, a spawner whose children are records, a witness that keeps what
it was told. They implement the same Protocols as the real ones (core/collaborators.py)."""
from __future__ import annotations

import heapq
import itertools
import signal
from typing import Any

from relayq_supervisor.config.load import parse_config
from relayq_supervisor.config.model import Config
from relayq_supervisor.core.arbiter import Arbiter
from relayq_supervisor.kinds import KindContext, make_kind


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start
        self.timers: list[tuple[float, int, FakeTimer, Any, tuple[Any, ...]]] = []
        self.seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Any, *args: Any) -> FakeTimer:
        handle = FakeTimer()
        heapq.heappush(self.timers, (self.now + delay, next(self.seq), handle, callback, args))
        return handle

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in order (each at its own time)."""
        until = self.now + seconds
        while self.timers and self.timers[0][0] <= until:
            when, _, handle, callback, args = heapq.heappop(self.timers)
            self.now = max(self.now, when)
            if not handle.cancelled:
                callback(*args)
        self.now = until


def exit_status(code: int) -> int:
    """A wait status for an exit with `code`."""
    return (code & 0xFF) << 8


def kill_status(signo: int) -> int:
    """A wait status for a death by `signo`."""
    return signo


class FakeChild:
    def __init__(self, pid: int, argv: list[str], env: dict[str, str]):
        self.pid = pid
        self.argv = argv
        self.env = env
        self.signals: list[int] = []
        self.alive = True
        self.group_killed = False
        self.exec_failure: str | None = None
        self.closed = False

    def send_signal(self, signo: int) -> bool:
        if not self.alive:
            return False
        self.signals.append(signo)
        return True

    def kill_group(self) -> bool:
        self.group_killed = True
        return False

    def descendants(self) -> list[int]:
        return []

    def members(self) -> list[int] | None:
        return None

    def exec_error(self) -> str | None:
        return self.exec_failure

    def close(self) -> None:
        self.closed = True


class FakeSpawner:
    def __init__(self) -> None:
        self.pids = itertools.count(5000)
        self.children: list[FakeChild] = []
        self.fail_with: OSError | None = None
        self.released: list[str] = []

    def spawn(self, p: Any, argv: list[str], env: dict[str, str]) -> FakeChild:
        if self.fail_with is not None:
            raise self.fail_with
        child = FakeChild(next(self.pids), argv, env)
        child.program = p.name      # type: ignore[attr-defined]
        self.children.append(child)
        return child

    def release(self, p: Any) -> None:
        self.released.append(p.name)

    def of(self, name: str) -> list[FakeChild]:
        return [c for c in self.children if c.program == name]    # type: ignore[attr-defined]


class FakeWitness:
    def traced(self, pid: int) -> bool:
        return True

    def __init__(self) -> None:
        self.records: list[tuple[str | None, int, int, dict[str, Any]]] = []

    def catch_up(self) -> None:
        pass

    def record(self, p: Any, pid: int, signo: int, **fields: Any) -> dict[str, Any]:
        self.records.append((p.name if p else None, pid, signo, fields))
        event = {"event": "signal", "signo": signo, **fields}
        if p is not None:
            p.remember(event)
        return event


class FakeProbe:
    def __init__(self) -> None:
        self.rss_by_pid: dict[int, int] = {}

    def rss(self, pgid: int, members: list[int] | None = None) -> int | None:
        return self.rss_by_pid.get(pgid, 1024)

    def evidence(self, pid: int) -> dict[str, Any]:
        return {"pid": pid, "state": "sleeping", "wchan": "ep_poll"}


class FakeLocks:
    def take(self, key: str, path: str, what: str, why: str = "") -> None:
        pass


class Rig:
    """An arbiter on a config text, with fakes all round."""

    def __init__(self, text: str, path: str = "/etc/relayq/test.toml"):
        self.config: Config = parse_config(text.encode(), path)
        self.clock = FakeClock()
        self.spawner = FakeSpawner()
        self.witness = FakeWitness()
        self.probe = FakeProbe()
        self.events: list[dict[str, Any]] = []
        self.ctx = KindContext(supervisor=self.config.supervisor, call_later=self.clock.call_later,
                               locks=FakeLocks(), audit=self.audit, name_process=lambda pid: None)
        self.arbiter = Arbiter(self.config, {s.name: make_kind(s, self.ctx) for s in self.config.programs},
                               spawner=self.spawner, clock=self.clock, audit=self.audit, witness=self.witness,
                               base_env={"PATH": "/usr/bin"}, probe=self.probe)

    def audit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"event": kind, **fields}
        self.events.append(event)
        return event

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    def program(self, name: str) -> Any:
        return self.arbiter.graph.by_name[name]

    def child(self, name: str) -> FakeChild:
        """The current child of program instance `name`."""
        proc = self.program(name).proc
        assert proc is not None, f"{name} has no process"
        return proc

    def exit(self, name: str, status: int) -> FakeChild:
        child = self.child(name)
        child.alive = False
        assert self.arbiter.child_exited(child.pid, status)
        return child

    def state(self, name: str) -> str:
        return str(self.program(name).state)

    def states(self) -> dict[str, str]:
        return {p.name: str(p.state) for p in self.arbiter.programs}


def stop_on(signo: int = signal.SIGTERM) -> int:
    return kill_status(signo)
