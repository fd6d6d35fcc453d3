"""inotify watches on the ground the supervisor stands on: its config file (changed on
disk since load), its lock files and control socket (deleted or replaced: taken again,
recorded as `tamper`), the directories that hold them (deleted: made again, and all of
the above taken again, recorded as `tamper`), and the unit and cron directories where
rival managers appear (recorded as `rival_manager` at once, not at the next restart)."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any, Protocol

from relayq_supervisor import doctor
from relayq_supervisor.background import start_task
from relayq_supervisor.linux.files import FileIdentity
from relayq_supervisor.watch import Watcher

log = logging.getLogger(__name__)


def file_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _identity(path: str) -> FileIdentity | None:
    try:
        return FileIdentity.of_path(path)
    except OSError:
        return None


class Locks(Protocol):
    def paths(self) -> list[str]: ...

    def retake_needed(self, path: str) -> bool: ...

    def retake(self, path: str) -> bool: ...


class ControlSocket(Protocol):
    @property
    def path(self) -> str: ...

    def is_intact(self) -> bool: ...

    async def restart(self) -> None: ...


class Ground(Protocol):
    """What the ground watch needs of the supervisor."""

    @property
    def config_path(self) -> str: ...

    @property
    def doctor_root(self) -> str: ...

    @property
    def control_socket_path(self) -> str: ...

    @property
    def locks(self) -> Locks: ...

    @property
    def control(self) -> ControlSocket | None: ...

    def audit(self, kind: str, **fields: Any) -> dict[str, Any]: ...

    def doctor_target(self) -> doctor.DoctorTarget: ...

    def kept_files(self) -> list[str]: ...

    def restore_files(self, directory: str) -> None: ...


class GroundWatch:
    def __init__(self, sup: Ground):
        self.sup = sup
        self.watcher: Watcher | None = None
        self.config_digest = file_digest(sup.config_path)
        self.config_changed = False
        # rival files already warned about, with the content warned about: an editor's
        # save or a touch fires inotify again, but only new content is news
        self.rivals_warned: dict[str, str | None] = {}
        self.guarded: dict[str, set[str]] = {}      # directory -> names of our locks and socket in it
        self.guarded_identity: dict[str, FileIdentity | None] = {}     # the directory inode we watch
        self.control_restart: asyncio.Task[None] | None = None

    def config_loaded(self) -> None:
        self.config_digest = file_digest(self.sup.config_path)
        self.config_changed = False

    def warn_about_rivals(self) -> None:
        """At start-up: the doctor's file checks, as warnings in the log."""
        try:
            rivals = doctor.find_rivals(self.sup.doctor_target(), root=self.sup.doctor_root, scan_processes=False)
        except Exception as e:      # advice only: never a reason not to supervise
            log.warning("rival-manager check failed (%s)", e)
            return
        for r in rivals:
            log.warning("rival manager %s %s (%s): %s", r.kind, r.name, r.reason or r.evidence, r.disable)
            if r.path:
                self.rivals_warned[r.path] = file_digest(r.path)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.watcher = Watcher(loop)
        self.watcher.watch_file(self.sup.config_path, self.on_config_file)
        for path in self.sup.locks.paths() + [self.sup.control_socket_path] + self.sup.kept_files():
            self.guarded.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))
        for directory, names in self.guarded.items():
            self.watcher.watch_dir(directory, self.on_guarded_file, names=names)
            self.guarded_identity[directory] = _identity(directory)
        for directory in doctor.watched_dirs(self.sup.doctor_root):
            self.watcher.watch_dir(directory, self.on_rival_dir)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def on_config_file(self, path: str, what: str) -> None:
        changed = file_digest(path) != self.config_digest
        if changed and not self.config_changed:
            log.info("config changed on disk since load (%s); `relayqctl reload` applies it", path)
        self.config_changed = changed

    def on_guarded_file(self, path: str, what: str) -> None:
        # The directory's own IN_DELETE_SELF may never come: our open lock files and socket
        # hold its dentry, so the kernel reports the deletion only once they are closed.
        # A file of ours gone with its directory is the sign.
        directory = path if path in self.guarded else os.path.dirname(path)
        identity = self.guarded_identity.get(directory)
        if identity is None or not identity.still_at(directory):
            self.restore_directory(directory)
            return
        if path == directory:
            return
        if path in self.sup.kept_files():
            if what == "deleted":       # our own rewrite shows as "created": not news
                self.sup.audit("tamper", path=path, what=what)
                log.warning("%s was deleted: writing it again", path)
                self.sup.restore_files(directory)
            return
        if path in self.sup.locks.paths():
            if self.sup.locks.retake_needed(path):
                self.sup.audit("tamper", path=path, what=what)
                log.warning("lock file %s was %s: taking it again", path, what)
                if not self.sup.locks.retake(path):
                    log.error("cannot take %s again", path)
            return
        control = self.sup.control
        if control is not None and path == control.path and not control.is_intact() and not self.restarting():
            self.sup.audit("tamper", path=path, what=what)
            log.warning("control socket %s was %s: listening again", path, what)
            self.control_restart = start_task(control.restart(), "control socket restart")

    def restarting(self) -> bool:
        """A restart of the control socket is under way: what it does to the file is not news."""
        return self.control_restart is not None and not self.control_restart.done()

    def restore_directory(self, directory: str) -> None:
        """run_dir (or the socket's directory) was deleted or moved away under us: make it
        again, watch it again, take our locks and control socket in it again. A second
        supervisor meanwhile is kept out by the abstract names (core/locks.py)."""
        if self.watcher is None or directory not in self.guarded:
            return
        self.sup.audit("tamper", path=directory, what="deleted")
        log.warning("directory %s was deleted: making it again, taking its lock files and control socket again",
                    directory)
        try:
            os.makedirs(directory, exist_ok=True)
            self.guarded_identity[directory] = _identity(directory)
            self.watcher.watch_dir(directory, self.on_guarded_file, names=self.guarded[directory])
        except OSError as e:
            log.error("cannot make %s again (%s): its lock files and control socket stay lost", directory,
                      e.strerror)
            return
        for path in self.sup.locks.paths():
            if os.path.dirname(path) == directory and self.sup.locks.retake_needed(path) \
                    and not self.sup.locks.retake(path):
                log.error("cannot take %s again", path)
        self.sup.restore_files(directory)
        control = self.sup.control
        if control is not None and os.path.dirname(control.path) == directory and not control.is_intact() \
                and not self.restarting():
            self.control_restart = start_task(control.restart(), "control socket restart")

    def on_rival_dir(self, path: str, what: str) -> None:
        if what == "deleted":
            self.rivals_warned.pop(path, None)
            return
        if what == "created" and path.endswith((".wants", ".requires")) and os.path.isdir(path) \
                and self.watcher is not None:
            self.watcher.watch_dir(path, self.on_rival_dir)     # `systemctl enable` made a new one
            return
        try:
            rival = doctor.rival_for_file(path, self.sup.doctor_target(), root=self.sup.doctor_root)
        except Exception as e:
            log.warning("cannot check %s for a rival manager (%s)", path, e)
            return
        if rival is None:
            self.rivals_warned.pop(path, None)      # no longer a rival: its return is news again
            return
        digest = file_digest(path)
        if path in self.rivals_warned and self.rivals_warned[path] == digest:
            return
        self.rivals_warned[path] = digest
        self.sup.audit("rival_manager", path=path, reason=rival.reason or rival.evidence, disable=rival.disable)
        log.warning("rival manager appeared: %s %s (%s); disable it: %s", rival.kind, rival.name,
                    rival.reason or rival.evidence, rival.disable)
