"""The program families kept between scrapes (metrics_programs.ProgramText): the same
bytes as prometheus_client's whole render, whatever changed; only changed instances
formatted again; the loop runs between two slices."""
from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

from prometheus_client.exposition import generate_latest

from relayq_supervisor.core.program import ExitInfo
from relayq_supervisor.core.states import State
from relayq_supervisor.metrics import SupervisorMetrics
from relayq_supervisor.metrics_programs import ProgramCollector, ProgramText


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def program(name: str, clock: Clock, state: State = State.RUNNING) -> SimpleNamespace:
    return SimpleNamespace(name=name, base=name.split(":")[0], state=state, restarts=0, started_wall=None,
                           last_exit=None, next_start_at=None, clock=clock)


def whole(programs) -> bytes:
    """prometheus_client's own render of the families built whole."""
    class Whole:
        def collect(self):
            return ProgramCollector(lambda: programs).collect()
    return generate_latest(Whole())


def change(p: SimpleNamespace, rng: random.Random, clock: Clock) -> None:
    what = rng.randrange(4)
    if what == 0:
        p.state = rng.choice(list(State))
        p.next_start_at = clock.now + rng.random() * 5 if p.state == State.BACKOFF else None
    elif what == 1:
        p.restarts += 1
    elif what == 2:
        p.last_exit = ExitInfo(None, 9, 1000.0 + rng.random(), 0.1)
    else:
        p.started_wall = 2000.0 + rng.random()


def test_same_bytes_as_the_whole_render_through_random_changes():
    rng = random.Random(15)
    clock = Clock()
    programs = [program(f"w:{i}", clock) for i in range(30)] + [program('odd"name\\x\n:0', clock)]
    text = ProgramText(lambda: programs, slice_size=4)
    for round_ in range(40):
        for p in rng.sample(programs, rng.randrange(0, 6)):
            change(p, rng, clock)
        if round_ % 7 == 3:         # a reload: instances go, others come, the order changes
            programs.pop(rng.randrange(len(programs)))
            programs.insert(rng.randrange(len(programs)), program(f"new:{round_}", clock, State.STARTING))
        clock.now += 0.5            # BACKOFF's seconds move with the clock
        got = text.render() if round_ % 2 else asyncio.run(text.render_sliced())
        assert got == whole(programs), f"round {round_}"
    assert set(text.kept) == {p.name for p in programs}      # the removed ones are forgotten


def test_only_changed_instances_are_formatted_again():
    clock = Clock()
    programs = [program(f"w:{i}", clock) for i in range(50)]
    text = ProgramText(lambda: programs)
    text.render()
    assert text.formatted == 50
    text.render()
    assert text.formatted == 50                 # nothing changed: nothing formatted
    programs[7].state = State.BACKOFF
    programs[7].next_start_at = 103.0
    programs[9].restarts = 1
    text.render()
    assert text.formatted == 52
    clock.now += 1                              # a BACKOFF instance's wait moves: formatted again
    assert b'relayq_program_backoff_seconds{instance="w:7",program="w"} 2.0\n' in text.render()
    assert text.formatted == 53


def test_the_loop_runs_between_two_slices():
    clock = Clock()
    programs = [program(f"w:{i}", clock) for i in range(10)]
    text = ProgramText(lambda: programs, slice_size=3)

    async def main():
        seen = []

        def tick():
            seen.append(text.formatted)
            if not done.done():
                asyncio.get_running_loop().call_soon(tick)
        done = asyncio.ensure_future(text.render_sliced())
        tick()
        await done
        return seen
    seen = asyncio.run(main())
    # the ticker ran while 3, 6 and 9 of the 10 were formatted: four slices
    assert [3, 6, 9] == sorted(set(seen) & {3, 6, 9})


def test_scrapes_at_once_share_one_render():
    clock = Clock()
    programs = [program(f"w:{i}", clock) for i in range(45)]

    async def main():
        m = SupervisorMetrics(lambda: programs, asyncio.get_running_loop())
        texts = await asyncio.gather(*(m.render_sliced() for _ in range(3)))
        m.close()
        return m, texts
    m, texts = asyncio.run(main())
    assert texts[0] is texts[1] is texts[2]
    assert m.program_text.formatted == 45
    assert b'relayq_program_state{instance="w:44",program="w",state="RUNNING"} 1.0\n' in texts[0]
    # the shared render's hold of the loop is observed once, and shown at the next scrape
    assert b"relayq_metrics_render_hold_seconds_count 1.0\n" in m.render()
