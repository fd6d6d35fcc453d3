"""The kernel witness's tracefs instance: its life and its switches, no reading.

`instances/relayq-<pid>` under the system's tracefs (or a mount of our own under run_dir
where nobody mounted it): made at start, with its trace clock, ring buffer size, the
record-tgid option, each event enabled and filtered (signals and OOM kills to the
supervised pids, process exits to whole processes, sockets to the watched ports), and
its trace_pipe opened non-blocking; removed at close, and a dead supervisor's left one
removed at the next start. Nothing global, no other instance, is ever written.
`KernelWitness` (tracefs.py) is one of these that reads what the kernel writes there.
"""
from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable

from relayq_supervisor.linux import tracefs

log = logging.getLogger(__name__)

INSTANCE_PREFIX = "relayq-"
SIGNAL_EVENT = ("signal", "signal_generate")
HISTORY_EVENTS = (("sched", "sched_process_fork"), ("sched", "sched_process_exec"), ("sched", "sched_process_exit"))
EXIT_EVENT = ("sched", "sched_process_exit")
OOM_EVENT = ("oom", "mark_victim")
SOCK_EVENT = ("sock", "inet_sock_set_state")
# The instance's ring buffer (buffer_size_kb is per CPU; kernel memory, never swapped, held
# while the supervisor runs). An event takes ~40-60 bytes in it (signal_generate ~56), so
# 2 MiB a CPU holds ~35,000: on a 2-CPU node, ten back-to-back storms of 5000 signals even
# while the reader is starved of CPU (BENCHMARKS.md: signal storm; 512 KiB, with the slower
# reading before, lost a fifth to two fifths of them). Bounded for the node: BUFFER_KB_TOTAL
# over all CPUs (8 MiB), never below 512 KiB a CPU (~9,000 events between two reads).
BUFFER_KB_PER_CPU_MAX = 2048
BUFFER_KB_PER_CPU_MIN = 512
BUFFER_KB_TOTAL = 8192


def buffer_kb_per_cpu(cpus: int | None = None) -> int:
    cpus = cpus or os.cpu_count() or 1
    return max(BUFFER_KB_PER_CPU_MIN, min(BUFFER_KB_PER_CPU_MAX, BUFFER_KB_TOTAL // cpus))


def filter_expression(pids: Iterable[int]) -> str:
    """signal_generate/mark_victim filter: those targets (SIGCHLD excluded: children's
    children exit all the time). "0" (match nothing) when there are none."""
    ordered = sorted(set(pids))
    if not ordered:
        return "pid == 0"
    targets = " || ".join(f"pid == {p}" for p in ordered)
    return f"sig != 17 && ({targets})"


def oom_filter_expression(pids: Iterable[int]) -> str:
    ordered = sorted(set(pids))
    return " || ".join(f"pid == {p}" for p in ordered) if ordered else "pid == 0"


# The initial pid namespace's inode number, fixed by the kernel (PROC_PID_INIT_INO)
INITIAL_PID_NS_INODE = 0xEFFFFFFC


def in_initial_pid_namespace() -> bool:
    """Tracepoints report pids as the initial pid namespace sees them; ours must be those.
    NSpid alone cannot tell: with a /proc of our own namespace it lists just our pid."""
    try:
        if os.stat("/proc/self/ns/pid").st_ino != INITIAL_PID_NS_INODE:
            return False
    except OSError:
        pass    # no ns files (old kernel or no /proc/self/ns): fall back to NSpid
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return len(line.split()) == 2
    except OSError:
        return False
    return True     # kernels before 4.1 have no NSpid and no nested pid namespaces to tell


def is_live_supervisor(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return any(b"relayq_supervisor" in a or b"relayq-supervisor" in a for a in argv[:3])


class TraceInstance:
    """Our instance: `start` makes and configures it (False, with `unavailable`, where the
    kernel refuses), `watch` and `trace_sockets` set its filters, `close` removes it."""

    def __init__(self, root: str | None = None, private_mount: str | None = None):
        self.root = root
        self.private_mount = private_mount
        self.unavailable: str | None = None
        self.instance: str | None = None
        self.fd: int | None = None
        self.mounted_here: str | None = None     # tracefs we mounted, unmounted at close
        self.watched: frozenset[int] = frozenset()
        self.self_pid = os.getpid()
        self.has_oom = False
        self.buffer_kb = 0          # per CPU, as set

    @property
    def state(self) -> str:
        if self.unavailable:
            return f"unavailable ({self.unavailable})"
        return "watching" if self.fd is not None else "not started"

    def fileno(self) -> int:
        assert self.fd is not None
        return self.fd

    def start(self) -> bool:
        """Set up the instance; False (with `unavailable` set) where the kernel refuses."""
        if not in_initial_pid_namespace():
            self.unavailable = ("the supervisor runs in a child pid namespace; "
                                "kernel pids would name the wrong processes")
            return False
        try:
            self.root = self.root or self.find_or_mount()
            self.remove_stale()
            self.instance = tracefs.create_instance(self.root, f"{INSTANCE_PREFIX}{self.self_pid}")
            self.configure()
            self.fd = tracefs.open_trace_pipe(self.instance)
        except OSError as e:
            reason = e.strerror or str(e)
            self.unavailable = f"tracefs: {e.filename}: {reason}" if e.filename else f"tracefs: {reason}"
            self.close()
            return False
        return True

    def find_or_mount(self) -> str:
        """The system's tracefs; where nobody mounted it, our own mount (`private_mount`),
        unmounted at close. Never the standard place: a mount there would be shared with
        other supervisors, and whichever exits last could not know it should unmount it."""
        root = tracefs.find_mount()
        if root is not None:
            return root
        if self.private_mount is None:
            raise OSError(errno.ENOENT, "tracefs is not mounted")
        os.makedirs(self.private_mount, exist_ok=True)
        if self.private_mount not in tracefs.mounts():      # else: ours, left by a crash
            tracefs.mount(self.private_mount)
            log.info("kernel witness: tracefs was not mounted; mounted it on %s for this supervisor",
                     self.private_mount)
        self.mounted_here = self.private_mount
        return self.private_mount

    def remove_stale(self) -> None:
        """Instances a supervisor left when it died (SIGKILL, a crash): theirs, never a live one's."""
        assert self.root is not None
        for name in tracefs.list_instances(self.root):
            pid = name[len(INSTANCE_PREFIX):]
            if not name.startswith(INSTANCE_PREFIX) or not pid.isdigit() or int(pid) == self.self_pid:
                continue
            if is_live_supervisor(int(pid)):
                continue
            try:
                tracefs.remove_instance(tracefs.instance_path(self.root, name))
                log.info("kernel witness: removed %s, left by a supervisor (pid %s) that is gone", name, pid)
            except OSError as e:
                log.warning("kernel witness: could not remove stale instance %s (%s)", name, e.strerror)

    def configure(self) -> None:
        inst = self.instance
        assert inst is not None
        tracefs.set_value(inst, "trace_clock", "boot")          # the clock of /proc start times
        self.buffer_kb = buffer_kb_per_cpu()
        tracefs.set_value(inst, "buffer_size_kb", str(self.buffer_kb))
        # poll() on trace_pipe waits for the buffer to be this % full; 0: any event wakes us
        tracefs.set_value(inst, "buffer_percent", "0")
        try:
            tracefs.set_option(inst, "record-tgid", True)       # the sender's process, not just its thread
        except OSError:
            pass                                                # older kernels: the tid names it
        tracefs.set_filter(inst, *SIGNAL_EVENT, filter_expression(()))
        tracefs.enable_event(inst, *SIGNAL_EVENT)
        if "group_dead" in tracefs.event_fields(inst, *EXIT_EVENT):
            # a thread's end is not its process' end: not even a line (thread-heavy nodes)
            tracefs.set_filter(inst, *EXIT_EVENT, "group_dead == 1")
        for system, event in HISTORY_EVENTS:
            tracefs.enable_event(inst, system, event)
        if tracefs.has_event(inst, *OOM_EVENT):
            tracefs.set_filter(inst, *OOM_EVENT, oom_filter_expression(()))
            tracefs.enable_event(inst, *OOM_EVENT)
            self.has_oom = True

    def close(self) -> None:
        """Stop tracing and remove the instance (and tracefs, if we mounted it and nobody uses it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.instance is not None:
            try:
                tracefs.remove_instance(self.instance)
            except OSError as e:
                log.warning("kernel witness: could not remove %s (%s)", self.instance, e.strerror)
            self.instance = None
        if self.mounted_here is not None:
            try:
                tracefs.umount(self.mounted_here)
                os.rmdir(self.mounted_here)
            except OSError as e:
                log.warning("kernel witness: could not unmount %s (%s)", self.mounted_here, e.strerror)
            self.mounted_here = None

    # --- what to watch ----------------------------------------------------------------------

    def watch(self, pids: Iterable[int]) -> None:
        """The supervised pids; the kernel filter is rewritten only when they changed."""
        wanted = frozenset(pids)
        if wanted == self.watched or self.instance is None:
            return
        try:
            tracefs.set_filter(self.instance, *SIGNAL_EVENT, filter_expression(wanted))
            if self.has_oom:
                tracefs.set_filter(self.instance, *OOM_EVENT, oom_filter_expression(wanted))
        except OSError as e:
            log.error("kernel witness: filter for pids %s refused (%s)", sorted(wanted), e.strerror)
            return
        self.watched = wanted

    def trace_sockets(self, expression: str, ports: Iterable[int]) -> bool:
        """inet_sock_set_state on, filtered by `expression`; False (logged) where the kernel
        has no such event or refuses."""
        assert self.instance is not None
        try:
            if not tracefs.has_event(self.instance, *SOCK_EVENT):
                log.warning("kernel witness: no sock:inet_sock_set_state on this kernel; "
                            "Redis clients are named only while connected")
                return False
            tracefs.set_filter(self.instance, *SOCK_EVENT, expression)
            tracefs.enable_event(self.instance, *SOCK_EVENT)
        except OSError as e:
            log.warning("kernel witness: cannot trace connections to port(s) %s (%s)",
                        ", ".join(map(str, ports)), e.strerror or e)
            return False
        return True
