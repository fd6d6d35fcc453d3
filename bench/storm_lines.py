"""The kernel witness's cost per signal_generate line in a signal storm, in-process:
`python -m bench.storm_lines [--lines N] [--rounds R]` (prints µs per line); the storm
section (bench/storm.py) reports the same figure.

The lines are shaped as the storm benchmark's: 20 bash loops (each its own sender, all
alive: this process' pid and its parents stand in, read from /proc like a live sender)
sending SIGTERM to one traced Redis, interleaved as trace_pipe merges the CPUs' buffers;
one in `DELIVERED_EVERY` delivered (the tap stops at it), the rest merged into the
pending one (`res=2`), read a page at a time, `READS_PER_DRAIN` pages per drain(),
with a few sched lines of the node between them. Everything from the read to the burst's
count runs: `KernelWitness.feed` and the real `Attribution` (its supervisor a stub: one
protected program, traced). Not a test: a number, never an assertion.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from relayq_supervisor.witness.attribution import Attribution
from relayq_supervisor.witness.tracefs import KernelWitness

REDIS_PID = 812
SENDERS = 20
# the storm benchmark's tap saw ~1 delivery per 300 signals (the rest merged); 1 in 100 here
DELIVERED_EVERY = 100
SCHED_EVERY = 40
READ_SIZE = 8192            # what one trace_pipe read returns: a page of text
# reads per drain() (the loop's reader callback reads on to its time budget; fewer here)
READS_PER_DRAIN = 8


class _Program:
    name = "redis"
    protected = True

    def signalled(self, record: dict[str, Any]) -> None:
        pass

    def remember(self, event: dict[str, Any]) -> None:
        pass


class _Supervision:
    """One protected, traced program; audit events counted, not written."""

    shutting_down = False

    def __init__(self) -> None:
        self.program = _Program()
        self.events: list[dict[str, Any]] = []

    def traced(self, pid: int) -> bool:
        return pid == REDIS_PID

    def program_of_pid(self, pid: int | None) -> _Program | None:
        return self.program if pid == REDIS_PID else None

    def request_shutdown(self, why: str) -> None:
        pass

    def audit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"event": kind, **fields}
        self.events.append(event)
        return event

    def count_blocked(self) -> None:
        pass


def senders() -> list[int]:
    """Live pids to stand in for the loops (named from /proc as the real ones are), never
    this process' own (the witness leaves the supervisor's signals to itself)."""
    pids = [os.getppid(), 1] + sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[1:SENDERS * 2]
    pids = [p for p in pids if p != os.getpid()]
    return [pids[i % len(pids)] for i in range(SENDERS)]


def storm_lines(n: int, start_ts: float = 1000.0) -> bytes:
    out = []
    who = senders()
    for i in range(n):
        ts = start_ts + i * 2e-5
        if i % SCHED_EVERY == SCHED_EVERY - 1:
            child = 4_000_000 + i
            out.append(f"           <...>-{child:<7} ({child:>7}) [000] ..... {ts:.6f}: sched_process_exit: "
                       f"comm=cc1 pid={child} prio=120 group_dead=true")
            continue
        sender = who[i % SENDERS]
        res = 0 if i % DELIVERED_EVERY == 0 else 2
        out.append(f"            bash-{sender:<7} ({sender:>7}) [00{i % 2}] d..2. {ts:.6f}: signal_generate: "
                   f"sig=15 errno=0 code=0 comm=redis-server pid={REDIS_PID} grp=1 res={res}")
    return ("\n".join(out) + "\n").encode()


def one_round(n: int) -> tuple[float, int, int]:
    """(seconds of CPU for n lines, signal lines counted, audit events)."""
    sup = _Supervision()
    attribution = Attribution(sup, ())
    w = KernelWitness(attribution.on_kernel_signal)
    data = storm_lines(n)
    started = time.process_time()
    for n, i in enumerate(range(0, len(data), READ_SIZE), 1):
        w.feed(data[i:i + READ_SIZE], flush=False)
        if n % READS_PER_DRAIN == 0:
            w.flush_merges()
    w.flush_merges()
    took = time.process_time() - started
    attribution.close_bursts()
    return took, w.signals, len(sup.events)


def measure(lines: int = 20_000, rounds: int = 5) -> dict[str, float]:
    """µs of CPU per line (median of `rounds`), and how many were signal lines."""
    one_round(min(lines, 2000))             # warm: imports, the Namer's /proc reads
    results = [one_round(lines) for _ in range(rounds)]
    per_line = [t / lines * 1e6 for t, _, _ in results]
    return {"us_per_line": statistics.median(per_line), "min_us_per_line": min(per_line),
            "signals": results[0][1], "lines": lines, "events": results[0][2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    r = measure(args.lines, args.rounds)
    print(f"{r['us_per_line']:.2f} µs/line median (best {r['min_us_per_line']:.2f}) over {args.rounds} rounds of "
          f"{r['lines']} lines ({r['signals']} signal lines, {r['events']} audit events); "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
