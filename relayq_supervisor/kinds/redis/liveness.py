"""Redis' sign of life for the watchdog: a PING every watchdog_sec / 3, each with a
timeout shorter than that, as the admin user.

PONG is life. `-LOADING` (reading its dataset at start) is life too: a big dataset
must never get Redis killed mid-load. `-BUSY` (a script or function running past
busy-reply-threshold) is not: before the watchdog fires, SCRIPT KILL (and FUNCTION
KILL, Redis 7+) is tried once and recorded, since a killed script frees Redis without
losing anything but that script's work.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import redis.exceptions

from relayq_supervisor.background import start_task

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from relayq_supervisor.kinds import KindContext, Program


class RedisKind(Protocol):
    """What the pinger needs of kind.RedisKind."""
    def client(self, timeout: float | None = None) -> aioredis.Redis: ...
    def major_version(self) -> int: ...

log = logging.getLogger(__name__)


def pinger(kind: RedisKind, ctx: KindContext, p: Program, timeout: float,
           alive: Callable[[], None]) -> asyncio.Task[None]:
    return start_task(_ping_loop(kind, ctx, p, timeout, alive), f"{p.name} liveness")


async def _ping_loop(kind: RedisKind, ctx: KindContext, p: Program, timeout: float,
                     alive: Callable[[], None]) -> None:
    interval = timeout / 3
    conn = kind.client(timeout=min(interval * 0.8, 2.0))
    busy_since: float | None = None
    tried_kill = False
    while True:
        try:
            await conn.ping()
            alive()
            busy_since, tried_kill = None, False
        except redis.exceptions.BusyLoadingError:
            alive()
        except redis.exceptions.ResponseError as e:
            if str(e).startswith("BUSY"):
                now = time.monotonic()
                busy_since = busy_since or now
                # the last round before the watchdog would fire
                if not tried_kill and now - busy_since + interval >= timeout:
                    tried_kill = True
                    await _kill_script(kind, ctx, p, conn)
        except (redis.exceptions.RedisError, OSError):
            pass                    # no answer in time: no sign of life this round
        await asyncio.sleep(interval)


async def _kill_script(kind: RedisKind, ctx: KindContext, p: Program, conn: Any) -> None:
    commands = ["SCRIPT KILL"] + (["FUNCTION KILL"] if kind.major_version() >= 7 else [])
    results = {}
    for command in commands:
        try:
            results[command] = str(await conn.execute_command(*command.split()))
        except (redis.exceptions.RedisError, OSError) as e:
            results[command] = f"error: {e}"
    event = ctx.audit("watchdog", program=p.name, action="script_kill", results=results,
                      cause="Redis answers BUSY (a script or function runs too long)")
    p.remember(event)
    log.warning("%s: BUSY: tried %s before the watchdog fires: %s", p.name, " and ".join(commands), results)
