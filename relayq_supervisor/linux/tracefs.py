"""tracefs, the kernel's tracing file system: thin wrappers, no policy.

Finding or mounting it, making and removing an instance (a private ring buffer with
its own event switches and filters: `instances/NAME`), enabling an event, writing an
event filter or an instance option, and opening the instance's trace_pipe for
non-blocking reads. Every failure is an OSError naming the file it concerns.
"""
from __future__ import annotations

import ctypes
import errno
import os

DEFAULT_MOUNT = "/sys/kernel/tracing"
LEGACY_MOUNT = "/sys/kernel/debug/tracing"      # where debugfs exposes it on older set-ups
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Every place tracefs is mounted in this mount namespace."""
    found = []
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "tracefs":
                    found.append(_unescape(left.split()[4]))
    except OSError:
        pass
    return found


def find_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The system's tracefs mount (its standard places only, never some program's own), or None."""
    found = mounts(mountinfo)
    return next((p for p in (DEFAULT_MOUNT, LEGACY_MOUNT) if p in found), None)


def _unescape(path: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mount(target: str = DEFAULT_MOUNT) -> None:
    if _libc.mount(b"tracefs", os.fsencode(target), b"tracefs", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tracefs on {target}: {os.strerror(err)}")


def umount(target: str) -> None:
    if _libc.umount2(os.fsencode(target), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def instance_path(root: str, name: str) -> str:
    return os.path.join(root, "instances", name)


def list_instances(root: str) -> list[str]:
    try:
        return sorted(os.listdir(os.path.join(root, "instances")))
    except FileNotFoundError:
        return []


def create_instance(root: str, name: str) -> str:
    """mkdir under instances/: the kernel makes the buffer and its files. EEXIST if taken."""
    path = instance_path(root, name)
    os.mkdir(path)
    return path


def remove_instance(path: str) -> None:
    """rmdir: the kernel frees the buffer. EBUSY while its trace_pipe is open."""
    os.rmdir(path)


def write_file(path: str, text: str) -> None:
    """One write(2) of the whole text: tracefs parses each write as one command."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        data = text.encode()
        if os.write(fd, data) != len(data):
            raise OSError(errno.EIO, f"{path}: short write")
    except OSError as e:
        raise OSError(e.errno, f"{path}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def read_file(path: str) -> str:
    with open(path) as f:
        return f.read()


def event_dir(instance: str, system: str, event: str) -> str:
    return os.path.join(instance, "events", system, event)


def has_event(instance: str, system: str, event: str) -> bool:
    return os.path.isdir(event_dir(instance, system, event))


def enable_event(instance: str, system: str, event: str, on: bool = True) -> None:
    write_file(os.path.join(event_dir(instance, system, event), "enable"), "1" if on else "0")


def set_filter(instance: str, system: str, event: str, expression: str) -> None:
    """The event's filter (`pid == 812 || pid == 813`); "0" clears it. EINVAL if the kernel
    rejects the expression (its reason is in the instance's error_log)."""
    write_file(os.path.join(event_dir(instance, system, event), "filter"), expression)


def event_fields(instance: str, system: str, event: str) -> set[str]:
    """Field names from the event's format file."""
    names = set()
    for line in read_file(os.path.join(event_dir(instance, system, event), "format")).splitlines():
        line = line.strip()
        if line.startswith("field:"):
            decl = line[len("field:"):].split(";", 1)[0]
            names.add(decl.split()[-1].split("[", 1)[0])
    return names


def set_option(instance: str, option: str, on: bool) -> None:
    write_file(os.path.join(instance, "options", option), "1" if on else "0")


def set_value(instance: str, name: str, value: str) -> None:
    """An instance setting such as trace_clock or buffer_size_kb."""
    write_file(os.path.join(instance, name), value)


def open_trace_pipe(instance: str) -> int:
    """The instance's trace_pipe, non-blocking: a read consumes events, EAGAIN when none."""
    return os.open(os.path.join(instance, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
