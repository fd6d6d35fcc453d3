"""When the loop reads the kernel trace (node/witnessing.py): the first event of a burst
is read `kernel_trace_read_delay` later, not at once; while events keep coming the pipe is
read once a delay without listening; once they stop the loop listens again (no timer left);
read_soon() reads on the next pass whatever the delay. The trace pipe here is a real pipe
fed with lines as the kernel prints them (no tracefs needed: the cadence is the loop's)."""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, cast

from relayq_supervisor.config.model import SupervisorSpec
from relayq_supervisor.node.witnessing import Witnessing
from relayq_supervisor.witness.attribution import Attribution

DELAY = 0.05


def fork_line(child: int, ts: float) -> bytes:
    return (f"            bash-4200001 (4200001) [001] ..... {ts:.6f}: sched_process_fork: comm=bash "
            f"pid=4200001 child_comm=bash child_pid={child}\n").encode()


def now_boot() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def witnessing(loop: asyncio.AbstractEventLoop, delay: float = DELAY) -> tuple[Witnessing, int]:
    spec = SupervisorSpec(run_dir="/nonexistent", log_dir="/nonexistent", audit_log="/nonexistent/a",
                          control_socket="/nonexistent/s", signal_tap=False, kernel_trace_read_delay=delay)
    attribution = Attribution(cast(Any, None), ())
    w = Witnessing(loop, spec, attribution, lambda *a, **k: None, lambda: ())
    r, wr = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    assert w.kernel is not None
    w.kernel.fd = r                 # the trace pipe: a real pipe, read non-blocking like trace_pipe
    w.listen_to_kernel_trace()
    return w, wr


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def run(coro_of: Callable[[asyncio.AbstractEventLoop], Any]) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(coro_of(loop))
    finally:
        loop.close()


def test_a_burst_is_read_after_the_delay_then_the_loop_listens_again():
    async def go(loop):
        w, wr = witnessing(loop)
        k = w.kernel
        assert k is not None and w.listening
        os.write(wr, fork_line(4200010, now_boot() - 10))     # a quiet spell's first event
        await until(lambda: not w.listening)
        assert k.lines == 0 and w.read_handle is not None     # woken, not read yet: the burst gathers
        os.write(wr, fork_line(4200011, now_boot() - 10))
        await until(lambda: k.lines == 2)                     # both in one read
        assert k.reads == 1
        assert w.listening and w.read_handle is None          # old lines: the traffic stopped, no timer
        w.close()
        os.close(wr)
    run(go)


def test_while_events_keep_coming_the_pipe_is_read_on_a_timer_not_listened_to():
    async def go(loop):
        w, wr = witnessing(loop)
        k = w.kernel
        assert k is not None
        # stamped as if written just before the read: the kernel was still writing
        os.write(wr, fork_line(4200020, now_boot() + DELAY))
        await until(lambda: k.lines == 1)
        assert not w.listening and w.read_handle is not None  # a recent line: read again in a delay
        await until(lambda: w.listening)                      # that read found nothing: listen
        assert w.read_handle is None and k.reads == 1
        w.close()
        os.close(wr)
    run(go)


def test_read_soon_reads_on_the_next_pass_whatever_the_delay():
    async def go(loop):
        w, wr = witnessing(loop, delay=1.0)
        k = w.kernel
        assert k is not None
        os.write(wr, fork_line(4200030, now_boot() - 10))
        await until(lambda: not w.listening)
        assert k.lines == 0
        w.read_soon()       # a tap stop whose sender is gone: the trace up to now
        for _ in range(3):
            await asyncio.sleep(0)
        assert k.lines == 1
        assert k.history.get(4200030) is not None
        w.close()
        os.close(wr)
    run(go)
