"""Running processes that could be rivals: other redis-servers, supervisors and their configs,
the holder of the Redis port, users of the Redis dir; and how to stop each for good."""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

import psutil

from relayq_supervisor.doctor.commands import DoctorTarget, command_reason, marker_patterns
from relayq_supervisor.doctor.report import Rival
from relayq_supervisor.doctor.rootfs import read_text
from relayq_supervisor.doctor.units import OWN_UNIT, disable_unit
from relayq_supervisor.linux.procfs import CgroupUnit, cgroup_unit, listeners, user_name

# Services that start a process without owning it: a Redis in cron.service's cgroup came from a cron job.
JOB_RUNNER_UNITS = frozenset({"cron.service", "crond.service", "cronie.service", "anacron.service",
                              "atd.service"})
# Supervisors recognised by their process name or argv[0..1]; pm2 by its daemon title.
NAMED_SUPERVISORS = ("supervisord", "circusd", "relayq-supervisor")


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


def _user(uid: int) -> str:
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
            return f"systemctl --user -M {_user(unit.user_uid)}@ disable --now {unit.name}"
        if unit.name in JOB_RUNNER_UNITS:
            return f"remove the job that starts it (see the cron entries), then kill {pid}"
        if unit.name == OWN_UNIT:
            return f"kill {pid} (left in {OWN_UNIT} but not owned by this supervisor)"
        return disable_unit(unit.name)
    return f"kill {pid} (no unit or supervisor restarts it: it was started by hand)"


def _process_evidence(view: ProcessView, views: dict[int, ProcessView], extra: str = "") -> str:
    notes = [note for note in (extra, f"user {_user(view.uid)}" if view.uid is not None else "") if note]
    lines = [f"pid {view.pid}: {view.command}" + (f" ({', '.join(notes)})" if notes else "")]
    unit = cgroup_unit(view.pid)
    if unit is not None:
        owner = f" of user {_user(unit.user_uid)}" if unit.user_uid is not None else ""
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
    config = _from_its_cwd(view.pid, config)
    found: list[tuple[str, int, str]] = []
    readable, queue, seen = False, [config], set[str]()
    while queue and len(seen) < 64:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        # Through /proc/PID/root first: the process may see another mount namespace (PrivateTmp, a container).
        text = read_text(f"/proc/{view.pid}/root{path}") or read_text(path)
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


def _from_its_cwd(pid: int, path: str) -> str:
    """A relative path from another process' command line, as that process resolves it: from
    its own working directory (/proc/PID/cwd), not ours. Unchanged if that cannot be read."""
    if os.path.isabs(path):
        return path
    try:
        return os.path.normpath(os.path.join(os.readlink(f"/proc/{pid}/cwd"), path))
    except OSError:
        return path


def _supervisor_rival(view: ProcessView, program: str, views, target: DoctorTarget) -> Rival:
    config = _supervisor_config(view, program)
    if config is not None:
        config = _from_its_cwd(view.pid, config)
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


def process_rivals(target: DoctorTarget) -> list[Rival]:
    views = _process_snapshot()
    ignore = set(target.own_pids) | {os.getpid()}
    rivals: list[Rival] = []
    markers = marker_patterns(target)
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
