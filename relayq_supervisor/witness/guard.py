"""The guard's rule, as a pure function: may this signal reach a supervised program?

For a protected program (Redis by default) a stop signal from anyone but the
supervisor, or the program itself, is suppressed. The service manager's SIGTERM
(systemd stopping the whole unit) is suppressed too, but turns into an ordered
shutdown: the supervisor does not fight it, it orders it.

The guard stays shut while the supervisor shuts down. `systemctl kill` signals every
process of the unit at once: Redis' SIGTERM often arrives after the supervisor has
begun its own ordered stop, and letting it through then made Redis exit before the
workers (issue 12: 1 run in 10). The supervisor stops Redis itself, last; a signal
from anyone else would only reorder that.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

GUARDED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
                             signal.SIGUSR2, signal.SIGSTOP, signal.SIGTSTP})
SERVICE_MANAGER_STOP = "service manager stop: the supervisor orders the shutdown"
SHUTDOWN_UNDER_WAY = "shutdown under way: the supervisor stops it in order"


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
    if not protected or not user_sent or from_program_itself or signo not in GUARDED_SIGNALS:
        return DELIVER
    if shutting_down:
        return Verdict(False, SHUTDOWN_UNDER_WAY)
    if signo == signal.SIGTERM and from_service_manager:
        return Verdict(False, SERVICE_MANAGER_STOP, shutdown=True)
    return Verdict(False)
