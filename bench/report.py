"""Medians and ratios, tables, and BENCHMARKS.md.

Each benchmark section is written between markers, so `python -m bench --only NAME`
can replace its own section and keep the others as they were measured.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Samples:
    values: tuple[float, ...]

    @classmethod
    def of(cls, values) -> Samples:
        return cls(tuple(values))

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def min(self) -> float:
        return min(self.values)

    @property
    def max(self) -> float:
        return max(self.values)


@dataclass(frozen=True)
class Target:
    """One of the supervisor's targets, as measured in this run."""
    what: str                   # "restart latency within 1.25x of raw"
    measured: str               # "1.10x (12.1 ms vs 11.0 ms)"
    met: bool | None            # None: could not be measured
    why: str = ""               # for a miss (or an unmeasured target): the reason

    @property
    def verdict(self) -> str:
        if self.met is None:
            return f"not measured: {self.why}" if self.why else "not measured"
        if self.met:
            return "met"
        return f"missed: {self.why}" if self.why else "missed"

    def to_dict(self) -> dict:
        return {"what": self.what, "measured": self.measured, "met": self.met, "why": self.why}

    @classmethod
    def from_dict(cls, d: dict) -> Target:
        return cls(d["what"], d["measured"], d["met"], d.get("why", ""))


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def markdown(self) -> str:
        out = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |",
               "|" + "|".join("---" for _ in self.columns) + "|"]
        for row in self.rows:
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        return "\n".join(out)


@dataclass(frozen=True)
class Section:
    """What one benchmark found."""
    name: str                       # restart | redis | idle | scale | tap
    title: str
    method: str                     # how it was measured, for the reader
    tables: tuple[Table, ...] = ()
    targets: tuple[Target, ...] = ()
    notes: tuple[str, ...] = ()     # findings, gaps and their causes
    skipped: str | None = None      # the whole benchmark did not run: why
    seconds: float = 0.0
    command: str = ""
    load: str = ""                  # load averages when it ended
    tree: str = ""                  # the commit measured

    def markdown(self) -> str:
        out = [f"<!-- section:{self.name} -->",
               f"<!-- targets:{self.name} {json.dumps([t.to_dict() for t in self.targets])} -->",
               f"## {self.title}", ""]
        if self.command:
            load = f"; load average 1/5/15 min at its end: {self.load}" if self.load else ""
            tree = f" on {self.tree}" if self.tree else ""
            out += [f"Measured by `{self.command}`{tree} ({self.seconds:.0f} s{load}).", ""]
        out += [self.method, ""]
        if self.skipped:
            out += [f"**Skipped:** {self.skipped}", ""]
        for table in self.tables:
            out += [table.markdown(), ""]
        if self.targets:
            out += [Table("Targets", ("target", "measured", "target met?"),
                          tuple((t.what, t.measured, t.verdict) for t in self.targets)).markdown(), ""]
        for note in self.notes:
            out += [f"- {note}"]
        if self.notes:
            out.append("")
        out.append(f"<!-- /section:{self.name} -->")
        return "\n".join(out)


def ms(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 10:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def ratio(a: float, b: float) -> str:
    if b <= 0:
        return "-"
    r = a / b
    return f"{r:.2f}x" if r < 10 else f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


def mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def redis_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else "unknown"


def tree_line(repo: str) -> str:
    """The commit under test, and whether the supervisor's sources differ from it."""
    def git(*args):
        # --no-optional-locks: a benchmark must not rewrite the index behind anyone's back
        return subprocess.run(["git", "--no-optional-locks", "-C", repo, *args], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    try:
        head = git("log", "-1", "--format=%h (%s)")
        dirty = git("status", "--porcelain", "--", "relayq_supervisor")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    if not head:
        return "unknown (not a git checkout)"
    if len(head) > 90:
        head = head[:86] + "...)"
    return f"commit {head}" + (", with uncommitted changes in relayq_supervisor/" if dirty else "")


def machine_line(redis_binary: str | None) -> str:
    redis = f"redis {redis_version(redis_binary)} ({redis_binary})" if redis_binary else "no redis-server"
    return (f"{cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {redis}")


SECTION_RE = re.compile(r"<!-- section:(\w+) -->.*?<!-- /section:\1 -->", re.S)
TARGETS_RE = re.compile(r"<!-- targets:(\w+) (\[.*?\]) -->")


def kept_sections(old_text: str, replaced: set[str]) -> dict[str, tuple[str, str, list[Target]]]:
    """Sections of an existing BENCHMARKS.md that this run does not replace:
    name -> (markdown, title, targets)."""
    kept = {}
    for m in SECTION_RE.finditer(old_text):
        name = m.group(1)
        if name in replaced:
            continue
        targets: list[Target] = []
        t = TARGETS_RE.search(m.group(0))
        if t:
            try:
                targets = [Target.from_dict(d) for d in json.loads(t.group(2))]
            except (ValueError, KeyError):
                targets = []
        title = re.search(r"^## (.+)$", m.group(0), re.M)
        kept[name] = (m.group(0), title.group(1) if title else name, targets)
    return kept


@dataclass
class Document:
    machine: str
    tree: str
    command: str
    when: str
    order: tuple[str, ...]
    sections: dict[str, Section] = field(default_factory=dict)
    intro: str = ""

    def render(self, old_text: str = "") -> str:
        kept = kept_sections(old_text, set(self.sections)) if old_text else {}
        blocks: list[str] = []
        summary: list[tuple[str, Target]] = []
        for name in self.order:
            if name in self.sections:
                s = self.sections[name]
                blocks.append(s.markdown())
                summary += [(s.title, t) for t in s.targets]
            elif name in kept:
                text, title, targets = kept[name]
                blocks.append(text)
                summary += [(title, t) for t in targets]
        head = [
            "# Benchmarks", "",
            "Generated by `python -m bench` (bench/); do not edit by hand. Every comparison is made in one run",
            "with the contenders alternating, and reported as median, min and max of the samples with ratios.", "",
            f"- **Machine:** {self.machine}",
            f"- **Tree:** {self.tree}",
            f"- **Command:** `{self.command}` ({self.when})",
            "- **Reproduce:** after the README's set-up, `python -m bench` from the repository root",
            "  (about 7 minutes on 2 cores; `--quick` for a smoke run, `--only NAME` for one benchmark).", "",
        ]
        if self.intro:
            head += [self.intro, ""]
        if summary:
            head += [Table("Targets at a glance", ("benchmark", "target", "measured", "target met?"),
                           tuple((title, t.what, t.measured, t.verdict) for title, t in summary)).markdown(), ""]
        return "\n".join(head + ["\n\n".join(blocks), ""])
