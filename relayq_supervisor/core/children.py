"""Real child processes for the arbiter: started by core/spawn.py, signalled through a
pidfd, their output read from a pipe on the loop into their log.

The child writes into a pipe rather than its log file so the supervisor can rotate
the log by size (a child holding the file would keep writing into the rotated one),
prefix lines (log = "inherit"), and keep the last lines as evidence for `why`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from relayq_supervisor.config import SupervisorSpec
from relayq_supervisor.core.containment import MARKER, Containment, Run
from relayq_supervisor.core.journal import ChildJournal, JournalSink, logs_to_journal
from relayq_supervisor.core.output import ChildOutput, open_child_output
from relayq_supervisor.core.program import Program
from relayq_supervisor.core.spawn import read_exec_result, spawn
from relayq_supervisor.kinds.redis.log_lines import line_priority as redis_line_priority
from relayq_supervisor.linux import credentials

log = logging.getLogger(__name__)


class ChildProcess:
    """One started child: pid, pidfd, the pipe that reports a failed exec, and its run
    (its cgroup, or the marker its descendants carry)."""

    def __init__(self, pid: int, pidfd: int, exec_result_fd: int, command: str,
                 containment: Containment | None = None, run: Run | None = None, moved_in: bool = True):
        self.pid = pid
        self.moved_in = moved_in        # it was moved into its group (not born there): its successor will be too
        self.pidfd: int | None = pidfd
        self.exec_result_fd: int | None = exec_result_fd
        self.command = command
        self._exec_error: str | None = None
        self.containment = containment
        self.run = run

    def send_signal(self, signo: int) -> bool:
        """Through the pidfd, so a recycled pid can never be hit."""
        if self.pidfd is None:
            return False
        try:
            signal.pidfd_send_signal(self.pidfd, signo)
            return True
        except ProcessLookupError:
            return False

    def kill_group(self) -> bool:
        """SIGKILL to its process group and to every other descendant (its cgroup, or what
        carries its run's marker): a daemon that left the group with setsid() goes too."""
        if self.containment is not None and self.moved_in:
            self.containment.warm_up()      # for the restart that may follow (core/containment.py)
        # The group id stays allocated while the group has members, so the number
        # still names our group, even after the leader is reaped; empty: ESRCH.
        try:
            os.killpg(self.pid, signal.SIGKILL)
            killed = True
        except (ProcessLookupError, PermissionError):
            killed = False
        if self.containment is not None and self.run is not None:
            killed = self.containment.end_run(self.run) != 0 or killed
        return killed

    def members(self) -> list[int] | None:
        """Every process of its run, main one included, where its cgroup lists them; else None."""
        if self.containment is None or self.run is None or self.run.group is None:
            return None
        return self.containment.members(self.run)

    def descendants(self) -> list[int]:
        """Its live processes other than the main one."""
        if self.containment is None or self.run is None:
            return []
        return self.containment.descendants(self.run, self.pid)

    def exec_error(self) -> str | None:
        """Read once the child has exited: its end of the pipe is closed by then (by exec
        or by exit), so this never blocks."""
        if self.exec_result_fd is not None:
            err = read_exec_result(self.exec_result_fd)
            self.exec_result_fd = None
            if err is not None:
                self._exec_error = f"exec of {self.command} failed: {os.strerror(err) if err else 'unknown error'}"
        return self._exec_error

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.exec_result_fd is not None:
            os.close(self.exec_result_fd)
            self.exec_result_fd = None


class AdoptedProcess(ChildProcess):
    """A process a crashed predecessor started: not our child, so its exit comes through
    the tap (waitpid as its tracer) or, untraced, only as its pidfd turning readable."""

    def __init__(self, pid: int, pidfd: int, containment: Containment | None = None, run: Run | None = None):
        # its successor is a new spawn: moved into its group only where children cannot be born there
        super().__init__(pid, pidfd, -1, "", containment, run, moved_in=False)
        self.exec_result_fd = None

    def exec_error(self) -> str | None:
        return None


class ProcessSpawner:
    """The arbiter's Spawner: core/spawn.py's spawn(), whose exec gate is where
    `before_exec(pid, program)` runs (the signal tap seizes the child there) and where the
    child enters its run's cgroup."""

    def __init__(self, loop: asyncio.AbstractEventLoop, supervisor: SupervisorSpec,
                 before_exec: Callable[[int, Program], None] | None = None,
                 containment: Containment | None = None):
        self.loop = loop
        self.supervisor = supervisor
        self.before_exec = before_exec
        self.containment = containment or Containment(None, "", "not set up")
        self.outputs: dict[str, list[ChildOutput]] = {}     # instance name -> where its lines go
        self.pipes: dict[str, int] = {}      # instance name -> read end of its current pipe
        self.output_lost: dict[str, int] = {}    # instance name -> output bytes dropped while its log fails
        self.born_in_group: dict[str, bool] = {}  # instance name -> its last child was made in its cgroup
        self.journal_by_default = logs_to_journal(supervisor.log_target)
        self.journal: JournalSink | None = None     # opened when a first program logs there

    def open_outputs(self, p: Program) -> list[ChildOutput]:
        """Its file (or the supervisor's stdout), the journal, or both: see core/journal.py."""
        sup, how = self.supervisor, p.spec.log
        outputs: list[ChildOutput] = []
        if how != "journal":
            outputs.append(open_child_output(p.name, "inherit" if how == "inherit" else "file", sup.log_dir,
                                             sup.log_max_bytes, sup.log_backups))
        if how in ("journal", "both") or (how == "auto" and self.journal_by_default):
            if self.journal is None:
                self.journal = JournalSink(loop=self.loop)
            # Redis ranks its own lines (kinds/redis/log_lines.py); other programs may use `<N>` prefixes
            priority = redis_line_priority if p.spec.redis is not None else None
            outputs.append(ChildJournal(self.journal, p.spec.name, p.name, lambda: p.pid, priority))
        return outputs

    def journal_counts(self) -> tuple[int, int] | None:
        """Output lines sent to the journal and dropped (None: no program logs there)."""
        return None if self.journal is None else (self.journal.sent, self.journal.dropped)

    def spawn(self, p: Program, argv: list[str], env: dict[str, str]) -> ChildProcess:
        if p.name not in self.outputs:
            self.outputs[p.name] = self.open_outputs(p)
        # only our end non-blocking: O_NONBLOCK on the child's stdout would hand it EAGAIN
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(out_r, False)
        run = self.containment.new_run(p.name)
        placed = [run]

        def place(pid: int) -> None:
            placed[0] = self.place(p, run, pid)

        def at_gate(pid: int) -> None:
            if self.before_exec is not None:
                self.before_exec(pid, p)
        # born in its group where the kernel allows (core/spawn.py's clone way), else moved there at the gate
        group_fd = self.containment.open_group(run)
        try:
            child = spawn(argv, {**env, MARKER: run.id}, p.spec.directory, out_w, before_exec=at_gate,
                          child_setup=credentials.child_setup(p.spec.privileges), cgroup_fd=group_fd, place=place)
        except OSError:
            os.close(out_r)
            self.containment.end_run(run)
            raise
        finally:
            os.close(out_w)
            if group_fd is not None:
                os.close(group_fd)
        self.containment.born_in_group = child.born_in_group
        self.born_in_group[p.name] = child.born_in_group
        self.close_pipe(p.name)
        self.pipes[p.name] = out_r
        self.loop.add_reader(out_r, self.on_output, p, out_r)
        self.loop.call_soon(self.containment.prepare, p.name)     # the next run's group, off the restart path
        return ChildProcess(child.pid, child.pidfd, child.exec_result_fd, argv[0], self.containment, placed[0],
                            moved_in=not child.born_in_group)

    def place(self, p: Program, run: Run, pid: int) -> Run:
        """Into its group before exec; if the kernel refuses, this run is followed by marker."""
        try:
            self.containment.place(run, pid)
            return run
        except OSError as e:
            log.warning("%s: cannot enter cgroup %s (%s); its descendants are found by process tree",
                        p.name, run.group, e.strerror)
            self.containment.end_run(run)
            return Run(run.id, None)

    def on_output(self, p: Program, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # its output ends as it dies, before its SIGCHLD: the restart's move can begin now
            if not self.born_in_group.get(p.name):
                self.containment.warm_up()
            self.close_pipe(p.name)
            for output in self.outputs.get(p.name, ()):
                if isinstance(output, ChildJournal):
                    output.flush()      # its last line, under the pid that wrote it
            return
        p.remember_output(data)
        failed: OSError | None = None
        for output in self.outputs[p.name]:
            try:
                output.write(data)
            except OSError as e:    # its file: the journal counts what it cannot send, never raises
                failed = e
        if failed is not None:
            # once per outage (a full disk fails every read of the pipe), and once when it ends
            if p.name not in self.output_lost:
                log.error("%s: cannot write its log (%s); its output is dropped until it can", p.name,
                          failed.strerror)
            self.output_lost[p.name] = self.output_lost.get(p.name, 0) + len(data)
            return
        lost = self.output_lost.pop(p.name, None)
        if lost is not None:
            log.warning("%s: writing its log again; %d bytes of its output were dropped", p.name, lost)

    def close_pipe(self, name: str) -> None:
        fd = self.pipes.pop(name, None)
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)

    def release(self, p: Program) -> None:
        self.close_pipe(p.name)
        self.containment.discard(p.name)
        for output in self.outputs.pop(p.name, ()):
            output.close()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
