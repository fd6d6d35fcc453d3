"""The node's files, read under a root that may be a fake one (a mounted image, a test tree).

Paths "as seen on the node" are what evidence and commands show; real paths are where
this process reads them. Unreadable files never raise: readers answer None or nothing.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable

SCRIPT_MAX_BYTES = 256 * 1024


def root_dir(root: str) -> str:
    """The root as an absolute path; "" means the live system."""
    return os.path.abspath(root or "/")


def in_root(node_path: str, root: str) -> str:
    """The real path of a path as seen on the node."""
    root = root_dir(root)
    return node_path if root == "/" else os.path.join(root, node_path.lstrip("/"))


def system_path(real: str, root: str) -> str:
    """A real path as seen on the node (a fake root's prefix removed), for evidence and commands."""
    root = root_dir(root)
    real = os.path.abspath(real)
    if root == "/":
        return real
    rel = os.path.relpath(real, root)
    if rel == ".":
        return "/"
    return real if rel.startswith("..") else "/" + rel


def resolve_link(link: str, root: str) -> str:
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
            path = in_root(target, root)
        else:
            path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return path


def read_text(path: str, limit: int = 1024 * 1024) -> str | None:
    """A regular file's text, or None (missing, unreadable, a FIFO that would block, a device)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def read_script(path: str) -> str | None:
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


def existing_dirs(relative_dirs: Iterable[str], root: str) -> list[str]:
    seen, dirs = set(), []
    for rel in relative_dirs:
        real = in_root("/" + rel, root)
        if not os.path.isdir(real):
            continue
        key = os.path.realpath(real)
        if key not in seen:
            seen.add(key)
            dirs.append(real)
    return dirs


def listdir(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def ignored_file_name(name: str) -> bool:
    # editor and package-manager leftovers, which cron and run-parts skip too
    return (name.startswith(".") or name.endswith("~") or ".dpkg-" in name or ".rpm" in name
            or name.endswith(".swp"))
