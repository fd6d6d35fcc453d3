"""The programs' metric families (`relayq_program_*`), kept rendered between scrapes.

prometheus_client formats every sample in Python, about 5-10 µs each, and 200 instances
are 2,400 samples (1,400 of them `relayq_program_state`'s one series per state): rendered
whole at each scrape that is 15-30 ms of the supervisor's loop. Almost none of it changes
between two scrapes, so:

- at a scrape, each instance's fields are read once into a `Row` (a snapshot: cheap, no
  formatting); what programs are doing is still read at scrape time, so no transition
  does any bookkeeping for metrics;
- an instance whose row is the one of the last scrape reuses the lines prometheus_client
  made for it then; only the others are formatted, a slice of `SLICE` instances at a
  time, and `render_sliced` lets the loop run between two slices, so even the first scrape
  (or one after every instance changed) never holds the loop for long;
- each family's text is its `# HELP`/`# TYPE` header (prometheus_client's, rendered once)
  followed by its instances' lines in the programs' order: the same bytes
  `generate_latest` makes for the whole families (tests/unit/test_metrics_programs.py
  checks that, byte for byte).

Every line is prometheus_client's own (`generate_latest` of a family holding a slice's
samples): nothing here formats a sample.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from relayq_supervisor.core.states import State

SLICE = 5           # instances formatted per slice: ~12 samples each, under 1 ms a slice
STATES = tuple(State)


class Shown(Protocol):
    """What the families read of a program (core.program.Program)."""
    name: str
    state: State
    restarts: int
    started_wall: float | None
    next_start_at: float | None
    last_exit: Any

    @property
    def base(self) -> str: ...

    def clock(self) -> float: ...


class Row(NamedTuple):
    """An instance's fields at a scrape: equal rows make equal lines."""
    program: str
    instance: str
    state: State
    restarts: int
    last_exit: float | None
    started: float | None
    backoff: float


def row_of(p: Shown) -> Row:
    wait = 0.0
    if p.state == State.BACKOFF and p.next_start_at is not None:
        wait = max(0.0, p.next_start_at - p.clock())
    return Row(p.base, p.name, p.state, p.restarts, None if p.last_exit is None else float(p.last_exit.at),
               None if p.started_wall is None else float(p.started_wall), wait)


def new_families() -> list[Metric]:
    """The six families, empty, in the order they are exposed."""
    labels = ["program", "instance"]
    return [
        GaugeMetricFamily("relayq_program_up", "1 while the instance is RUNNING (ready), else 0", labels=labels),
        GaugeMetricFamily("relayq_program_state", "1 for the state the instance is in, 0 for the others",
                          labels=[*labels, "state"]),
        CounterMetricFamily("relayq_program_restarts", "Automatic restarts of the instance (operator starts "
                            "not counted); starts again at 0 when a reload replaces the instance", labels=labels),
        GaugeMetricFamily("relayq_program_last_exit_timestamp_seconds",
                          "Unix time its last run ended (absent before the first exit)", labels=labels),
        GaugeMetricFamily("relayq_program_start_timestamp_seconds",
                          "Unix time of its last start (absent before the first start)", labels=labels),
        GaugeMetricFamily("relayq_program_backoff_seconds",
                          "Seconds until its next start while in BACKOFF, else 0", labels=labels),
    ]


def add_row(families: Sequence[Any], r: Row) -> None:
    """An instance's samples, one family after the other (new_families' order)."""
    up, state, restarts, last_exit, started, backoff = families
    labels = [r.program, r.instance]
    up.add_metric(labels, 1.0 if r.state == State.RUNNING else 0.0)
    for s in STATES:
        state.add_metric([*labels, str(s)], 1.0 if r.state == s else 0.0)
    restarts.add_metric(labels, float(r.restarts))
    if r.last_exit is not None:
        last_exit.add_metric(labels, r.last_exit)
    if r.started is not None:
        started.add_metric(labels, r.started)
    backoff.add_metric(labels, r.backoff)


class _Families:
    """A collector over families already built (what generate_latest takes)."""

    def __init__(self, families: Iterable[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


class ProgramCollector:
    """The families built whole from the programs at each scrape: what ProgramText's
    output must equal (and a collector for anything that wants them through a registry)."""

    def __init__(self, programs: Callable[[], Iterable[Shown]]):
        self.programs = programs

    def describe(self) -> Iterator[Metric]:
        return iter(new_families())

    def collect(self) -> Iterator[Metric]:
        families = new_families()
        for p in self.programs():
            add_row(families, row_of(p))
        return iter(families)


Lines = tuple[bytes, ...]       # an instance's lines, one bytes per family (possibly empty)


def format_rows(rows: Sequence[Row]) -> list[Lines]:
    """prometheus_client's lines for these rows, cut per row and family."""
    families = new_families()
    ends: list[list[int]] = [[] for _ in families]    # per family, its sample count after each row
    for r in rows:
        add_row(families, r)
        for f, e in zip(families, ends, strict=True):
            e.append(len(f.samples))
    per_family = []
    for f, e in zip(families, ends, strict=True):
        lines = generate_latest(_Families([f])).splitlines(keepends=True)[2:]   # after # HELP, # TYPE
        if len(lines) != len(f.samples):
            # a prometheus_client that writes more than a line per sample: fail the scrape
            # loudly (a test checks the bytes) rather than expose lines under the wrong family
            raise RuntimeError(f"metrics: {f.name}: {len(f.samples)} samples made {len(lines)} lines")
        cut, start = [], 0
        for end in e:
            cut.append(b"".join(lines[start:end]))
            start = end
        per_family.append(cut)
    return [tuple(fam[i] for fam in per_family) for i in range(len(rows))]


class ProgramText:
    """The program families' text, with each instance's lines kept from scrape to scrape
    while its row stays the same."""

    def __init__(self, programs: Callable[[], Iterable[Shown]], slice_size: int = SLICE):
        self.programs = programs
        self.slice_size = slice_size
        self.headers = [generate_latest(_Families([f])) for f in new_families()]
        self.kept: dict[str, tuple[Row, Lines]] = {}      # by instance name
        self.formatted = 0      # rows formatted since start (the others were reused)
        self.longest_step = 0.0     # of the last render_sliced: its longest stretch on the loop, seconds

    def _snapshot(self) -> tuple[list[Row], list[Lines | None], list[int]]:
        rows = [row_of(p) for p in self.programs()]
        got: list[Lines | None] = []
        stale = []
        for i, r in enumerate(rows):
            kept = self.kept.get(r.instance)
            if kept is not None and kept[0] == r:
                got.append(kept[1])
            else:
                got.append(None)
                stale.append(i)
        return rows, got, stale

    def _format(self, rows: list[Row], got: list[Lines | None], todo: list[int]) -> None:
        for i, lines in zip(todo, format_rows([rows[i] for i in todo]), strict=True):
            got[i] = lines
            self.kept[rows[i].instance] = (rows[i], lines)
        self.formatted += len(todo)

    def _join(self, rows: list[Row], got: list[Lines | None]) -> bytes:
        names = {r.instance for r in rows}
        for gone in [n for n in self.kept if n not in names]:
            del self.kept[gone]         # removed by a reload
        parts = []
        for f, header in enumerate(self.headers):
            parts.append(header)
            parts.extend(lines[f] for lines in got if lines is not None)
        return b"".join(parts)

    def render(self) -> bytes:
        """All at once."""
        rows, got, stale = self._snapshot()
        self._format(rows, got, stale)
        return self._join(rows, got)

    async def render_sliced(self) -> bytes:
        """The programs as they are now, formatted a slice at a time with the loop free
        to run what is due between two slices."""
        longest, began = 0.0, time.perf_counter()
        rows, got, stale = self._snapshot()
        for start in range(0, len(stale), self.slice_size):
            if start:
                longest = max(longest, time.perf_counter() - began)
                await asyncio.sleep(0)
                began = time.perf_counter()
            self._format(rows, got, stale[start:start + self.slice_size])
        text = self._join(rows, got)
        self.longest_step = max(longest, time.perf_counter() - began)
        return text
