"""Control groups for programs: find a hierarchy this process may write, make one group
per program run, place a process in it, kill everything in it, remove it.

A cgroup holds every descendant of what is placed in it, whatever they do: a daemon that
double-forks and calls setsid() leaves its process group and session, never its cgroup
(cgroups(7): "a child created via fork(2) inherits its parent's cgroup memberships").

Placement is by writing a pid into `cgroup.procs`. Which hierarchy:
- cgroup v2 (the `cgroup2` mount: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid
  host), under this process' own group; under systemd that group is writable only with
  `Delegate=yes`. Creating child groups without enabling controllers in them keeps clear
  of v2's "no internal processes" rule (cgroup-v2.rst), so the supervisor can stay where
  systemd put it.
- else cgroup v1: the `pids` hierarchy, or systemd's `name=systemd` one.

Stopping: v2 since Linux 5.14 has `cgroup.kill` ("writing 1 ... causes the cgroup and
all descendant cgroups to be killed", race-free against forks); elsewhere every pid in
`cgroup.procs` is sent SIGKILL, repeated until the group is empty.

Readers and writers only, no policy: every function raises OSError or answers what the
kernel said.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from relayq_supervisor.linux.pidfds import kill_pids

# v1 hierarchies a process can be grouped in without changing any resource setting.
_V1_CHOICES = ("pids", "name=systemd")


@dataclass(frozen=True)
class Hierarchy:
    """A mounted cgroup hierarchy and this process' own group in it."""
    version: int            # 1 or 2
    mount: str              # where it is mounted
    own: str                # this process' group, as a directory under `mount`
    root: str = "/"         # the group the mount shows at its top (mountinfo's root field)
    controller: str = ""    # v1: the controller (or name=) that names the hierarchy in /proc/PID/cgroup
    # Mounted with `favordynmods` (or booted with cgroup_favordynmods=true): moving a process
    # into a group does not wait for an RCU grace period (cgroup-v2.rst, "favordynmods").
    favordynmods: bool = False

    def has_kill_file(self, group: str) -> bool:
        """Whether `group` (not the root group: it has none) offers cgroup.kill (v2, Linux >= 5.14)."""
        return self.version == 2 and os.path.exists(os.path.join(group, "cgroup.kill"))


def _mounts(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(fstype, root, mount point, super options) of each cgroup mount in mountinfo text."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        mount = fields[4].replace("\\040", " ")
        found.append((tail[0], fields[3], mount, set(tail[2].split(","))))
    return found


def parse_hierarchy(mountinfo: str, proc_cgroup: str) -> Hierarchy | None:
    """The hierarchy to group programs in, from /proc/self/mountinfo and /proc/self/cgroup
    text: v2 if mounted, else the first of _V1_CHOICES; None when neither is mounted."""
    paths: dict[str, str] = {}      # "" for v2, else each v1 controller or name=
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in (parts[1].split(",") if parts[1] else [""]):
                paths[controller] = parts[2]
    mounts = _mounts(mountinfo)
    for fstype, root, mount, options in mounts:
        if fstype == "cgroup2" and "" in paths:
            return _under(2, root, mount, paths[""], "", "favordynmods" in options)
    for choice in _V1_CHOICES:
        for fstype, root, mount, options in mounts:
            if fstype == "cgroup" and choice in options and choice in paths:
                return _under(1, root, mount, paths[choice], choice, "favordynmods" in options)
    return None


def _under(version: int, root: str, mount: str, path: str, controller: str,
           favordynmods: bool) -> Hierarchy | None:
    # A mount of a subtree (root != "/") shows only groups below that root.
    root = root.rstrip("/")
    if root and not (path == root or path.startswith(root + "/")):
        return None
    rel = path[len(root):].strip("/")
    return Hierarchy(version, mount, os.path.join(mount, rel) if rel else mount, root or "/", controller,
                     favordynmods)


def own_hierarchy() -> Hierarchy | None:
    """The hierarchy this process can group its children in, or None (not mounted, unreadable)."""
    try:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
        with open("/proc/self/cgroup") as f:
            proc_cgroup = f.read()
    except OSError:
        return None
    return parse_hierarchy(mountinfo, proc_cgroup)


def make_group(path: str) -> None:
    """mkdir the group (and its parents); one that exists is kept."""
    os.makedirs(path, exist_ok=True)


def make_new_group(path: str) -> None:
    """mkdir the group, whose parent exists; FileExistsError if it exists already."""
    os.mkdir(path)


def place(path: str, pid: int) -> None:
    """Move `pid` (the whole process, all its threads) into the group."""
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def rewrite_own(hierarchy: Hierarchy) -> None:
    """Write this process' pid into the group it is in: no process moves, but the kernel
    takes the lock every move takes (cgroup_threadgroup_rwsem, for writing), whose RCU
    grace period then also covers a real move that comes while it runs or just after."""
    with open(os.path.join(hierarchy.own, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))


def members(path: str) -> list[int]:
    """The pids in the group itself (not its child groups); empty if it is gone."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except (FileNotFoundError, ValueError):
        return []


def all_members(path: str) -> list[int]:
    """The pids in the group and every group below it."""
    pids = members(path)
    try:
        entries = list(os.scandir(path))
    except OSError:
        return pids
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            pids += all_members(entry.path)
    return pids


def group_of(pid: int, hierarchy: Hierarchy) -> str | None:
    """The directory of `pid`'s group in `hierarchy`, or None (gone, not in it)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if (hierarchy.version == 2 and parts[0] == "0") or \
                (hierarchy.version == 1 and hierarchy.controller in parts[1].split(",")):
            root = hierarchy.root.rstrip("/")
            if root and not (parts[2] == root or parts[2].startswith(root + "/")):
                return None
            return os.path.normpath(os.path.join(hierarchy.mount, parts[2][len(root):].lstrip("/")))
    return None


def kill_all(path: str, hierarchy: Hierarchy, use_kill_file: bool | None = None) -> int:
    """SIGKILL to every process in the group and below. With `cgroup.kill` one write does it
    (answers -1: the count is not known); else each member gets its own, through a pidfd
    taken after checking it is still a member (a pid read from cgroup.procs may be reused
    by the time it is signalled). Answers how many were signalled. use_kill_file=False
    takes the second way where the first is available (tests)."""
    if hierarchy.has_kill_file(path) if use_kill_file is None else use_kill_file:
        try:
            with open(os.path.join(path, "cgroup.kill"), "w") as f:
                f.write("1")
            return -1
        except FileNotFoundError:
            if not os.path.isdir(path):
                return 0
    def still_member(pid: int) -> bool:
        group = group_of(pid, hierarchy)
        return group is not None and (group == path or group.startswith(path.rstrip("/") + "/"))

    return kill_pids(all_members(path), still_ours=still_member)


def remove(path: str) -> bool:
    """rmdir the group and the groups below it, deepest first. False while a process is
    still in one (EBUSY) or when it cannot be removed; True when it is gone."""
    try:
        entries = [e.path for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return True
    except OSError:
        return False
    ok = all(remove(child) for child in entries)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as e:
        if e.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        return False
    return ok
