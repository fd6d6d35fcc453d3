"""Find everything else on a node that could start, stop or kill Redis or the relayq programs.

In the incident Debian's redis-server.service, a home-made relayq-redis-monitor.timer and a hand-started
`redis-server --daemonize yes` all managed one Redis. `relayqctl doctor` prints each such rival with its
evidence and the command that disables it; the supervisor runs the same scan at start-up, and its inotify
watcher calls rival_for_file() when a unit or cron file appears.

Files are parsed without systemd (containers, CI, a mounted image under `root`); systemctl only adds the
live state when it is there. Unreadable files never raise: they are skipped, or reported as "could not read".
"""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import glob
import os
import re
import shlex
import stat
import subprocess
from dataclasses import dataclass

import psutil

from relayq_supervisor.linux.procfs import CgroupUnit, cgroup_unit, listeners, user_name
from relayq_supervisor.printable import escape

OWN_UNIT = "relayq-supervisor.service"

# Precedence order (first wins), as systemd searches them; /lib and /usr/lib are often the same
# directory (merged /usr), which _existing_dirs() collapses. generator.late holds units made from
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

SYSTEM_CRONTABS = ("etc/crontab",)
SYSTEM_CRON_DIRS = ("etc/cron.d",)
# Debian keeps user crontabs in crontabs/, RHEL directly in /var/spool/cron.
USER_CRON_DIRS = ("var/spool/cron/crontabs", "var/spool/cron")
CRON_SCRIPT_DIRS = ("etc/cron.hourly", "etc/cron.daily", "etc/cron.weekly", "etc/cron.monthly")

# Services that start a process without owning it: a Redis in cron.service's cgroup came from a cron job.
JOB_RUNNER_UNITS = frozenset({"cron.service", "crond.service", "cronie.service", "anacron.service",
                              "atd.service"})
# Supervisors recognised by their process name or argv[0..1]; pm2 by its daemon title.
NAMED_SUPERVISORS = ("supervisord", "circusd", "relayq-supervisor")
KIND_ORDER = ("systemd-unit", "systemd-timer", "cron", "supervisor", "process", "port", "open-file")
SCRIPT_MAX_BYTES = 256 * 1024
SYSTEMCTL_TIMEOUT = 3.0


@dataclass(frozen=True)
class Rival:
    """Something other than this supervisor that could start, stop or kill Redis or a program."""
    kind: str              # "systemd-unit" | "systemd-timer" | "cron" | "process" | "port" | "open-file" | "supervisor"
    name: str
    path: str | None       # as seen on the node (a fake root's prefix removed)
    pid: int | None
    evidence: str          # `path:line: text` lines, or `pid N: cmdline` and what else was found
    state: str | None      # "enabled", "installed", "enabled, active", "running", "could not read" ...
    disable: str           # the exact command(s) that disable it
    reason: str = ""       # one phrase: why it is a rival (the audit log's rival_manager reason)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DoctorTarget:
    """What this supervisor owns: the Redis port and dir, the programs' argv, its own pids and config."""
    redis_port: int | None = None
    redis_dir: str | None = None
    program_commands: tuple[tuple[str, ...], ...] = ()
    own_pids: frozenset[int] = frozenset()
    own_config: str | None = None


# ---------------------------------------------------------------------------------------------------
# What a command line does: one code path for unit Exec lines, cron lines, scripts and configs.

_REDIS_SERVER = re.compile(r"(?<![\w.-])redis-server(?![\w-])", re.I)
_REDIS_CLI = re.compile(r"(?<![\w.-])redis-cli(?![\w-])", re.I)
_SHUTDOWN = re.compile(r"\bshutdown\b", re.I)
_KILLER = re.compile(r"(?<![\w.-])(?:kill|pkill|killall|skill|fuser)(?![\w-])"
                     r"|\bsystemctl\b.*\b(?:stop|kill|restart|try-restart|reload-or-restart)\b"
                     r"|\bservice\s+\S+\s+(?:stop|restart)\b", re.I)
_REDIS_WORD = re.compile(r"redis", re.I)
_OTHER_SUPERVISOR = re.compile(r"(?<![\w.-])relayq-supervisor(?![\w-])")
_TOKEN_SPLIT = re.compile(r"[\s;|&()`'\"<>]+")
# Wrappers that run the real command given after them.
_WRAPPERS = frozenset({"env", "nice", "nohup", "setsid", "stdbuf", "ionice", "chrt", "taskset", "exec",
                       "sudo", "runuser", "timeout", "flock"})
_INTERPRETER = re.compile(r"^(?:python[\d.]*|pypy[\d.]*|node(?:js)?|sh|bash|dash|zsh|perl|ruby)$")


def program_markers(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The words that identify a configured program in other command lines: its executable's basename,
    or for an interpreter its `-m` module or script name (matching "python3" itself would flag everything)."""
    words = list(argv)
    if len(words) == 1 and " " in words[0]:
        try:
            words = shlex.split(words[0])
        except ValueError:      # unbalanced quotes: whitespace is good enough to find the executable
            words = words[0].split()
    while words and (os.path.basename(words[0]) in _WRAPPERS or "=" in words[0] or words[0].startswith("-")):
        words.pop(0)
    if not words:
        return ()
    exe = os.path.basename(words[0])
    if not _INTERPRETER.match(exe):
        return (exe,)
    rest = words[1:]
    for i, word in enumerate(rest):
        if word == "-m" and i + 1 < len(rest):
            return (rest[i + 1],)
        if word.startswith("-m") and len(word) > 2:
            return (word[2:],)
        if word == "-c":
            return ()           # inline code: nothing stable to recognise it by
        if not word.startswith("-"):
            return (os.path.basename(word),)
    return ()


def _marker_patterns(target: DoctorTarget) -> tuple[tuple[str, re.Pattern], ...]:
    return _compile_markers(tuple(tuple(argv) for argv in target.program_commands))


@functools.lru_cache(maxsize=32)
def _compile_markers(commands: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, re.Pattern], ...]:
    found = []
    for argv in commands:
        for marker in program_markers(argv):
            if len(marker) >= 3 and marker not in ("redis-server", "redis-cli"):
                # A whole command word (/usr/local/bin/relayq, relayq.worker), not a path component
                # such as /etc/relayq/config.toml.
                pattern = r"(?<![\w.-])" + re.escape(marker) + r"""(?=$|[\s'";|&)])"""
                found.append((marker, re.compile(pattern)))
    return tuple(found)


def command_reason(text: str, target: DoctorTarget) -> str | None:
    """Why this command line could start, stop or kill Redis or a program; None when it cannot."""
    match = _command_match(text, target)
    return match[1] if match else None


def _command_match(text: str, target: DoctorTarget) -> tuple[int, str] | None:
    """(strength, reason): 0 is the strongest evidence (a shutdown), higher is weaker."""
    if _REDIS_CLI.search(text) and _SHUTDOWN.search(text):
        return 0, "shuts Redis down (redis-cli shutdown)"
    if _SHUTDOWN.search(text) and _REDIS_WORD.search(text):
        return 0, "shuts Redis down"        # a client library's shutdown(), e.g. in python3 -c
    if _KILLER.search(text):
        if _REDIS_WORD.search(text):
            return 1, "kills or stops Redis"
        if target.redis_port and re.search(rf"(?<!\d){target.redis_port}(?!\d)", text):
            return 1, f"kills or stops whatever holds port {target.redis_port}"
    if _REDIS_SERVER.search(text):
        return 2, "starts a redis-server"
    if _REDIS_CLI.search(text):
        return 3, "runs redis-cli (which can shut Redis down)"
    for marker, pattern in _marker_patterns(target):
        if pattern.search(text):
            return 4, f"runs {marker}, a program relayq-supervisor owns"
    if _OTHER_SUPERVISOR.search(text):
        return 4, "runs another relayq-supervisor"
    for token in _TOKEN_SPLIT.split(text):
        if "=" in token or "://" in token:
            continue        # REDIS_URL=redis://... configures a client, it runs nothing
        base = os.path.basename(token)
        if _REDIS_WORD.search(base):
            return 5, f"runs {base}, a Redis-named command"
    return None


def name_matches_redis(name: str) -> bool:
    return fnmatch.fnmatch(name.lower(), "*redis*")


def _script_evidence(text: str, target: DoctorTarget, root: str) -> list[tuple[int, str, str]]:
    """Follow absolute script paths named in `text` one level deep (a unit or cron line that only
    names /usr/local/bin/redis-monitor.sh): the script's matching lines are the real evidence.
    Returns (strength, `script:line: text`, why), the strongest evidence first."""
    found = []
    for token in _TOKEN_SPLIT.split(text):
        token = token.lstrip("@-:+!")
        if not token.startswith("/"):
            continue
        script = _read_script(_in_root(token, root))
        if script is None:
            continue        # binaries and unreadable files: their name is all we have
        for lineno, line in enumerate(script.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            match = _command_match(stripped, target)
            if match:
                found.append((match[0], lineno, f"{token}:{lineno}: {stripped}", match[1]))
    found.sort(key=lambda f: (f[0], f[1]))
    return [(strength, where, why) for strength, _, where, why in found[:5]]


# ---------------------------------------------------------------------------------------------------
# Files under a (possibly fake) root.

def _root(root: str) -> str:
    return os.path.abspath(root or "/")


def _in_root(system_path: str, root: str) -> str:
    """The real path of a path as seen on the node."""
    root = _root(root)
    return system_path if root == "/" else os.path.join(root, system_path.lstrip("/"))


def _system_path(real: str, root: str) -> str:
    """A real path as seen on the node (a fake root's prefix removed), for evidence and commands."""
    root = _root(root)
    real = os.path.abspath(real)
    if root == "/":
        return real
    rel = os.path.relpath(real, root)
    if rel == ".":
        return "/"
    return real if rel.startswith("..") else "/" + rel


def _resolve_link(link: str, root: str) -> str:
    """Follow a symlink inside root: absolute targets are relative to root, not to this host."""
    path = link
    for _ in range(8):
        try:
            target = os.readlink(path)
        except OSError:
            return path
        if target == "/dev/null":
            return target       # a mask, whatever the root
        if os.path.isabs(target):
            path = _in_root(target, root)
        else:
            path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return path


def _read_text(path: str, limit: int = 1024 * 1024) -> str | None:
    """A regular file's text, or None (missing, unreadable, a FIFO that would block, a device)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _read_script(path: str) -> str | None:
    """A `#!` script's text; None for binaries (ExecStart=/usr/sbin/nginx), without reading them whole."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            if f.read(2) != b"#!":
                return None
            return ("#!" + f.read(SCRIPT_MAX_BYTES).decode("utf-8", "replace"))
    except OSError:
        return None


def _existing_dirs(relative_dirs, root: str) -> list[str]:
    seen, dirs = set(), []
    for rel in relative_dirs:
        real = _in_root("/" + rel, root)
        if not os.path.isdir(real):
            continue
        key = os.path.realpath(real)
        if key not in seen:
            seen.add(key)
            dirs.append(real)
    return dirs


def _listdir(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _ignored_file_name(name: str) -> bool:
    # editor and package-manager leftovers, which cron and run-parts skip too
    return (name.startswith(".") or name.endswith("~") or ".dpkg-" in name or ".rpm" in name
            or name.endswith(".swp"))


def watched_dirs(root: str = "/") -> list[str]:
    """The unit and cron directories (and unit .wants/.requires dirs) that exist under root."""
    dirs = _existing_dirs(UNIT_DIRS, root)
    # `systemctl enable` links into /etc's (and `--runtime` into /run's) .wants dirs; packages' own
    # .wants dirs under /lib only change with the package, which drops a unit file anyway.
    for admin_dir in _existing_dirs(UNIT_DIRS[:2], root):
        dirs.extend(e.path for e in _listdir(admin_dir)
                    if e.name.endswith(DEPENDENCY_DIR_SUFFIXES) and e.is_dir(follow_symlinks=False))
    dirs.extend(_existing_dirs(SYSTEM_CRON_DIRS + USER_CRON_DIRS + CRON_SCRIPT_DIRS, root))
    etc = _in_root("/etc", root)
    if os.path.isdir(etc):
        dirs.append(etc)     # /etc/crontab lives directly in /etc
    return dirs


# ---------------------------------------------------------------------------------------------------
# systemd units

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
    text = _read_text(real)
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
            lines.append(UnitLine(_system_path(real, root), start, section, key.strip(), value.strip()))
    return lines


class SystemdUnits:
    """The unit files under root, resolved as systemd would: precedence, masks, aliases, enablement."""

    def __init__(self, root: str = "/"):
        self.root = root
        self.dirs = _existing_dirs(UNIT_DIRS, root)
        self.files: dict[str, str] = {}          # unit name -> real path of the file in effect
        self.masked: set[str] = set()
        self.linked: set[str] = set()            # a symlink in /etc names this unit (systemctl link/enable)
        self.aliases: dict[str, str] = {}        # alias name -> unit name
        self.enabled_by: dict[str, list[str]] = {}
        self.dropin_dirs: dict[str, list[str]] = {}    # unit name -> its name.d directories, by precedence
        for unit_dir in self.dirs:
            self._scan(unit_dir)

    def _scan(self, unit_dir: str) -> None:
        in_etc = _system_path(unit_dir, self.root).startswith("/etc/")
        for entry in _listdir(unit_dir):
            name = entry.name
            if name.endswith(DEPENDENCY_DIR_SUFFIXES) and entry.is_dir(follow_symlinks=False):
                for link in _listdir(entry.path):
                    self._note_enabled(link.name, _system_path(link.path, self.root))
                    target = os.path.basename(_resolve_link(link.path, self.root))
                    if target != link.name and target.endswith(UNIT_SUFFIXES):
                        self._note_enabled(target, _system_path(link.path, self.root))
                continue
            if name.endswith(".d") and entry.is_dir():
                self.dropin_dirs.setdefault(name[:-2], []).append(entry.path)
                continue
            if not name.endswith(UNIT_SUFFIXES) or _ignored_file_name(name):
                continue
            if name in self.files or name in self.masked or name in self.aliases:
                continue            # shadowed by a directory of higher precedence
            if entry.is_symlink():
                real = _resolve_link(entry.path, self.root)
                if real == "/dev/null":
                    self.masked.add(name)
                    continue
                target = os.path.basename(real)
                if target != name:
                    self.aliases[name] = target
                    if in_etc:
                        self._note_enabled(target, f"alias {_system_path(entry.path, self.root)}")
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
            for entry in _listdir(dropin_dir):
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
        matched = [(m[0], line, m[1]) for line in execs if (m := _command_match(line.value, target))]
        scripts = [found for line in execs for found in _script_evidence(line.value, target, self.root)]
        if not matched and not scripts and not name_matches_redis(name):
            return None
        evidence = [line.evidence() for _, line, _ in matched] or [line.evidence() for line in execs[:1]]
        if not evidence:
            evidence = [f"{_system_path(self.files[name], self.root)}: no Exec lines"]
        evidence += [f"  via {where}  ({why})" for _, where, why in scripts]
        evidence += self._enabled_evidence(name)
        # ExecStart may only name redis-monitor.sh: then what the script does is the reason.
        candidates = ([(strength, 0, f"{line.key} {why}") for strength, line, why in matched]
                      + [(strength, 1, f"its script {why}") for strength, _, why in scripts])
        reason = min(candidates)[2] if candidates else "unit name matches *redis*"
        return Rival(kind="systemd-unit", name=name, path=_system_path(self.files[name], self.root), pid=None,
                     evidence="\n".join(evidence), state=self.state(name), disable=_disable_unit(name),
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
            evidence.append(f"{_system_path(self.files[name], self.root)}: triggers {triggered}")
        evidence += self._enabled_evidence(name)
        reason = f"triggers {triggered} ({service.reason})" if service else "unit name matches *redis*"
        kind = "systemd-timer" if name.endswith(".timer") else "systemd-unit"
        return Rival(kind=kind, name=name, path=_system_path(self.files[name], self.root), pid=None,
                     evidence="\n".join(evidence), state=self.state(name),
                     disable=f"systemctl disable --now {name}", reason=reason)

    def _enabled_evidence(self, name: str) -> list[str]:
        return [f"enabled by {by}" for by in self.enabled_by.get(name, [])]


def _disable_unit(name: str) -> str:
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
    for name, block in zip(names, out.stdout.strip().split("\n\n")):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states[fields.get("Id") or name] = (fields.get("UnitFileState", ""), fields.get("ActiveState", ""))
    return states


def _with_live_state(rivals: list[Rival]) -> list[Rival]:
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


# ---------------------------------------------------------------------------------------------------
# cron

def _cron_rival(real: str, target: DoctorTarget, root: str, flavour: str) -> Rival | None:
    """One cron file. flavour: "system" (/etc/crontab, cron.d), "user" (spool), "script" (cron.daily...)."""
    path = _system_path(real, root)
    base = os.path.basename(path)
    if _ignored_file_name(base):
        return None
    try:
        st = os.stat(real)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if flavour == "script" and not st.st_mode & 0o111:
        return None         # run-parts skips files that are not executable
    try:
        with open(real, "rb") as f:
            text = f.read(SCRIPT_MAX_BYTES).decode("utf-8", "replace")
    except OSError as e:
        return Rival(kind="cron", name=_cron_name(path, flavour), path=path, pid=None,
                     evidence=f"{path}: could not read ({e.strerror})", state="could not read",
                     disable=f"run `relayqctl doctor` as root to inspect {path}", reason="could not read")
    matched = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if flavour != "script" and re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", stripped):
            continue        # SHELL=, MAILTO=, REDIS_URL=: environment, not a job
        match = _command_match(stripped, target)
        scripts = _script_evidence(stripped, target, root)
        if match or scripts:
            candidates = ([match] if match else []) + [(strength, f"its script {why}")
                                                       for strength, _, why in scripts]
            matched.append((lineno, stripped, min(candidates), scripts))
    by_name = flavour == "script" and name_matches_redis(base)
    if not matched and not by_name:
        return None
    evidence = []
    for lineno, stripped, _, scripts in matched:
        evidence.append(f"{path}:{lineno}: {stripped}")
        evidence.extend(f"  via {where}  ({why})" for _, where, why in scripts)
    if not evidence:
        evidence = [f"{path}: script name matches *redis*"]
    linenos = [m[0] for m in matched]
    return Rival(kind="cron", name=_cron_name(path, flavour), path=path, pid=None, evidence="\n".join(evidence),
                 state="installed", disable=_disable_cron(path, flavour, linenos),
                 reason=min(m[2] for m in matched)[1] if matched else "cron script name matches *redis*")


def _cron_name(path: str, flavour: str) -> str:
    if flavour == "user":
        return f"crontab of {os.path.basename(path)}"
    if flavour == "script":
        return "/".join(path.split("/")[-2:])
    return path if path == "/etc/crontab" else os.path.basename(path)


def _disable_cron(path: str, flavour: str, linenos: list[int]) -> str:
    where = (f"line {linenos[0]}" if len(linenos) == 1
             else "lines " + ", ".join(str(n) for n in linenos))
    if flavour == "script":
        return f"chmod -x {path}" + (f" (or edit {path} {where})" if linenos else "")
    if flavour == "user":
        return f"crontab -u {os.path.basename(path)} -e (remove {where})"
    return f"edit {path} {where}"


def _cron_files(root: str) -> list[tuple[str, str]]:
    """(real path, flavour) of every cron file under root; unreadable directories yield the directory."""
    files = []
    for rel in SYSTEM_CRONTABS:
        real = _in_root("/" + rel, root)
        if os.path.lexists(real):
            files.append((real, "system"))
    for rels, flavour in ((SYSTEM_CRON_DIRS, "system"), (USER_CRON_DIRS, "user"), (CRON_SCRIPT_DIRS, "script")):
        for directory in _existing_dirs(rels, root):
            try:
                names = sorted(os.listdir(directory))
            except PermissionError:
                files.append((directory, "unreadable-dir"))
                continue
            except OSError:
                continue
            files.extend((os.path.join(directory, n), flavour) for n in names)
    return files


def _cron_flavour(real: str, root: str) -> str | None:
    path = _system_path(real, root)
    parent = os.path.dirname(path)
    if path in ("/" + p for p in SYSTEM_CRONTABS):
        return "system"
    for rels, flavour in ((SYSTEM_CRON_DIRS, "system"), (USER_CRON_DIRS, "user"), (CRON_SCRIPT_DIRS, "script")):
        if parent in ("/" + r for r in rels):
            return flavour
    return None


# ---------------------------------------------------------------------------------------------------
# processes

@dataclass(frozen=True)
class ProcessView:
    """One process as seen once during a scan."""
    pid: int
    ppid: int
    name: str
    cmdline: tuple[str, ...]
    uid: int | None

    @property
    def command(self) -> str:
        # Redis pads its rewritten title with spaces to the old argv length: collapse them.
        return " ".join(" ".join(self.cmdline).split()) or f"[{self.name}]"


def _process_snapshot() -> dict[int, ProcessView]:
    views = {}
    for proc in psutil.process_iter(["pid", "ppid", "name", "cmdline", "uids"]):
        info = proc.info
        uids = info.get("uids")
        views[info["pid"]] = ProcessView(pid=info["pid"], ppid=info.get("ppid") or 0, name=info.get("name") or "",
                                         cmdline=tuple(info.get("cmdline") or ()),
                                         uid=uids.real if uids else None)
    return views


def _is_redis_server(view: ProcessView) -> bool:
    # Redis rewrites its title to "redis-server 127.0.0.1:6379"; Debian's binary is a symlink, so the
    # exe is redis-check-rdb: name and argv[0] are what identify it.
    first = view.cmdline[0].split()[0] if view.cmdline and view.cmdline[0] else ""
    return view.name == "redis-server" or os.path.basename(first) == "redis-server"


def _supervisor_program(view: ProcessView) -> str | None:
    heads = [os.path.basename(w) for w in view.cmdline[:2]]
    for program in NAMED_SUPERVISORS:
        if view.name == program or program in heads:
            return program
    joined = " ".join(view.cmdline)
    if "pm2" in [os.path.basename(w) for w in view.cmdline[:3]] or re.search(r"\bPM2\b.*God Daemon", joined):
        return "pm2"
    return None


def _supervisor_ancestor(view: ProcessView, views: dict[int, ProcessView]) -> ProcessView | None:
    seen, pid = set(), view.ppid
    while pid and pid not in seen and pid in views:
        seen.add(pid)
        parent = views[pid]
        if _supervisor_program(parent):
            return parent
        pid = parent.ppid
    return None


def _user_name(uid: int) -> str:
    return user_name(uid) or str(uid)


def _process_disable(view: ProcessView, views: dict[int, ProcessView]) -> str:
    """How to stop this process for good: name the supervisor or unit that would restart it."""
    manager = _supervisor_ancestor(view, views)
    if manager is not None:
        return (f"remove it from the config of {_supervisor_program(manager)} (pid {manager.pid}, "
                f"see its entry), then stop it there")
    return disable_for_process(view.pid, cgroup_unit(view.pid))


def disable_for_process(pid: int, unit: CgroupUnit | None) -> str:
    """The command that stops pid for good given its systemd unit: `kill` only when nothing restarts it."""
    container = re.fullmatch(r"(docker|libpod)-([0-9a-f]{12})[0-9a-f]*\.scope", unit.name) if unit else None
    if container:       # a container's restart policy would bring it back
        tool = "docker" if container.group(1) == "docker" else "podman"
        return f"{tool} update --restart=no {container.group(2)} && {tool} stop {container.group(2)}"
    if unit and unit.name.endswith(".service"):
        if unit.user_uid is not None:
            return f"systemctl --user -M {_user_name(unit.user_uid)}@ disable --now {unit.name}"
        if unit.name in JOB_RUNNER_UNITS:
            return f"remove the job that starts it (see the cron entries), then kill {pid}"
        if unit.name == OWN_UNIT:
            return f"kill {pid} (left in {OWN_UNIT} but not owned by this supervisor)"
        return _disable_unit(unit.name)
    return f"kill {pid} (no unit or supervisor restarts it: it was started by hand)"


def _process_evidence(view: ProcessView, views: dict[int, ProcessView], extra: str = "") -> str:
    notes = [note for note in (extra, f"user {_user_name(view.uid)}" if view.uid is not None else "") if note]
    lines = [f"pid {view.pid}: {view.command}" + (f" ({', '.join(notes)})" if notes else "")]
    unit = cgroup_unit(view.pid)
    if unit is not None:
        owner = f" of user {_user_name(unit.user_uid)}" if unit.user_uid is not None else ""
        lines.append(f"systemd unit: {unit.name}{owner}")
    parent = views.get(view.ppid)
    if parent is not None:
        lines.append(f"parent: pid {parent.pid} {parent.name}")
    return "\n".join(lines)


def _supervisor_config(view: ProcessView, program: str) -> str | None:
    """The config file named on a supervisor's command line, as that process sees it."""
    args = list(view.cmdline[1:])
    names = ("-c", "--configuration") if program == "supervisord" else ("-c", "--config")
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        if arg.startswith("-c") and len(arg) > 2 and not arg.startswith("--"):
            return arg[2:]
    if program == "circusd":
        return next((a for a in args if a.endswith(".ini")), None)
    if program == "supervisord":
        return next((p for p in ("/etc/supervisor/supervisord.conf", "/etc/supervisord.conf")
                     if os.path.isfile(p)), None)
    return None


def _config_mentions(view: ProcessView, config: str,
                     target: DoctorTarget) -> tuple[list[tuple[str, int, str]], bool]:
    """((path, line number, text) of lines that mention Redis or a program, readable?) for a supervisor's
    config and the files its [include] section names."""
    if not os.path.isabs(config):
        try:
            config = os.path.join(psutil.Process(view.pid).cwd(), config)
        except (psutil.Error, OSError):
            pass
    found, readable, queue, seen = [], False, [config], set()
    while queue and len(seen) < 64:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        # Through /proc/PID/root first: the process may see another mount namespace (PrivateTmp, a container).
        text = _read_text(f"/proc/{view.pid}/root{path}") or _read_text(path)
        if text is None:
            continue
        readable = True
        section = ""
        for lineno, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped[0] in "#;":
                continue
            if stripped.startswith("["):
                section = stripped.strip("[]").strip()
                continue
            if section == "include" and stripped.startswith("files"):
                for pattern in stripped.partition("=")[2].split():
                    pattern = os.path.join(os.path.dirname(path), pattern)
                    queue.extend(sorted(glob.glob(pattern)))
                continue
            if command_reason(stripped, target):
                found.append((path, lineno, stripped))
    return found, readable


def _supervisor_rival(view: ProcessView, program: str, views, target: DoctorTarget) -> Rival:
    config = _supervisor_config(view, program)
    evidence = [_process_evidence(view, views)]
    disable = _process_disable(view, views)
    if config is None:
        evidence.append("config: not named on its command line")
        reason = f"{program} is running; check that it manages no Redis or relayq program"
    else:
        mentions, readable = _config_mentions(view, config, target)
        if not readable:
            evidence.append(f"config {config}: could not read")
            reason = f"{program} is running; its config {config} could not be read"
        elif mentions:
            evidence.extend(f"{path}:{lineno}: {text}" for path, lineno, text in mentions)
            reason = f"{program} config {config} mentions Redis or a relayq program"
            reload = {"supervisord": "supervisorctl reread && supervisorctl update",
                      "circusd": "circusctl reloadconfig"}.get(program)
            if reload:
                path, lineno, _ = mentions[0]
                disable = f"edit {path} line {lineno}, then {reload}"
        else:
            evidence.append(f"config {config}: does not mention Redis or the relayq programs")
            reason = f"{program} is running (its config does not mention Redis)"
            disable = f"nothing to remove now; if it should not run here: {disable}"
    if program == "relayq-supervisor" and config and target.own_config and \
            os.path.abspath(config) == os.path.abspath(target.own_config):
        reason = "another relayq-supervisor with the same config"
    if program == "pm2":
        disable = "pm2 list, then pm2 delete NAME && pm2 save for each Redis or relayq entry"
    return Rival(kind="supervisor", name=program, path=config, pid=view.pid, evidence="\n".join(evidence),
                 state="running", disable=disable, reason=reason)


def _open_in_dir(pid: int, directory: str) -> str | None:
    """The first file (or the cwd) of pid inside directory. Plain readlinks: cheaper than
    psutil.open_files, which also reads fdinfo for every fd."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        if cwd == directory or cwd.startswith(directory + "/"):
            return f"its working directory is {cwd}"
    except OSError:
        pass
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            path = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if path == directory or path.startswith(directory + "/"):
            return f"it has {path} open"
    return None


def _process_rival(kind: str, name: str, view: ProcessView, views: dict[int, ProcessView], reason: str,
                   extra: str = "", path: str | None = None, state: str = "running") -> Rival:
    return Rival(kind=kind, name=name, path=path, pid=view.pid, evidence=_process_evidence(view, views, extra),
                 state=state, disable=_process_disable(view, views), reason=reason)


def _process_rivals(target: DoctorTarget) -> list[Rival]:
    views = _process_snapshot()
    ignore = set(target.own_pids) | {os.getpid()}
    rivals: list[Rival] = []
    markers = _marker_patterns(target)
    for view in views.values():
        if view.pid in ignore:
            continue
        program = _supervisor_program(view)
        if program:
            rivals.append(_supervisor_rival(view, program, views, target))
        elif _is_redis_server(view):
            rivals.append(_process_rival("process", "redis-server", view, views,
                                         "a redis-server this supervisor does not own"))
        else:
            command = " ".join(view.cmdline)
            marker = next((m for m, pattern in markers if pattern.search(command)), None)
            if marker:
                rivals.append(_process_rival("process", marker, view, views,
                                             f"{marker} running outside this supervisor"))
    if target.redis_port:
        port = target.redis_port
        for pid, address in sorted(listeners(port).items(), key=lambda item: item[0] or 0):
            if pid in ignore:
                continue
            reason = f"holds the Redis port {port}"
            if pid in views:
                rivals.append(_process_rival("port", f"port {port}", views[pid], views, reason,
                                             f"listens on {address}", state="listening"))
            else:       # sockets of other users' processes show no pid unless we are root
                rivals.append(Rival(kind="port", name=f"port {port}", path=None, pid=pid,
                                    evidence=f"something listens on {address}; its pid is hidden (run as root)",
                                    state="listening", reason=reason,
                                    disable=f"find it with `ss -ltnp 'sport = :{port}'` as root"))
    if target.redis_dir:
        directory = os.path.realpath(target.redis_dir)
        for view in views.values():
            what = None if view.pid in ignore else _open_in_dir(view.pid, directory)
            if what:
                rivals.append(_process_rival("open-file", view.name or str(view.pid), view, views,
                                             f"uses the Redis dir {directory}", what, path=directory))
    return rivals


# ---------------------------------------------------------------------------------------------------
# Public entry points

def find_rivals(target: DoctorTarget, root: str = "/", use_systemctl: bool | None = None,
                scan_processes: bool = True) -> list[Rival]:
    """Every rival manager under root: systemd units and timers, cron entries, and (on the live root)
    processes: other redis-servers, the Redis port's holder, users of the Redis dir, other supervisors."""
    root = _root(root)
    if use_systemctl is None:
        use_systemctl = root == "/" and os.path.isdir("/run/systemd/system")
    units = SystemdUnits(root)
    unit_rivals = [r for name in units.names() if (r := units.rival(name, target)) is not None]
    if use_systemctl:
        unit_rivals = _with_live_state(unit_rivals)
    rivals = unit_rivals
    for real, flavour in _cron_files(root):
        if flavour == "unreadable-dir":
            path = _system_path(real, root)
            rivals.append(Rival(kind="cron", name=path, path=path, pid=None,
                                evidence=f"{path}: could not read (permission denied)", state="could not read",
                                disable=f"run `relayqctl doctor` as root to inspect {path}", reason="could not read"))
            continue
        rival = _cron_rival(real, target, root, flavour)
        if rival is not None:
            rivals.append(rival)
    if scan_processes and root == "/":
        rivals.extend(_process_rivals(target))
    return sorted(rivals, key=_sort_key)


def rival_for_file(path: str, target: DoctorTarget, root: str = "/") -> Rival | None:
    """The rival one unit, timer, .wants link or cron file makes (the inotify watcher's question)."""
    root = _root(root)
    real = os.path.abspath(path)
    system = _system_path(real, root)
    parent = os.path.dirname(system)
    unit_dirs = {"/" + d for d in UNIT_DIRS}
    name = os.path.basename(system)
    in_unit_dir = parent in unit_dirs
    in_dependency_dir = parent.endswith(DEPENDENCY_DIR_SUFFIXES) and os.path.dirname(parent) in unit_dirs
    if in_unit_dir or in_dependency_dir:
        if not name.endswith(UNIT_SUFFIXES):
            return None
        units = SystemdUnits(root)
        if in_dependency_dir:
            name = os.path.basename(_resolve_link(real, root))
        return units.rival(name, target)
    flavour = _cron_flavour(real, root)
    if flavour is not None:
        return _cron_rival(real, target, root, flavour)
    return None


def _sort_key(rival: Rival):
    return (_kind_index(rival.kind), rival.name, rival.pid or 0)


def format_report(rivals) -> str:
    """Readable text: one block per rival, then a summary line."""
    rivals = list(rivals)
    if not rivals:
        return "no rival managers found"
    blocks = []
    for rival in rivals:
        # fields quote other processes' command lines and files: escaped, one line each
        title = f"[{rival.kind}] {escape(rival.name)}"
        if rival.pid is not None and str(rival.pid) not in rival.name:
            title += f" (pid {rival.pid})"
        if rival.state:
            title += f": {escape(rival.state)}"
        lines = [title]
        if rival.reason:
            lines.append(f"  why:      {escape(rival.reason)}")
        if rival.path:
            lines.append(f"  path:     {escape(rival.path)}")
        evidence = [escape(line) for line in rival.evidence.split("\n")] or [""]
        lines.append(f"  evidence: {evidence[0]}")
        lines.extend(f"            {more}" for more in evidence[1:])
        lines.append(f"  disable:  {escape(rival.disable)}")
        blocks.append("\n".join(lines))
    counts: dict[str, int] = {}
    for rival in rivals:
        counts[rival.kind] = counts.get(rival.kind, 0) + 1
    unreadable = sum(1 for r in rivals if r.state == "could not read")
    summary = (f"{len(rivals)} rival manager{'s' if len(rivals) != 1 else ''} found ("
               + ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: _kind_index(kv[0])))
               + ")" + (f", {unreadable} could not be read" if unreadable else "")
               + ": disable each with the command shown, then run `relayqctl doctor` again")
    return "\n\n".join(blocks) + "\n\n" + summary


def _kind_index(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
