"""Paths the config names: their length, the directories and files the supervisor will
create or open, password files, the PATH children get."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

NAME_MAX = 255          # bytes in one file name (Linux, every common file system)
PATH_MAX = 4096         # bytes in a whole path, with its terminating NUL


def _path_problem(path: str) -> str | None:
    """Why `path` cannot name a file (ENAMETOOLONG), or None."""
    encoded = os.fsencode(path)
    if len(encoded) >= PATH_MAX:
        return f"is {len(encoded)} bytes long, more than a path may have ({PATH_MAX - 1}, PATH_MAX)"
    for part in encoded.split(b"/"):
        if len(part) > NAME_MAX:
            return (f"has a component of {len(part)} bytes ({os.fsdecode(part[:20])}...), more than "
                    f"a file name may have ({NAME_MAX}, NAME_MAX)")
    return None


def _directory_problem(path: str, create: bool) -> str | None:
    """Why the supervisor could not use directory `path` for its files, or None. With
    `create`, a missing directory is fine when its nearest existing ancestor is a
    writable directory (start-up makes it); without, it must exist and be searchable.
    Decided for the user running this check: --check as another user may differ."""
    problem = _path_problem(path)
    if problem:
        return f"{path} {problem}"
    probe = path
    while True:
        try:
            st = os.stat(probe)
            break
        except (FileNotFoundError, NotADirectoryError):
            if not create:
                return f"{path} does not exist"
            parent = os.path.dirname(probe)
            if parent == probe:
                return f"{path} cannot be created"
            probe = parent
        except OSError as e:
            return f"{probe}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory" if probe == path else \
            f"{path} cannot be created: {probe} is not a directory"
    need = (os.W_OK | os.X_OK) if create else os.X_OK
    if not os.access(probe, need):
        what = "writable" if create else "searchable"
        return f"{path} is not {what} by uid {os.geteuid()}" if probe == path else \
            f"{path} cannot be created: {probe} is not writable by uid {os.geteuid()}"
    return None


def _check_directory(loc, keys, label: str, path: str, create: bool = True) -> None:
    problem = _directory_problem(path, create)
    if problem:
        raise loc.error(keys, f"{label} {problem}")


def _check_file_slot(loc, keys, label: str, path: str) -> None:
    """A file the supervisor creates or appends to: its folder usable, the name not a folder."""
    _check_directory(loc, keys, f"{label}'s directory", os.path.dirname(path))
    if os.path.isdir(path):
        raise loc.error(keys, f"{label} {path} is a directory, not a file")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise loc.error(keys, f"{label} {path} is not writable by uid {os.geteuid()}")


def read_secret(path: str) -> str:
    """The first line of a password file; ValueError says what is wrong with it."""
    try:
        with open(path) as f:
            secret = f.readline().strip()
    except OSError as e:
        raise ValueError(f"cannot read password file {path}: {e.strerror}") from None
    if not secret:
        raise ValueError(f"password file {path} is empty")
    if any(c.isspace() for c in secret):
        raise ValueError(f"password file {path}: the password must not contain spaces")
    return secret


def children_path(base_path: str | None = None) -> str:
    """PATH for children: the supervisor's own interpreter directory first, so that
    `python3` in a command is the interpreter (and venv) the supervisor runs in."""
    base = os.environ.get("PATH", os.defpath) if base_path is None else base_path
    here = os.path.dirname(sys.executable)
    parts = base.split(os.pathsep)
    return base if here in parts else os.pathsep.join([here, *parts])


def _resolve(base: Path, value: str) -> str:
    return str((base / value).resolve()) if not os.path.isabs(value) else os.path.normpath(value)
