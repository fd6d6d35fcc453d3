"""The guard's rule, as a pure function: may this signal reach a supervised program?

For a protected program (Redis by default) a stop signal from anyone but the
supervisor, or the program itself, is suppressed. The service manager's SIGTERM
(systemd stopping the whole unit) is suppressed too, but turns into an ordered
shutdown: the supervisor does not fight it, it orders it.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

GUARDED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
                             signal.SIGUSR2, signal.SIGSTOP, signal.SIGTSTP})
SERVICE_MANAGER_STOP = "service manager stop: the supervisor orders the shutdown"


@dataclass(frozen=True)
class Verdict:
    deliver: bool
    note: str | None = None
    shutdown: bool = False      # the supervisor should stop everything in order

    @property
    def action(self) -> str:
        return "delivered" if self.deliver else "blocked"


DELIVER = Verdict(True)


def judge(signo: int, *, protected: bool, user_sent: bool, from_program_itself: bool,
          from_service_manager: bool, shutting_down: bool) -> Verdict:
    if not protected or not user_sent or from_program_itself or shutting_down or signo not in GUARDED_SIGNALS:
        return DELIVER
    if signo == signal.SIGTERM and from_service_manager:
        return Verdict(False, SERVICE_MANAGER_STOP, shutdown=True)
    return Verdict(False)
