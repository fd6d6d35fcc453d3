"""Who depends on whom, over program instances: start order, stop order, selections.

Built once per configuration (config/program.py has already ordered the specs dependencies
first and refused cycles), so every lookup per event is a dict access.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar

from relayq_supervisor.config.model import ProgramSpec
from relayq_supervisor.errors import UnknownProgram


class Instance(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> ProgramSpec: ...


P = TypeVar("P", bound=Instance)


class Graph(Generic[P]):
    def __init__(self, specs: Sequence[ProgramSpec], instances: Iterable[P]):
        self.order: list[P] = list(instances)       # dependency order: dependencies first
        self.by_name = {p.name: p for p in self.order}
        self.groups: dict[str, list[P]] = {}
        for p in self.order:
            self.groups.setdefault(p.spec.name, []).append(p)
        self.dependent_specs = {spec.name: [s.name for s in specs if spec.name in s.depends_on] for spec in specs}

    def instances(self, program: str) -> list[P]:
        """`worker` -> worker:0, worker:1; [] for an unknown program."""
        return self.groups.get(program, [])

    def dependencies(self, p: P) -> list[P]:
        return [d for dep in p.spec.depends_on for d in self.instances(dep)]

    def dependents(self, p: P) -> list[P]:
        return [q for name in self.dependent_specs.get(p.spec.name, ()) for q in self.instances(name)]

    def resolve(self, names: Iterable[str]) -> list[P]:
        """`worker` selects all its instances, `worker:1` one; an unknown name is refused."""
        out: list[P] = []
        for name in names:
            found = [self.by_name[name]] if name in self.by_name else self.instances(name)
            if not found:
                known = ", ".join(sorted(set(self.groups) | set(self.by_name)))
                raise UnknownProgram(f"unknown program name {name!r} (known: {known})")
            out.extend(p for p in found if p not in out)
        return out

    def with_dependencies(self, targets: Iterable[P]) -> list[P]:
        """`targets` and everything they need, in start order."""
        return self._closure(targets, self.dependencies)

    def with_dependents(self, targets: Iterable[P]) -> list[P]:
        """`targets` and everything that needs them, in start order."""
        return self._closure(targets, self.dependents)

    def stop_layers(self, targets: Iterable[P]) -> list[list[P]]:
        """`targets` in layers that may stop together: dependents before what they depend on."""
        remaining = list(targets)
        layers = []
        while remaining:
            layer = [p for p in remaining if not any(q in remaining for q in self.dependents(p))] or remaining
            layers.append(layer)
            remaining = [p for p in remaining if p not in layer]
        return layers

    def _closure(self, targets: Iterable[P], step: Callable[[P], list[P]]) -> list[P]:
        seen: set[str] = set()
        todo = list(targets)
        while todo:
            p = todo.pop()
            if p.name not in seen:
                seen.add(p.name)
                todo.extend(step(p))
        return [p for p in self.order if p.name in seen]
