"""Background tasks on the loop, kept and watched.

asyncio keeps only a weak reference to a task, so a task nobody holds can vanish
mid-run, and an exception in one nobody awaits is reported only at garbage collection,
if ever. Every task the supervisor starts goes through `start_task`: it is held until
done and its exception, if any, is logged at once with the task's name.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_running: set[asyncio.Task[Any]] = set()


def start_task(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
