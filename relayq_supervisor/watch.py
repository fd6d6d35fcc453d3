"""inotify watches on the supervisor's asyncio loop: pyinotify's non-threaded Notifier, no thread, no timer.

Every watch is a watch on a *directory*, filtered by name. Editors save by writing a temp file and renaming
it over the original, which gives the path a new inode: a watch on the file's own inode would go silent
after the first save, a watch on its parent directory keeps seeing the name.

Callbacks get (path, what):
- watch_file: what is "modified" (content written or attributes changed), "replaced" (a file was created or
  renamed onto the path) or "deleted" (unlinked, renamed away, or its directory went away).
- watch_dir: what is "created", "modified" or "deleted" for an entry of the directory; if the directory itself
  is removed, renamed or unmounted, the callback gets (directory, "deleted") once and the watch is gone.

One save can produce several calls (create, then close-after-write); callers are expected to be idempotent.
If the kernel's event queue overflows, events were lost: every file watch is called with "modified" or
"deleted" as the file now is, and every directory watch with "modified" for each entry it currently holds.
"""
from __future__ import annotations

import array
import asyncio
import fcntl
import logging
import os
import termios
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyinotify

log = logging.getLogger(__name__)

WatchCallback = Callable[[str, str], None]

# The same mask for every directory: inotify_add_watch on an already-watched inode replaces its mask,
# so per-caller masks on a shared directory would silently undo each other.
# IN_ATTRIB is there because `touch` of an existing file may only utime() it (pathlib does);
# IN_MODIFY is not: it fires on every write(2) and the file is only complete at IN_CLOSE_WRITE.
_DIRECTORY_MASK = (pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_CLOSE_WRITE
                   | pyinotify.IN_ATTRIB | pyinotify.IN_DELETE | pyinotify.IN_MOVED_FROM
                   | pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF | pyinotify.IN_ONLYDIR)
_APPEARED = pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO
_WRITTEN = pyinotify.IN_CLOSE_WRITE | pyinotify.IN_ATTRIB
_GONE = pyinotify.IN_DELETE | pyinotify.IN_MOVED_FROM
_DIRECTORY_LOST = (pyinotify.IN_DELETE_SELF | pyinotify.IN_MOVE_SELF | pyinotify.IN_UNMOUNT
                   | pyinotify.IN_IGNORED)


class WatchError(Exception):
    """inotify refused a watch for a reason other than a missing directory (limits, permissions)."""


def _what(mask: int, appeared: str) -> str | None:
    """An inotify mask in the callbacks' words; a path appearing is `appeared`."""
    if mask & _APPEARED:
        return appeared
    if mask & _WRITTEN:
        return "modified"
    if mask & _GONE:
        return "deleted"
    return None


@dataclass(frozen=True)
class FileSubscription:
    """One watch_file(): a name in a directory."""
    path: str            # as the caller gave it, handed back in callbacks
    name: str
    callback: WatchCallback

    def translate(self, mask: int, name: str) -> str | None:
        return _what(mask, appeared="replaced") if name == self.name else None

    def report_lost_directory(self) -> list[tuple[str, str]]:
        return [(self.path, "deleted")]

    def report_after_overflow(self) -> list[tuple[str, str]]:
        return [(self.path, "modified" if os.path.lexists(self.path) else "deleted")]


@dataclass(frozen=True)
class DirectorySubscription:
    """One watch_dir(): entries of a directory, optionally only some names."""
    directory: str       # as the caller gave it
    names: frozenset[str] | None
    callback: WatchCallback

    def translate(self, mask: int, name: str) -> str | None:
        if self.names is not None and name not in self.names:
            return None
        return _what(mask, appeared="created")

    def report_lost_directory(self) -> list[tuple[str, str]]:
        return [(self.directory, "deleted")]

    def report_after_overflow(self) -> list[tuple[str, str]]:
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            return [(self.directory, "deleted")]
        return [(os.path.join(self.directory, name), "modified") for name in names
                if self.names is None or name in self.names]


Subscription = FileSubscription | DirectorySubscription


@dataclass
class _WatchedDirectory:
    """Everything subscribed to one inotify watch descriptor (one directory inode, maybe several paths)."""
    wd: int
    subscriptions: list[Subscription] = field(default_factory=list)


class Watcher:
    """inotify watches whose events are read by the asyncio loop only when the inotify fd is readable."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        # pyinotify logs to its own stderr handler, in its own format, about things this module handles
        # (a watched directory renamed away, events still queued for a watch just removed).
        logging.getLogger("pyinotify").setLevel(logging.CRITICAL)
        self._loop = loop
        try:
            self._manager = pyinotify.WatchManager()
        except (OSError, pyinotify.InotifyBindingNotFoundError) as err:
            raise WatchError(f"cannot create an inotify instance ({err}); "
                             "check fs.inotify.max_user_instances") from None
        self._notifier = pyinotify.Notifier(self._manager, default_proc_fun=self._on_unowned_event,
                                            timeout=0)
        self._fd = self._manager.get_fd()
        # pyinotify's inotify_init() takes no flags: children must not inherit the fd, and a read must
        # never block the loop even if readiness was spurious.
        os.set_inheritable(self._fd, False)
        os.set_blocking(self._fd, False)
        self._directories: dict[int, _WatchedDirectory] = {}
        self._dispatching = False
        self._closed = False
        loop.add_reader(self._fd, self._on_readable)

    # -- public ------------------------------------------------------------------------------------

    def watch_file(self, path: str, callback: WatchCallback) -> bool:
        """Call callback(path, what) when path is modified, replaced or deleted; False if its directory is missing."""
        directory = os.path.dirname(os.path.abspath(path))
        subscription = FileSubscription(path=path, name=os.path.basename(os.path.abspath(path)),
                                        callback=callback)
        return self._subscribe(directory, subscription)

    def watch_dir(self, path: str, callback: WatchCallback, names: Iterable[str] | None = None) -> bool:
        """Call callback(entry_path, what) for entries created/modified/deleted in path (only `names` if given);
        False if path is not an existing directory."""
        subscription = DirectorySubscription(directory=path,
                                             names=None if names is None else frozenset(names),
                                             callback=callback)
        return self._subscribe(os.path.abspath(path), subscription)

    def close(self) -> None:
        """Stop reading events and close the inotify fd (all watches go with it). Safe inside a callback."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._directories.clear()
        if not self._dispatching:
            self._notifier.stop()

    # -- watches -----------------------------------------------------------------------------------

    def _subscribe(self, directory: str, subscription: Subscription) -> bool:
        if self._closed:
            raise WatchError("this watcher is closed")
        if not os.path.isdir(directory):
            return False
        try:
            added = self._manager.add_watch(directory, _DIRECTORY_MASK, proc_fun=self._on_event,
                                            quiet=False)
        except pyinotify.WatchManagerError as err:
            if not os.path.isdir(directory):
                return False      # removed between the check and the watch
            hint = (" (inotify watch limit reached: raise fs.inotify.max_user_watches)"
                    if "ENOSPC" in str(err) else "")
            raise WatchError(f"cannot watch {directory}: {err}{hint}") from None
        wd = added[directory]
        # Two paths to one inode (/lib -> /usr/lib) share one wd: each subscription keeps its own path.
        self._directories.setdefault(wd, _WatchedDirectory(wd)).subscriptions.append(subscription)
        return True

    def _forget_directory(self, wd: int, mask: int) -> None:
        del self._directories[wd]
        if mask & pyinotify.IN_MOVE_SELF:
            # the wd follows the inode to its new name, where it means nothing to the callers; the
            # kernel ends the other cases (deleted, unmounted) with IN_IGNORED by itself
            self._manager.rm_watch(wd, quiet=True)

    # -- events ------------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        if self._closed:
            return
        self._dispatching = True
        try:
            if self._pending_bytes() == 0:
                return
            events_lost = False
            try:
                self._notifier.read_events()
            except UnicodeDecodeError:
                # pyinotify decodes names as strict UTF-8: the rest of this read is lost, like an overflow
                log.warning("watch: a file name that is not UTF-8 made inotify events unreadable; rescanning")
                events_lost = True
            except pyinotify.NotifierError as err:
                log.warning("watch: reading inotify events failed (%s)", err)
                return
            self._notifier.process_events()
            if events_lost:
                self._report_overflow()
        finally:
            self._dispatching = False
            if self._closed:
                self._notifier.stop()

    def _pending_bytes(self) -> int:
        size = array.array("i", [0])
        fcntl.ioctl(self._fd, termios.FIONREAD, size, True)
        return size[0]

    def _on_event(self, event: pyinotify.Event) -> None:
        if self._closed:
            return
        mask = event.mask
        watched = self._directories.get(event.wd)
        if watched is None:
            return
        if mask & _DIRECTORY_LOST:
            self._forget_directory(event.wd, mask)
            for subscription in watched.subscriptions:
                for lost, what in subscription.report_lost_directory():
                    self._call(subscription.callback, lost, what)
            return
        name = event.name or ""
        if not name:
            return     # an event on the directory itself (e.g. its own attributes)
        for subscription in list(watched.subscriptions):
            change = subscription.translate(mask, name)
            if change is None:
                continue
            path = (subscription.path if isinstance(subscription, FileSubscription)
                    else os.path.join(subscription.directory, name))
            self._call(subscription.callback, path, change)

    def _on_unowned_event(self, event: pyinotify.Event) -> None:
        # pyinotify hands events it has no watch for here; the only one that matters is the overflow
        if not self._closed and event.mask & pyinotify.IN_Q_OVERFLOW:
            log.warning("watch: inotify event queue overflowed; rescanning watched files")
            self._report_overflow()

    def _report_overflow(self) -> None:
        for watched in list(self._directories.values()):
            for subscription in list(watched.subscriptions):
                for path, what in subscription.report_after_overflow():
                    self._call(subscription.callback, path, what)

    def _call(self, callback: WatchCallback, path: str, what: str) -> None:
        if self._closed:
            return
        try:
            callback(path, what)
        except Exception:
            # a broken subscriber must not starve the others of events already read from the fd
            log.exception("watch: callback for %s (%s) failed", path, what)
