"""14. The kernel witness's cost: `python -m bench --only witness` (a BENCHMARKS.md section)
or `python -m bench.witness_cost [--quick]` (prints the tables).

1. Parsing, in-process: trace_pipe lines handled per second (fork/exec/exit lines, which
   the witness reads for every process on the node, and signal lines, each naming a gone
   sender with its parent chain from the history).
2. A real supervisor (one sleeping child, tap on) with the witness on and off, while this
   script execs /bin/true at a fixed rate (200, 1000, 5000 a second, from 4 processes):
   the supervisor's CPU % of one core over the window, and the events the kernel dropped
   (buffer overrun) as the witness counted them.

Needs root and tracefs for part 2 (skipped with the reason otherwise). Not a test: numbers
for BENCHMARKS.md, never assertions. Everything started here is ended by pid.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.processes import stop_supervisor
from relayq_supervisor.linux import tracefs as tracefs_files
from relayq_supervisor.witness.trace_instance import in_initial_pid_namespace
from relayq_supervisor.witness.tracefs import KernelWitness


def cpu_seconds(pid: int) -> float:
    """On-CPU time of all its threads, ns resolution (bench/processes.py has the same, but
    that module does not import on this tree: own_children moved to node.py)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            continue
    return total / 1e9

GONE = 4_200_000


def history_lines(n: int) -> list[bytes]:
    out = []
    for i in range(n // 3):
        parent, child, ts = GONE + i, GONE + i + 1, 100.0 + i * 1e-4
        out.append(f"            bash-{parent:<7} ({parent:>7}) [001] ..... {ts:.6f}: sched_process_fork: "
                   f"comm=bash pid={parent} child_comm=bash child_pid={child}")
        out.append(f"            true-{child:<7} ({child:>7}) [000] ..... {ts + 3e-5:.6f}: sched_process_exec: "
                   f"filename=/usr/bin/true pid={child} old_pid={child}")
        out.append(f"            true-{child:<7} ({child:>7}) [000] ..... {ts + 6e-5:.6f}: sched_process_exit: "
                   f"comm=true pid={child} prio=120 group_dead=true")
    return [(line + "\n").encode() for line in out]


def signal_lines(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        sender, ts = GONE + 2 * i + 1, 200.0 + i * 1e-4
        out.append(f"              sh-{sender:<7} ({sender:>7}) [001] d..1. {ts:.6f}: signal_generate: "
                   f"sig=10 errno=0 code=0 comm=worker pid=812 grp=1 res=0")
    return [(line + "\n").encode() for line in out]


def parse_rate(lines: list[bytes], prime: list[bytes] = ()) -> tuple[float, int]:
    seen = []
    w = KernelWitness(seen.append)
    for chunk in prime:
        w.feed(chunk)
    data = b"".join(lines)
    started = time.process_time()
    for i in range(0, len(data), 1 << 16):      # trace_pipe reads come in 64 KiB at most
        w.feed(data[i:i + (1 << 16)])
    took = time.process_time() - started
    return len(lines) / took, len(seen)


LOAD_PROCESSES = 4


def parallel_exec_load(rate: float, seconds: float) -> int:
    """exec_load() in LOAD_PROCESSES forked processes, `rate` in all; how many ran."""
    pids = []
    for _ in range(LOAD_PROCESSES):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                os.write(w, str(exec_load(rate / LOAD_PROCESSES, seconds)).encode())
            finally:
                os._exit(0)
        os.close(w)
        pids.append((pid, r))
    done = 0
    for pid, r in pids:
        with os.fdopen(r, "rb") as f:
            out = f.read()
        os.waitpid(pid, 0)
        done += int(out or b"0")
    return done


def exec_load(rate: float, seconds: float) -> int:
    """/bin/true `rate` times a second for `seconds`, paced by the clock; returns how many ran."""
    interval, started, done = 1.0 / rate, time.monotonic(), 0
    running = []
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) / interval) + 1
        while done < due:
            running.append(os.posix_spawn("/bin/true", ["true"], {}))
            done += 1
        while running:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            running.remove(pid)
        time.sleep(min(interval, 0.002))
    for pid in running:
        os.waitpid(pid, 0)
    return done


def supervisor_run(workdir: Path, witness: bool, rates: list[float], window: float,
                   measured: list[tuple] | None = None) -> list[tuple]:
    """Rows for the table; `measured` gets (state, rate asked, done/s, CPU %, lost) too."""
    measured = [] if measured is None else measured
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.toml").write_text(textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"
        kernel_trace = {"true" if witness else "false"}

        [[program]]
        name = "sleeper"
        command = ["/bin/sleep", "100000"]
        ready_after = 0.1
        """))
    log = open(workdir / "supervisor.log", "wb")
    sup = subprocess.Popen([sys.executable, "-m", "relayq_supervisor", "-c", "config.toml"], cwd=workdir,
                           stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        status = None
        deadline = time.monotonic() + 30
        while status is None or status["programs"][0]["state"] != "RUNNING":
            if time.monotonic() > deadline or sup.poll() is not None:
                raise RuntimeError(f"supervisor did not come up: {(workdir / 'supervisor.log').read_text()}")
            r = subprocess.run([sys.executable, "-m", "relayq_supervisor.ctl", "status", "--json", "-c",
                                str(workdir / "config.toml")], capture_output=True, text=True)
            status = json.loads(r.stdout) if r.returncode == 0 else None
            time.sleep(0.05)
        state = status["supervisor"]["kernel_trace"]
        for rate in rates:
            stats0 = witness_stats(workdir)
            cpu0, t0 = cpu_seconds(sup.pid), time.monotonic()
            done = parallel_exec_load(rate, window) if rate else (time.sleep(window) or 0)
            cpu, took = cpu_seconds(sup.pid) - cpu0, time.monotonic() - t0
            stats = witness_stats(workdir)
            lines = (stats or {}).get("lines", 0) - (stats0 or {}).get("lines", 0)
            lost = (stats or {}).get("lost", 0) - (stats0 or {}).get("lost", 0)
            rows.append((state.split(" (")[0], f"{rate:g}", f"{done / took:.0f}", f"{100 * cpu / took:.2f} %",
                         f"{lines / took:.0f}" if stats else "-", str(lost) if stats else "-"))
            measured.append((state, rate, done / took, 100 * cpu / took, lost if stats else None))
    finally:
        stop_supervisor(sup)
        log.close()
    return rows


def witness_stats(workdir: Path) -> dict | None:
    r = subprocess.run([sys.executable, "-m", "relayq_supervisor.ctl", "status", "--json", "-c",
                        str(workdir / "config.toml")], capture_output=True, text=True)
    return json.loads(r.stdout)["supervisor"].get("kernel_trace_stats") if r.returncode == 0 else None


def table(title: str, header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.witness_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer rates")
    args = parser.parse_args(argv)
    n = 30_000 if args.quick else 150_000
    hist_rate, _ = parse_rate(history_lines(n))
    sig_rate, named = parse_rate(signal_lines(n // 10), prime=history_lines(n // 5))
    print(table("1. trace_pipe lines handled per second of CPU (in-process)",
                ("lines", "count", "per second", "µs each"),
                [("fork/exec/exit", n, f"{hist_rate:,.0f}", f"{1e6 / hist_rate:.1f}"),
                 ("signal_generate, sender named", named, f"{sig_rate:,.0f}", f"{1e6 / sig_rate:.1f}")]))
    print()
    if os.geteuid() != 0 or not in_initial_pid_namespace():
        print("2. skipped: needs root in the initial pid namespace")
        return 0
    mounted = None
    if tracefs_files.find_mount() is None:
        tracefs_files.mount()
        mounted = tracefs_files.DEFAULT_MOUNT
    rates = [0.0, 200.0] if args.quick else [0.0, 200.0, 1000.0, 5000.0]
    window = 5.0 if args.quick else 10.0
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="relayq-witness-bench-") as tmp:
            for witness in (False, True):
                rows += supervisor_run(Path(tmp) / ("on" if witness else "off"), witness, rates, window)
    finally:
        if mounted:
            tracefs_files.umount(mounted)
    print(table(f"2. supervisor CPU with /bin/true exec'd at a fixed rate ({window:g} s windows, "
                f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})",
                ("witness", "execs/s asked", "execs/s done", "supervisor CPU", "trace lines/s", "lost"), rows))
    return 0


NAME = "witness"
TITLE = "Kernel witness cost (parsing, and CPU at 200, 1000, 5000 execs/s)"


def run(ctx):
    from .report import Section, Table, Target
    n = 30_000 if ctx.quick else 150_000
    hist_rate, _ = parse_rate(history_lines(n))
    sig_rate, named = parse_rate(signal_lines(n // 10), prime=history_lines(n // 5))
    method = ("Part 1, in-process: trace_pipe lines as the kernel prints them, fed to the witness in 64 KiB "
              "pieces; CPU per line. Part 2: a real supervisor (one sleeping child, tap on) with "
              "`kernel_trace = false` and then `true`, while the benchmark execs /bin/true at a fixed rate from "
              f"{LOAD_PROCESSES} processes; the supervisor's CPU (schedstat) over each window, the trace lines it "
              "read per second and the events the kernel dropped (buffer overrun), as the witness counted them. "
              "Lines per second include everything else the node runs (the idle row shows that floor). On this "
              "2-core machine the load generator cannot always reach 5000 execs/s: the done column says what ran.")
    parse = Table("1. trace_pipe lines handled per second of CPU (in-process)", ("lines", "count", "per second",
                                                                                  "µs each"),
                  (("fork/exec/exit", f"{n:,}", f"{hist_rate:,.0f}", f"{1e6 / hist_rate:.1f}"),
                   ("signal_generate, sender named", f"{named:,}", f"{sig_rate:,.0f}", f"{1e6 / sig_rate:.1f}")))
    if os.geteuid() != 0 or not in_initial_pid_namespace():
        return Section(NAME, TITLE, method, (parse,), skipped="part 2 needs root in the initial pid namespace")
    rates = [0.0, 200.0, 1000.0] if ctx.quick else [0.0, 200.0, 1000.0, 5000.0]
    window = 5.0 if ctx.quick else 10.0
    rows: list[tuple] = []
    measured: list[tuple] = []
    mounted = None
    if tracefs_files.find_mount() is None:
        tracefs_files.mount()
        mounted = tracefs_files.DEFAULT_MOUNT
    try:
        for witness in (False, True):
            ctx.say(f"witness cost: kernel_trace = {str(witness).lower()}, rates {rates}")
            rows += supervisor_run(ctx.dir(NAME, "on" if witness else "off"), witness, rates, window, measured)
    finally:
        if mounted:
            tracefs_files.umount(mounted)
    cpu = Table(f"2. supervisor CPU with /bin/true exec'd at a fixed rate ({window:g} s windows)",
                ("witness", "execs/s asked", "execs/s done", "supervisor CPU (one core)", "trace lines/s", "lost"),
                tuple(tuple(str(c) for c in r) for r in rows))
    at_1000 = next((m for m in measured if m[0] == "watching" and m[1] == 1000.0), None)
    targets = []
    if at_1000 is None:
        targets.append(Target("under 2% of one core at 1000 execs/s", "-", None, "the witness did not run"))
    else:
        _, _, done, pct, lost = at_1000
        targets.append(Target("under 2% of one core at 1000 execs/s", f"{pct:.2f} % ({done:.0f} execs/s done)",
                              pct < 2.0, "" if pct < 2.0 else "see part 1: the cost per line"))
        targets.append(Target("no events lost at 1000 execs/s", str(lost), lost == 0,
                              "" if lost == 0 else "the trace buffer overran between two reads"))
    return Section(NAME, TITLE, method, (parse, cpu), tuple(targets))


if __name__ == "__main__":
    sys.exit(main())
