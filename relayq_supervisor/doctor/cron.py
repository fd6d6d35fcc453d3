"""cron: /etc/crontab, /etc/cron.d, users' crontabs and the run-parts script directories."""
from __future__ import annotations

import os
import re
import stat

from relayq_supervisor.doctor.commands import DoctorTarget, command_match, name_matches_redis, script_evidence
from relayq_supervisor.doctor.report import Rival
from relayq_supervisor.doctor.rootfs import SCRIPT_MAX_BYTES, existing_dirs, ignored_file_name, in_root, system_path

SYSTEM_CRONTABS = ("etc/crontab",)
SYSTEM_CRON_DIRS = ("etc/cron.d",)
# Debian keeps user crontabs in crontabs/, RHEL directly in /var/spool/cron.
USER_CRON_DIRS = ("var/spool/cron/crontabs", "var/spool/cron")
CRON_SCRIPT_DIRS = ("etc/cron.hourly", "etc/cron.daily", "etc/cron.weekly", "etc/cron.monthly")


def cron_rival(real: str, target: DoctorTarget, root: str, flavour: str) -> Rival | None:
    """One cron file. flavour: "system" (/etc/crontab, cron.d), "user" (spool), "script" (cron.daily...)."""
    path = system_path(real, root)
    base = os.path.basename(path)
    if ignored_file_name(base):
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
        match = command_match(stripped, target)
        scripts = script_evidence(stripped, target, root)
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


def cron_files(root: str) -> list[tuple[str, str]]:
    """(real path, flavour) of every cron file under root; unreadable directories yield the directory."""
    files = []
    for rel in SYSTEM_CRONTABS:
        real = in_root("/" + rel, root)
        if os.path.lexists(real):
            files.append((real, "system"))
    for rels, flavour in ((SYSTEM_CRON_DIRS, "system"), (USER_CRON_DIRS, "user"), (CRON_SCRIPT_DIRS, "script")):
        for directory in existing_dirs(rels, root):
            try:
                names = sorted(os.listdir(directory))
            except PermissionError:
                files.append((directory, "unreadable-dir"))
                continue
            except OSError:
                continue
            files.extend((os.path.join(directory, n), flavour) for n in names)
    return files


def cron_flavour(real: str, root: str) -> str | None:
    path = system_path(real, root)
    parent = os.path.dirname(path)
    if path in ("/" + p for p in SYSTEM_CRONTABS):
        return "system"
    for rels, flavour in ((SYSTEM_CRON_DIRS, "system"), (USER_CRON_DIRS, "user"), (CRON_SCRIPT_DIRS, "script")):
        if parent in ("/" + r for r in rels):
            return flavour
    return None
