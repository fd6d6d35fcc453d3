"""What every benchmark gets: where to work, how to start processes, what is installed."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .contenders import Tool
from .processes import Launcher


@dataclass(frozen=True)
class TapSupport:
    """Whether the supervisor under test accepts `[supervisor] signal_tap`."""
    config_key: bool
    problem: str = ""           # why not, worded for the report


@dataclass
class BenchContext:
    workdir: Path               # every temp file of the run lives under it
    launcher: Launcher
    tools: dict[str, Tool]      # supervisord, circusd
    redis_binary: str | None
    tap: TapSupport
    quick: bool
    say: Callable[[str], None]

    def dir(self, *parts: str) -> Path:
        d = self.workdir.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d
