"""What a reload changes: a pure diff of two configurations (supervisord's
`diff_to_active`: added, changed, removed). What a kind of program cannot change
while running is the kind's to say (kinds.refuse_reload)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from relayq_supervisor.config.model import Config


@dataclass(frozen=True)
class Changes:
    added: list[str] = field(default_factory=list)      # program names
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)    # restarted with the new settings
    resized: list[str] = field(default_factory=list)    # only numprocs changed (N > 1 both ways)
    not_applied: list[str] = field(default_factory=list)  # [supervisor] keys: need a restart

    def going(self, old: Config, new: Config) -> set[str]:
        """Instance names to stop: removed and changed programs, and a resize's surplus."""
        keep = {n for spec in new.programs if spec.name in self.resized for n in spec.instance_names()}
        out = set()
        for spec in old.programs:
            for n in spec.instance_names():
                if spec.name in self.removed or spec.name in self.changed or \
                        (spec.name in self.resized and n not in keep):
                    out.add(n)
        return out

    def to_dict(self) -> dict[str, list[str]]:
        return {"added": self.added, "removed": self.removed, "changed": self.changed, "resized": self.resized,
                "not_applied": [f"[supervisor] {k}: restart the supervisor to apply" for k in self.not_applied]}


def diff(old: Config, new: Config) -> Changes:
    before = {spec.name: spec for spec in old.programs}
    after = {spec.name: spec for spec in new.programs}
    resized, changed = [], []
    for name in after:
        if name not in before or after[name] == before[name]:
            continue
        same_but_count = dataclasses.replace(before[name], numprocs=after[name].numprocs) == after[name]
        # 1 <-> N renames the instances (redis vs worker:0): that is a change, not a resize
        if same_but_count and before[name].numprocs > 1 and after[name].numprocs > 1:
            resized.append(name)
        else:
            changed.append(name)
    not_applied = [f.name for f in dataclasses.fields(new.supervisor)
                   if getattr(new.supervisor, f.name) != getattr(old.supervisor, f.name)]
    return Changes(added=[n for n in after if n not in before], removed=[n for n in before if n not in after],
                   changed=changed, resized=resized, not_applied=not_applied)

