"""A plain program: its command as given, ready when it says READY=1 or has stayed
alive for `ready_after` seconds."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relayq_supervisor.config.model import ProgramSpec
from relayq_supervisor.linux.siginfo import signal_name

if TYPE_CHECKING:
    from relayq_supervisor.kinds import Cancellable, KindContext, Program, StopCalls


class ExecKind:
    sign_of_life = "WATCHDOG=1"
    kill_on_stop_timeout = True
    ready_by_notify = True

    def __init__(self, spec: ProgramSpec, ctx: KindContext):
        self.spec = spec
        self.ctx = ctx

    def prepare(self) -> None:
        pass

    def kept_files(self) -> list[str]:
        return []

    def restore_files(self) -> None:
        pass

    def preflight(self) -> str | None:
        return None

    async def adoptable(self) -> None:
        return None             # a plain program's output pipe died with its supervisor: start anew

    def record_running(self, pid: int) -> None:
        pass

    def argv(self, p: Program) -> list[str]:
        return list(self.spec.command)

    def environment(self) -> dict[str, str]:
        return {}

    def begin_ready_check(self, p: Program, on_ready: Callable[[str], None],
                          on_refused: Callable[[str], None]) -> Cancellable:
        return self.ctx.call_later(self.spec.ready_after, on_ready,
                                   f"ready: still running {self.spec.ready_after:g}s after its start")

    def watch(self, p: Program, alive: Callable[[], None]) -> Cancellable | None:
        return None             # it sends WATCHDOG=1 itself
    def stop_method(self, save: bool) -> str:
        return signal_name(self.spec.stop_signal)

    def begin_stop(self, p: Program, calls: StopCalls) -> Cancellable | None:
        calls.signal(self.spec.stop_signal)
        return None

    def start_duties(self, running: Callable[[], Program | None]) -> None:
        pass

    async def close(self) -> None:
        pass

    def with_spec(self, spec: ProgramSpec) -> ExecKind:
        return ExecKind(spec, self.ctx)

    def describe(self) -> dict[str, Any]:
        return {}
