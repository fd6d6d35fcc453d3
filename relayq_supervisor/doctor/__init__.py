"""Find everything else on a node that could start, stop or kill Redis or the relayq programs.

In the incident Debian's redis-server.service, a home-made relayq-redis-monitor.timer and a hand-started
`redis-server --daemonize yes` all managed one Redis. `relayqctl doctor` prints each such rival with its
evidence and the command that disables it; the supervisor runs the same scan at start-up, and its inotify
watcher calls rival_for_file() when a unit or cron file appears.

Files are parsed without systemd (containers, CI, a mounted image under `root`); systemctl only adds the
live state when it is there. Unreadable files never raise: they are skipped, or reported as "could not read".

Modules: `units` (systemd unit files), `cron`, `processes` (running rivals, and how to stop each for
good), `commands` (what a command line does to Redis), `rootfs` (files under a possibly fake root),
`report` (Rival, format_report). The entry points are here.
"""
from __future__ import annotations

import os

from relayq_supervisor.doctor.commands import DoctorTarget, command_reason, program_markers
from relayq_supervisor.doctor.cron import (
    CRON_SCRIPT_DIRS,
    SYSTEM_CRON_DIRS,
    USER_CRON_DIRS,
    cron_files,
    cron_flavour,
    cron_rival,
)
from relayq_supervisor.doctor.processes import disable_for_process, process_rivals
from relayq_supervisor.doctor.report import Rival, format_report, sort_key
from relayq_supervisor.doctor.rootfs import existing_dirs, in_root, listdir, resolve_link, root_dir, system_path
from relayq_supervisor.doctor.units import (
    DEPENDENCY_DIR_SUFFIXES,
    UNIT_DIRS,
    UNIT_SUFFIXES,
    SystemdUnits,
    with_live_state,
)
from relayq_supervisor.linux.procfs import CgroupUnit

# What callers (ctl, ground, the arbiter, the tests) use; CgroupUnit is disable_for_process's argument.
__all__ = [
    "CgroupUnit", "DoctorTarget", "Rival", "command_reason", "disable_for_process", "find_rivals", "format_report",
    "program_markers", "rival_for_file", "watched_dirs",
]


def watched_dirs(root: str = "/") -> list[str]:
    """The unit and cron directories (and unit .wants/.requires dirs) that exist under root."""
    dirs = existing_dirs(UNIT_DIRS, root)
    # `systemctl enable` links into /etc's (and `--runtime` into /run's) .wants dirs; packages' own
    # .wants dirs under /lib only change with the package, which drops a unit file anyway.
    for admin_dir in existing_dirs(UNIT_DIRS[:2], root):
        dirs.extend(e.path for e in listdir(admin_dir)
                    if e.name.endswith(DEPENDENCY_DIR_SUFFIXES) and e.is_dir(follow_symlinks=False))
    dirs.extend(existing_dirs(SYSTEM_CRON_DIRS + USER_CRON_DIRS + CRON_SCRIPT_DIRS, root))
    etc = in_root("/etc", root)
    if os.path.isdir(etc):
        dirs.append(etc)     # /etc/crontab lives directly in /etc
    return dirs


def find_rivals(target: DoctorTarget, root: str = "/", use_systemctl: bool | None = None,
                scan_processes: bool = True) -> list[Rival]:
    """Every rival manager under root: systemd units and timers, cron entries, and (on the live root)
    processes: other redis-servers, the Redis port's holder, users of the Redis dir, other supervisors."""
    root = root_dir(root)
    if use_systemctl is None:
        use_systemctl = root == "/" and os.path.isdir("/run/systemd/system")
    units = SystemdUnits(root)
    unit_rivals = [r for name in units.names() if (r := units.rival(name, target)) is not None]
    if use_systemctl:
        unit_rivals = with_live_state(unit_rivals)
    rivals = unit_rivals
    for real, flavour in cron_files(root):
        if flavour == "unreadable-dir":
            path = system_path(real, root)
            rivals.append(Rival(kind="cron", name=path, path=path, pid=None,
                                evidence=f"{path}: could not read (permission denied)", state="could not read",
                                disable=f"run `relayqctl doctor` as root to inspect {path}", reason="could not read"))
            continue
        rival = cron_rival(real, target, root, flavour)
        if rival is not None:
            rivals.append(rival)
    if scan_processes and root == "/":
        rivals.extend(process_rivals(target))
    return sorted(rivals, key=sort_key)


def rival_for_file(path: str, target: DoctorTarget, root: str = "/") -> Rival | None:
    """The rival one unit, timer, .wants link or cron file makes (the inotify watcher's question)."""
    root = root_dir(root)
    real = os.path.abspath(path)
    system = system_path(real, root)
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
            name = os.path.basename(resolve_link(real, root))
        return units.rival(name, target)
    flavour = cron_flavour(real, root)
    if flavour is not None:
        return cron_rival(real, target, root, flavour)
    return None
