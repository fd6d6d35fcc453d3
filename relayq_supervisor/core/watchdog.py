"""The watchdog's timing rules, pure: a program that is alive but silent too long fires.

systemd's WatchdogSec= semantics: after READY, a sign of life (WATCHDOG=1 from the
program, a PONG from Redis) at least every `timeout` seconds; WATCHDOG=trigger fires at
once; WATCHDOG_USEC= from the program changes its own timeout. A ping before READY
arms it from that ping. The arbiter keeps one timer per program at its due time and
re-arms it lazily: a ping only moves `last_sign`, so pings cost no timer operations.

Memory: RSS over `max_rss` on two consecutive checks fires too (one reading over the
line can be a transient peak).
"""
from __future__ import annotations

from dataclasses import dataclass

RSS_STRIKES = 2


def format_bytes(n: int) -> str:
    """812 * 2**20 -> '812 MiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 10 else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass
class Watchdog:
    timeout: float              # seconds of silence allowed
    what: str                   # the sign of life, for the cause: "WATCHDOG=1", "PONG"
    last_sign: float            # monotonic
    rss_strikes: int = 0

    def fed(self, now: float) -> None:
        self.last_sign = now

    def due_at(self) -> float:
        return self.last_sign + self.timeout

    def overdue(self, now: float) -> str | None:
        """The cause when silent for longer than the timeout, else None."""
        if self.timeout <= 0 or now < self.due_at():
            return None
        return f"watchdog: no {self.what} for {now - self.last_sign:.1f}s (watchdog_sec {self.timeout:g})"

    def rss_reading(self, rss: int, max_rss: int) -> str | None:
        """The cause once RSS has been over max_rss on RSS_STRIKES checks in a row."""
        if rss <= max_rss:
            self.rss_strikes = 0
            return None
        self.rss_strikes += 1
        if self.rss_strikes < RSS_STRIKES:
            return None
        return f"rss {format_bytes(rss)} over max_rss {format_bytes(max_rss)}"
