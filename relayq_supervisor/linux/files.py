"""Files we own by name: is the name still ours, and size rotation by renaming.

A file the supervisor keeps open (a lock, the control socket, the audit log) can be
deleted or replaced behind its back; the open fd then points at an orphan while the
name points elsewhere. `FileIdentity` is the (device, inode) pair that tells them apart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class FileIdentity:
    """Which file an fd or a name refers to: equal identities are the same file."""

    dev: int
    ino: int

    @classmethod
    def of_stat(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino)

    @classmethod
    def of_fd(cls, fd: int) -> FileIdentity:
        return cls.of_stat(os.fstat(fd))

    @classmethod
    def of_path(cls, path: str) -> FileIdentity:
        return cls.of_stat(os.stat(path))

    def still_at(self, path: str) -> bool:
        """True while `path` names this file; False once it was deleted, renamed away or replaced."""
        try:
            return FileIdentity.of_path(path) == self
        except (FileNotFoundError, NotADirectoryError):
            return False


def rotate_by_rename(path: str, keep: int) -> None:
    """Shift `path` -> `path`.1 -> ... -> `path`.<keep>, the oldest falling off the end.

    Numbers above `keep` left from an earlier, larger `keep` are deleted, so at most
    `keep` old files remain; with `keep` <= 0 `path` itself is deleted. Missing files are
    skipped. The caller makes the renames durable (fsync of the directory) where it must.
    """
    if keep <= 0:
        _unlink(path)
        return
    extra = keep + 1
    while os.path.exists(f"{path}.{extra}"):
        _unlink(f"{path}.{extra}")
        extra += 1
    for i in range(keep - 1, 0, -1):
        if os.path.exists(f"{path}.{i}"):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    if os.path.exists(path):
        os.replace(path, f"{path}.1")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
