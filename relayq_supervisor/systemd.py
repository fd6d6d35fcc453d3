"""What systemd hears from the supervisor (Type=notify): READY=1 once everything that
starts at boot runs (or has given up), a current STATUS= line, WATCHDOG=1 from the
event loop itself, RELOADING=1/READY=1 around a reload, STOPPING=1 and
EXTEND_TIMEOUT_USEC= while programs (Redis writing its dump) are still stopping."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, Protocol

from relayq_supervisor.background import start_task
from relayq_supervisor.core.states import State
from relayq_supervisor.linux.notify_socket import connect_notify_socket, format_notify_message, send_notify

log = logging.getLogger(__name__)

EXTEND_BY_USEC = 10_000_000
EXTEND_EVERY_S = 4.0


class ServiceNotifier:
    """Messages to the service manager; silent when NOTIFY_SOCKET is unset or cannot be
    reached. The socket is non-blocking: a full queue at the service manager must never
    stall the event loop."""

    def __init__(self) -> None:
        self.address = os.environ.get("NOTIFY_SOCKET") or None
        self._sock: socket.socket | None = None
        if self.address:
            try:
                self._sock = connect_notify_socket(self.address, blocking=False)
            except OSError as e:
                log.warning("cannot reach NOTIFY_SOCKET %s (%s); the service manager "
                            "will not hear READY=1 or STATUS=", self.address, e.strerror or e)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: object) -> bool:
        """send(READY=1, STATUS='...') -> one datagram; False when not sent."""
        if self._sock is None:
            return False
        try:
            send_notify(self._sock, format_notify_message(**fields))
            return True
        except OSError:
            return False


class Shown(Protocol):
    """A program instance as systemd's STATUS= shows it."""

    @property
    def name(self) -> str: ...

    @property
    def base(self) -> str: ...

    @property
    def state(self) -> State: ...

    @property
    def wanted(self) -> bool: ...


class Supervised(Protocol):
    @property
    def programs(self) -> Sequence[Shown]: ...

    @property
    def shutting_down(self) -> bool: ...

    def awaits_other_node(self, p: Any) -> bool:
        """p waits for another node only (the cluster's Redis): start-up is not held for it."""
        ...


class ServiceLink:
    def __init__(self, sup: Supervised, notifier: ServiceNotifier | None = None):
        self.sup = sup
        self.notifier = notifier or ServiceNotifier()
        self.ready_sent = False
        self.watchdog: asyncio.TimerHandle | None = None
        self.extender: asyncio.Task[None] | None = None
        self.blocked_day = ""
        self.blocked_count = 0

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled

    def count_blocked(self) -> None:
        self.blocked_today()
        self.blocked_count += 1

    def blocked_today(self) -> int:
        today = time.strftime("%Y-%m-%d", time.gmtime())
        if self.blocked_day != today:
            self.blocked_day, self.blocked_count = today, 0
        return self.blocked_count

    def status_line(self) -> str:
        """`redis running; worker 2/2 running; 0 blocked signals today`"""
        groups: dict[str, list[Shown]] = {}
        for p in self.sup.programs:
            groups.setdefault(p.base, []).append(p)
        parts = []
        for base, group in groups.items():
            if len(group) == 1:
                parts.append(f"{base} {group[0].state.lower()}")
            else:
                parts.append(f"{base} {sum(p.state == State.RUNNING for p in group)}/{len(group)} running")
        blocked = self.blocked_today()
        return "; ".join(parts) + f"; {blocked} blocked signal{'s' if blocked != 1 else ''} today"

    def publish(self, _changed: Any = None) -> None:
        """After every transition: STATUS=, and READY=1 the first time all is up."""
        if not self.enabled or self.sup.shutting_down:
            return
        programs = self.sup.programs
        if not self.ready_sent and not any(p.wanted and p.state not in (State.RUNNING, State.FATAL)
                                           and not self.sup.awaits_other_node(p) for p in programs):
            self.ready_sent = True
            gave_up = [p.name for p in programs if p.state == State.FATAL]
            self.notifier.send(READY=1, STATUS=self.status_line() + (f"; gave up: {', '.join(gave_up)}" if gave_up else ""))
            return
        self.notifier.send(STATUS=self.status_line())

    def start_watchdog(self) -> None:
        """WATCHDOG=1 at half of WATCHDOG_USEC, from the loop: a stuck loop stops the pings.
        Without WATCHDOG_USEC there is no timer at all."""
        usec = os.environ.get("WATCHDOG_USEC")
        owner = os.environ.get("WATCHDOG_PID")
        if not usec or not self.enabled or (owner and owner != str(os.getpid())):
            return
        try:
            interval = int(usec) / 2e6
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r (not a number)", usec)
            return
        loop = asyncio.get_running_loop()

        def ping() -> None:
            self.notifier.send(WATCHDOG=1)
            self.watchdog = loop.call_later(interval, ping)

        ping()

    def reloading(self) -> None:
        self.notifier.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def reloaded(self) -> None:
        self.notifier.send(READY=1, STATUS=self.status_line())

    def stopping(self) -> None:
        self.notifier.send(STOPPING=1, STATUS="stopping programs in dependency order")
        if self.enabled:
            self.extender = start_task(self.extend_stop_timeout(), "extend systemd stop timeout")

    async def extend_stop_timeout(self) -> None:
        """Keep systemd from running out of TimeoutStopSec and SIGKILLing Redis mid-save."""
        while True:
            still = ", ".join(p.name for p in self.sup.programs if p.state == State.STOPPING)
            self.notifier.send(EXTEND_TIMEOUT_USEC=EXTEND_BY_USEC, STATUS=f"stopping: {still}")
            await asyncio.sleep(EXTEND_EVERY_S)

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.extender is not None:
            self.extender.cancel()
        self.watchdog = self.extender = None
