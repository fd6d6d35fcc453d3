"""Kinds of program: what differs between supervising Redis and supervising a worker.

The arbiter treats every program alike and asks its kind the questions whose answers
differ: may it start now, with which argv, what it gives every other child, when it
is ready, what it does in the background, what a reload may not change. ExecKind
(kinds/exec.py) is a plain program; RedisKind (kinds/redis/) is Redis, whose specifics
live nowhere else. A new kind implements ProgramKind and is chosen in `make_kind`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from relayq_supervisor.config.model import Config, ProgramSpec, SupervisorSpec


class Cancellable(Protocol):
    """A pending timer or task."""

    def cancel(self) -> Any: ...


class Program(Protocol):
    """What a kind sees of a program instance (core.program.Program is one)."""

    @property
    def name(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def output_tail(self) -> Iterable[str]:
        """Its last lines of output (empty when its output is not captured)."""
        ...

    def remember(self, event: dict[str, Any]) -> None:
        """Keep an audit event about it as evidence for `relayqctl why`."""
        ...


class CallLater(Protocol):
    def __call__(self, delay: float, callback: Callable[..., Any], *args: Any) -> Cancellable: ...


class Locks(Protocol):
    def take(self, key: str, path: str, what: str, why: str = "", keep: dict[str, Any] | None = None,
             take_from: Callable[[int | None], str | None] | None = None) -> str | None:
        """Take an ownership lock or raise StartupError naming its owner; `keep` carries
        fields of the previous record into ours. `take_from`: the file is in a directory
        another user may write; why its holder (a pid, None if unknown) is no owner, or None
        (refused); what was replaced there is returned, for the audit."""
        ...

    def read(self, path: str) -> dict[str, Any] | None:
        """The record in a lock file, whoever wrote it."""
        ...

    def hold_name(self, what: str, path: str, record_path: str, thing: str = "", why: str = "") -> None:
        """Hold the abstract socket name standing for `path` (no file operation frees it) or
        raise StartupError naming its holder (its record at `record_path` when it names it)."""
        ...

    def note(self, key: str, **fields: Any) -> None:
        """Record in a held lock what runs under it now."""
        ...


@dataclass(frozen=True)
class Adoptable:
    """A process a crashed predecessor started, found running and verified as ours."""
    pid: int
    verified: tuple[str, ...]       # what was checked: "start time", "admin password", ...


class ClientWitness(Protocol):
    """Who opened each TCP connection to Redis, from the kernel trace, kept after the client
    exits (node/witnessing.py wires the kernel witness in where it runs)."""

    def client_of(self, addr: str, at: float | None = None) -> dict[str, Any] | None:
        """The identity of the process that connected from `addr` (`127.0.0.1:47264`), with
        `seen_by` and `connection` (connected/closed, epoch); None if never traced, or if
        the connection traced from there was not open at `at` (epoch)."""
        ...

    def clients_closed_between(self, start: float, end: float) -> list[dict[str, Any]]:
        """Identities of the clients whose connections closed in [start, end] (epoch)."""
        ...

    def on_client_closed(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever a client connection (not the supervisor's) closes."""
        ...


class RemoteClients(Protocol):
    """The cluster's other nodes (cluster/whois.py): who held a client address that is
    not this node's, asked of the node that owns it."""

    def is_remote(self, addr: str) -> bool:
        """Whether `addr` (`10.0.0.2:51234`) is another host's (not one of ours, not loopback)."""
        ...

    async def ask(self, addr: str, redis_port: int, at: float | None,
                  late: Callable[[dict[str, Any] | None, str], None]) -> tuple[dict[str, Any] | None, str]:
        """(the sender, with its `node`, "") or (None, why not) within a deadline; an
        answer after it goes to `late` (sender, note). Never raises."""
        ...


@dataclass(frozen=True)
class KindContext:
    """What kinds may use of the supervisor: its settings, its timers, its locks, its
    audit log, and a way to name a process (witness identity with program names)."""
    supervisor: SupervisorSpec
    call_later: CallLater
    locks: Locks
    audit: Callable[..., dict[str, Any]]
    name_process: Callable[[int], dict[str, Any] | None]   # pid -> pinned identity, None if gone
    clients: ClientWitness | None = None                    # None: no kernel witness configured
    remote_clients: RemoteClients | None = None             # None: not the Redis node of a [cluster]


@dataclass(frozen=True)
class StopCalls:
    """What a kind's stop may do: signal the process (the signal is witnessed), or say it
    will not exit now and why (its final save failed) so that nothing kills it meanwhile."""
    signal: Callable[[int], None]
    refused: Callable[[str], None]
    save: bool = True       # False: it must not write its data (refused right after start)


class ProgramKind(Protocol):
    spec: ProgramSpec
    sign_of_life: str       # what the watchdog waits for: "WATCHDOG=1", "PONG"
    # After stop_timeout: SIGKILL (True), or only report and keep waiting (False: a kill
    # would lose what its stop is still writing; `relayqctl stop --force` kills it).
    kill_on_stop_timeout: bool
    # Whether the child's own READY=1 makes it RUNNING. Redis 7 sends READY=1 when supervised
    # by systemd, before the supervisor has checked which persistence settings it took.
    ready_by_notify: bool

    def prepare(self) -> None:
        """At start-up, before any child starts: StartupError to refuse to start at all."""
        ...

    def kept_files(self) -> list[str]:
        """Files the kind keeps in run_dir that must not go missing while it runs (Redis: its
        admin password, which a successor after a crash needs to adopt it)."""
        ...

    def restore_files(self) -> None:
        """A kept file (or run_dir itself) was deleted under us: write them back. OSError
        or RelayqError if it cannot."""
        ...

    async def adoptable(self) -> Adoptable | None:
        """At start-up, after prepare: the process of this program a crashed predecessor
        left running, verified, to be adopted instead of started; StartupError when
        something else holds what it needs."""
        ...

    def record_running(self, pid: int) -> None:
        """A new process of it runs: note it where a successor would look for it."""
        ...

    def preflight(self) -> str | None:
        """Before each start: why it must not start now (it goes FATAL), or None."""
        ...

    def argv(self, p: Program) -> list[str]: ...

    def environment(self) -> dict[str, str]:
        """What every child of the node gets from this program (RELAYQ_REDIS_URL)."""
        ...

    def begin_ready_check(self, p: Program, on_ready: Callable[[str], None],
                          on_refused: Callable[[str], None]) -> Cancellable:
        """Call on_ready(why) once the new process is ready, or on_refused(why) when it runs
        but must not be used (Redis did not take a persistence setting); cancelled if it
        dies first. READY=1 from the child also counts where ready_by_notify says so."""
        ...

    def stop_method(self, save: bool) -> str:
        """How begin_stop asks it to exit, for the STOPPING line: `SIGTERM`, `SHUTDOWN SAVE`."""
        ...

    def begin_stop(self, p: Program, calls: StopCalls) -> Cancellable | None:
        """Ask its process to exit (once per call; the arbiter waits for the exit). None
        when nothing runs on after the request; else a task, cancelled at the exit."""
        ...

    def watch(self, p: Program, alive: Callable[[], None]) -> Cancellable | None:
        """While p runs with a watchdog: call alive() at each sign of life this kind
        produces itself (Redis: each PONG); None when the program pings on its own."""
        ...

    def start_duties(self, running: Callable[[], Program | None]) -> None:
        """Background duties while the supervisor runs (Redis: health checks);
        running() is its instance while RUNNING, else None."""
        ...

    async def close(self) -> None: ...

    def with_spec(self, spec: ProgramSpec) -> ProgramKind:
        """The same kind for a reloaded spec, keeping what must survive (credentials)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Fields for the status header."""
        ...


def make_kind(spec: ProgramSpec, ctx: KindContext) -> ProgramKind:
    if spec.redis is not None:
        from relayq_supervisor.kinds.redis.kind import RedisKind
        return RedisKind(spec, ctx)
    from relayq_supervisor.kinds.exec import ExecKind
    return ExecKind(spec, ctx)


def refuse_reload(old: Config, new: Config) -> str | None:
    """What a reload cannot change while running, for any kind; None if it can apply."""
    from relayq_supervisor.kinds.redis.kind import refuse_reload as redis_refusal
    return redis_refusal(old.redis, new.redis)
