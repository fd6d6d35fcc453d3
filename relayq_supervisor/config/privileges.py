"""Who a program runs as and its limits: `user`, `group`, `supplementary_groups`, `umask`,
`nice`, `limits`, `no_new_privileges` (the same keys in [redis] and each [[program]])."""
from __future__ import annotations

import os
import re
from typing import Any

from relayq_supervisor.config.model import RLIM_INFINITY, RLIMITS, Privileges
from relayq_supervisor.config.values import _str_list, parse_size

_SIZE_LIMITS = ("core", "memlock", "as")   # bytes: "64MiB" as well as integers

# Who a program runs as (the same keys in [redis] and each [[program]]).
_PRIVILEGE_KEYS = {
    "user": str, "group": str, "supplementary_groups": list, "umask": str, "nice": int, "limits": dict,
    "no_new_privileges": bool,
}


def _user_name(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


_own_user: list[str] = []


def run_as_name(priv: Privileges) -> str:
    """The user a program runs as, for status and `why`: its `user`, else the supervisor's."""
    if priv.user is not None:
        return priv.user
    if not _own_user:
        _own_user.append(_user_name(os.geteuid()))
    return _own_user[0]


def _umask(loc, keys: tuple, value: str) -> int:
    if not re.fullmatch(r"[0-7]{1,4}", value) or int(value, 8) > 0o777:
        raise loc.error(keys, f"'umask' must be octal digits like \"0027\" (at most 0777), not {value!r}")
    return int(value, 8)


def _limit_value(loc, keys: tuple, name: str, value) -> int:
    if value == "unlimited":
        if name == "nofile":    # setrlimit(2): RLIMIT_NOFILE cannot exceed fs.nr_open, never infinity
            raise loc.error(keys, "limits.nofile cannot be \"unlimited\": the kernel caps it at fs.nr_open; "
                                  "write a number like 65535")
        return RLIM_INFINITY
    try:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or \
                (isinstance(value, str) and name not in _SIZE_LIMITS):
            raise ValueError(f"{value!r} is not a number")
        number = parse_size(value)
    except ValueError as e:
        what = "a number of bytes (or \"64MiB\")" if name in _SIZE_LIMITS else "a number"
        raise loc.error(keys, f"limits.{name}: {e}: write {what} or \"unlimited\"") from None
    return number


CAP_SYS_RESOURCE = 24      # linux/capability.h


def _can_raise_limits() -> bool:
    """Whether this process may raise a hard rlimit: CAP_SYS_RESOURCE in its effective set
    (root has it, except in containers that drop it)."""
    try:
        with open("/proc/self/status") as f:
            caps = next((line.split()[1] for line in f if line.startswith("CapEff:")), "0")
        return bool(int(caps, 16) >> CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError):
        return os.geteuid() == 0


def _nr_open() -> int | None:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _limits(loc, keys: tuple, table: dict) -> tuple[tuple[str, int, int], ...]:
    """Each limit sets soft and hard alike. Never above the supervisor's own hard limit
    unless it may raise one (setrlimit(2): CAP_SYS_RESOURCE, which root has); `nofile`
    never above fs.nr_open, the kernel's own cap."""
    import resource
    out = []
    may_raise = _can_raise_limits() if table else False
    for name, value in table.items():
        if name not in RLIMITS:
            raise loc.error(keys + (name,), f"unknown limit '{name}' (known limits: {', '.join(RLIMITS)})")
        number = _limit_value(loc, keys + (name,), name, value)
        hard = resource.getrlimit(getattr(resource, RLIMITS[name]))[1]
        if not may_raise and hard != resource.RLIM_INFINITY and (number == RLIM_INFINITY or number > hard):
            raise loc.error(keys + (name,), f"limits.{name} = {value} is above the supervisor's own hard limit "
                                            f"({hard}), which only root (CAP_SYS_RESOURCE) may exceed: raise it "
                                            f"where the supervisor is started (e.g. Limit{name.upper()}= in its "
                                            "systemd unit) or ask for less")
        nr_open = _nr_open() if name == "nofile" else None
        if nr_open is not None and number > nr_open:
            raise loc.error(keys + (name,), f"limits.nofile = {value} is above the kernel's cap on open files "
                                            f"(fs.nr_open = {nr_open})")
        out.append((name, number, number))
    return tuple(out)


def _privileges(loc, where: tuple, table: dict) -> Privileges:
    """`user`, `group`, `supplementary_groups`, `umask`, `nice`, `limits`, `no_new_privileges`.
    Changing user takes root: a supervisor that is not root may name only its own user."""
    import grp
    import pwd
    user = table.get("user")
    for key in ("group", "supplementary_groups"):
        if key in table and user is None:
            raise loc.error(where + (key,), f"'{key}' needs 'user' too (the group of a program's user)")
    fields: dict[str, Any] = {}
    if user is not None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise loc.error(where + ("user",), f"user {user!r} is not a user on this machine "
                                               f"(create it: useradd --system {user}, or fix the name)") from None
        gid = pw.pw_gid
        if "group" in table:
            try:
                gid = grp.getgrnam(table["group"]).gr_gid
            except KeyError:
                raise loc.error(where + ("group",), f"group {table['group']!r} is not a group on this machine") \
                    from None
        if "supplementary_groups" in table:
            groups = []
            for name in _str_list(loc, where + ("supplementary_groups",), table["supplementary_groups"]):
                try:
                    groups.append(grp.getgrnam(name).gr_gid)
                except KeyError:
                    raise loc.error(where + ("supplementary_groups",),
                                    f"group {name!r} is not a group on this machine") from None
        else:       # as login(1) and systemd's User= do: the groups /etc/group gives the user
            groups = [g for g in os.getgrouplist(user, pw.pw_gid) if g != gid]
        fields.update(user=user, home=pw.pw_dir, shell=pw.pw_shell)
        if os.geteuid() == 0:
            fields.update(uid=pw.pw_uid, gid=gid, groups=tuple(sorted(set(groups))))
        elif pw.pw_uid != os.geteuid() or gid != os.getegid() or "supplementary_groups" in table:
            raise loc.error(where + ("user",), f"user = {user!r} needs the supervisor to run as root (it runs "
                                               f"as {_user_name(os.geteuid())}): start it as root (the shipped "
                                               "unit does) or remove 'user'")
    if "umask" in table:
        fields["umask"] = _umask(loc, where + ("umask",), table["umask"])
    if "nice" in table:
        nice = table["nice"]
        if not -20 <= nice <= 19:
            raise loc.error(where + ("nice",), f"'nice' must be between -20 and 19, not {nice}")
        if os.geteuid() != 0 and nice < os.getpriority(os.PRIO_PROCESS, 0):
            raise loc.error(where + ("nice",), f"nice = {nice} is below the supervisor's own niceness: only root "
                                               "may raise a program's priority")
        fields["nice"] = nice
    fields["limits"] = _limits(loc, where + ("limits",), table.get("limits", {}))
    # default true with a user, as systemd's NoNewPrivileges= would be wished: a job cannot
    # regain what the change of user took (no set-uid binary, no file capability)
    fields["no_new_privileges"] = table.get("no_new_privileges", user is not None)
    return Privileges(**fields)
