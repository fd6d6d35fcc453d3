"""systemd unit files as systemd resolves them (precedence, masks, aliases, enablement, drop-ins),
and the rival a unit or timer makes."""
from __future__ import annotations

import dataclasses
import os
import subprocess
from dataclasses import dataclass

from relayq_supervisor.doctor.commands import DoctorTarget, command_match, name_matches_redis, script_evidence
from relayq_supervisor.doctor.report import Rival
from relayq_supervisor.doctor.rootfs import (
    existing_dirs,
    ignored_file_name,
    listdir,
    read_text,
    resolve_link,
    system_path,
)

OWN_UNIT = "relayq-supervisor.service"

# Precedence order (first wins), as systemd searches them; /lib and /usr/lib are often the same
# directory (merged /usr), which existing_dirs() collapses. generator.late holds units made from
# SysV init scripts such as /etc/init.d/redis-server.
UNIT_DIRS = (
    "etc/systemd/system",
    "run/systemd/system",
    "usr/local/lib/systemd/system",
    "lib/systemd/system",
    "usr/lib/systemd/system",
    "run/systemd/generator.late",
)
UNIT_SUFFIXES = (".service", ".timer", ".path")
DEPENDENCY_DIR_SUFFIXES = (".wants", ".requires", ".upholds")
EXEC_KEYS = frozenset({"ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost",
                       "ExecReload", "ExecCondition"})
SYSTEMCTL_TIMEOUT = 3.0


@dataclass(frozen=True)
class UnitLine:
    path: str      # as seen on the node
    lineno: int
    section: str
    key: str
    value: str

    def evidence(self) -> str:
        return f"{self.path}:{self.lineno}: {self.key}={self.value}"


def _parse_unit(real: str, root: str) -> list[UnitLine]:
    text = read_text(real)
    if text is None:
        return []
    lines, section, pending, start = [], "", "", 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = lineno
            stripped = raw.strip()
            if not stripped or stripped[0] in "#;":
                continue
            if stripped.startswith("[") and stripped.endswith("]"):
                section = stripped[1:-1]
                continue
        else:
            stripped = raw.strip()
        if stripped.endswith("\\"):             # continuation: the value goes on on the next line
            pending += stripped[:-1] + " "
            continue
        logical, pending = pending + stripped, ""
        key, sep, value = logical.partition("=")
        if sep:
            lines.append(UnitLine(system_path(real, root), start, section, key.strip(), value.strip()))
    return lines


class SystemdUnits:
    """The unit files under root, resolved as systemd would: precedence, masks, aliases, enablement."""

    def __init__(self, root: str = "/"):
        self.root = root
        self.dirs = existing_dirs(UNIT_DIRS, root)
        self.files: dict[str, str] = {}          # unit name -> real path of the file in effect
        self.masked: set[str] = set()
        self.linked: set[str] = set()            # a symlink in /etc names this unit (systemctl link/enable)
        self.aliases: dict[str, str] = {}        # alias name -> unit name
        self.enabled_by: dict[str, list[str]] = {}
        self.dropin_dirs: dict[str, list[str]] = {}    # unit name -> its name.d directories, by precedence
        for unit_dir in self.dirs:
            self._scan(unit_dir)

    def _scan(self, unit_dir: str) -> None:
        in_etc = system_path(unit_dir, self.root).startswith("/etc/")
        for entry in listdir(unit_dir):
            name = entry.name
            if name.endswith(DEPENDENCY_DIR_SUFFIXES) and entry.is_dir(follow_symlinks=False):
                for link in listdir(entry.path):
                    self._note_enabled(link.name, system_path(link.path, self.root))
                    target = os.path.basename(resolve_link(link.path, self.root))
                    if target != link.name and target.endswith(UNIT_SUFFIXES):
                        self._note_enabled(target, system_path(link.path, self.root))
                continue
            if name.endswith(".d") and entry.is_dir():
                self.dropin_dirs.setdefault(name[:-2], []).append(entry.path)
                continue
            if not name.endswith(UNIT_SUFFIXES) or ignored_file_name(name):
                continue
            if name in self.files or name in self.masked or name in self.aliases:
                continue            # shadowed by a directory of higher precedence
            if entry.is_symlink():
                real = resolve_link(entry.path, self.root)
                if real == "/dev/null":
                    self.masked.add(name)
                    continue
                target = os.path.basename(real)
                if target != name:
                    self.aliases[name] = target
                    if in_etc:
                        self._note_enabled(target, f"alias {system_path(entry.path, self.root)}")
                    continue
                if not os.path.isfile(real):
                    continue        # dangling: systemd cannot load it either
                if in_etc:
                    self.linked.add(name)
                self.files[name] = real
                continue
            try:
                empty = entry.stat().st_size == 0
            except OSError:
                continue
            if empty:               # systemd treats an empty unit file like a mask
                self.masked.add(name)
            else:
                self.files[name] = entry.path

    def _note_enabled(self, name: str, by: str) -> None:
        self.enabled_by.setdefault(name, []).append(by)
        prefix, at, rest = name.partition("@")
        if at and rest and not rest.startswith("."):     # an instance (foo@6380.service) enables foo@.service
            self.enabled_by.setdefault(f"{prefix}@{os.path.splitext(rest)[1]}", []).append(by)

    def lines(self, name: str) -> list[UnitLine]:
        """The unit's lines, its drop-ins (name.d/*.conf in every unit dir) after it."""
        real = self.files.get(name)
        result = _parse_unit(real, self.root) if real else []
        for dropin_dir in self.dropin_dirs.get(name, []):
            for entry in listdir(dropin_dir):
                if entry.name.endswith(".conf"):
                    result.extend(_parse_unit(entry.path, self.root))
        return result

    def state(self, name: str) -> str:
        return "enabled" if self.enabled_by.get(name) or name in self.linked else "installed"

    def names(self) -> list[str]:
        return sorted(self.files)

    def rival(self, name: str, target: DoctorTarget, _depth: int = 0) -> Rival | None:
        """The rival this unit is, or None (not related to Redis or the programs, masked, ours)."""
        name = self.aliases.get(name, name)
        if name == OWN_UNIT or name in self.masked or name not in self.files or _depth > 3:
            return None
        if name.endswith(".service"):
            return self._service_rival(name, target)
        return self._trigger_rival(name, target, _depth)

    def _service_rival(self, name: str, target: DoctorTarget) -> Rival | None:
        execs = [line for line in self.lines(name) if line.section == "Service" and line.key in EXEC_KEYS]
        matched = [(m[0], line, m[1]) for line in execs if (m := command_match(line.value, target))]
        scripts = [found for line in execs for found in script_evidence(line.value, target, self.root)]
        if not matched and not scripts and not name_matches_redis(name):
            return None
        evidence = [line.evidence() for _, line, _ in matched] or [line.evidence() for line in execs[:1]]
        if not evidence:
            evidence = [f"{system_path(self.files[name], self.root)}: no Exec lines"]
        evidence += [f"  via {where}  ({why})" for _, where, why in scripts]
        evidence += self._enabled_evidence(name)
        # ExecStart may only name redis-monitor.sh: then what the script does is the reason.
        candidates = ([(strength, 0, f"{line.key} {why}") for strength, line, why in matched]
                      + [(strength, 1, f"its script {why}") for strength, _, why in scripts])
        reason = min(candidates)[2] if candidates else "unit name matches *redis*"
        return Rival(kind="systemd-unit", name=name, path=system_path(self.files[name], self.root), pid=None,
                     evidence="\n".join(evidence), state=self.state(name), disable=disable_unit(name),
                     reason=reason)

    def _trigger_rival(self, name: str, target: DoctorTarget, depth: int) -> Rival | None:
        lines = self.lines(name)
        section = "Timer" if name.endswith(".timer") else "Path"
        own = [line for line in lines if line.section == section]
        units = [line for line in own if line.key == "Unit"]
        triggered = units[-1].value if units else os.path.splitext(name)[0] + ".service"
        service = self.rival(triggered, target, depth + 1)
        by_name = name_matches_redis(name)
        if service is None and not by_name:
            return None
        evidence = [line.evidence() for line in own if line.key != "Unit" and line.key.startswith(("On", "Path"))]
        evidence += [line.evidence() for line in units]
        if service is not None:
            evidence.append(f"triggers {triggered}: {service.reason}")
        elif not units:
            evidence.append(f"{system_path(self.files[name], self.root)}: triggers {triggered}")
        evidence += self._enabled_evidence(name)
        reason = f"triggers {triggered} ({service.reason})" if service else "unit name matches *redis*"
        kind = "systemd-timer" if name.endswith(".timer") else "systemd-unit"
        return Rival(kind=kind, name=name, path=system_path(self.files[name], self.root), pid=None,
                     evidence="\n".join(evidence), state=self.state(name),
                     disable=f"systemctl disable --now {name}", reason=reason)

    def _enabled_evidence(self, name: str) -> list[str]:
        return [f"enabled by {by}" for by in self.enabled_by.get(name, [])]


def disable_unit(name: str) -> str:
    if "@." in name:    # a template: stop its instances, then keep new ones from starting
        prefix, suffix = name.split("@", 1)
        return (f"systemctl stop '{prefix}@*{suffix}' && systemctl disable {name} "
                f"&& systemctl mask {name}")
    return f"systemctl disable --now {name} && systemctl mask {name}"


def _systemctl_states(names: list[str]) -> dict[str, tuple[str, str]]:
    """unit -> (UnitFileState, ActiveState) from a running systemd; {} when it does not answer."""
    names = [n for n in names if "@." not in n]     # systemctl show refuses bare templates
    if not names:
        return {}
    try:
        out = subprocess.run(["systemctl", "show", "--property=Id,ActiveState,UnitFileState", "--", *names],
                             capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode != 0:
        return {}
    states = {}
    # One block per unit, in the order asked, separated by blank lines.
    for name, block in zip(names, out.stdout.strip().split("\n\n"), strict=False):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states[fields.get("Id") or name] = (fields.get("UnitFileState", ""), fields.get("ActiveState", ""))
    return states


def with_live_state(rivals: list[Rival]) -> list[Rival]:
    states = _systemctl_states([r.name for r in rivals])
    result = []
    for rival in rivals:
        file_state, active = states.get(rival.name, ("", ""))
        if file_state.startswith("masked"):
            continue        # masked at run time (systemctl mask --runtime): cannot start
        if file_state or active:
            parts = [file_state or rival.state or "installed"]
            if active and active != "inactive":
                parts.append(active)
            rival = dataclasses.replace(rival, state=", ".join(parts))
        result.append(rival)
    return result
