"""Processes a benchmark starts, and ending every one of them by pid.

The benchmark process makes itself a child subreaper: whatever a contender leaves
behind when it exits (or is killed) is re-parented to us rather than to init, so the
cleanup can find it in /proc/self/task/*/children and end it by pidfd, never by name.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from relayq_supervisor.linux import prctl
from relayq_supervisor.linux.procfs import own_children


class BenchError(Exception):
    """A benchmark step could not be carried out; the text says what and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll_until(check, timeout: float, what: str, interval: float = 0.005):
    """The first truthy value of check(), polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def stop_supervisor(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (an ordered shutdown), SIGKILL if it is still there after `timeout`; reaped."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill_by_pidfd(pid: int, signo: int = signal.SIGKILL) -> bool:
    """Signal `pid` through a pidfd (no recycled-pid accident); False if it is gone."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        signal.pidfd_send_signal(fd, signo)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Launcher:
    """Starts contenders in their own sessions, logs their output to files in the
    work dir, and ends them (and anything they left) when asked."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.running: list[subprocess.Popen] = []
        try:
            prctl.set_child_subreaper(True)
            self.subreaper = True
        except OSError:
            self.subreaper = False

    def start(self, argv: list[str], name: str, env: dict | None = None, cwd: str | Path | None = None,
              preexec_fn=None) -> subprocess.Popen:
        out = open(self.workdir / f"{name}.out", "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env, cwd=cwd, preexec_fn=preexec_fn)
        finally:
            out.close()
        self.running.append(proc)
        return proc

    def output_of(self, name: str, tail: int = 800) -> str:
        try:
            text = (self.workdir / f"{name}.out").read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:].strip()

    def stop(self, proc: subprocess.Popen, timeout: float = 30.0, signo: int = signal.SIGTERM,
             group: bool = False) -> float | None:
        """Send `signo` (to its whole process group if `group`) and wait; SIGKILL its process
        group after `timeout`. Returns the seconds it took to exit on its own, None if it
        had to be killed."""
        if proc.poll() is not None:
            self.forget(proc)
            return 0.0
        started = time.monotonic()
        try:
            if group:   # start_new_session: its pgid is its pid, and it is not reaped yet
                os.killpg(proc.pid, signo)
            else:
                proc.send_signal(signo)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout)
            took = time.monotonic() - started
        except subprocess.TimeoutExpired:
            took = None
            try:    # start_new_session: its pgid is its pid, and it is not reaped yet
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self.forget(proc)
        return took

    def forget(self, proc: subprocess.Popen) -> None:
        if proc in self.running:
            self.running.remove(proc)

    def end_leftovers(self, deadline_s: float = 10.0) -> list[str]:
        """Kill and reap whatever was re-parented to us. Returns what it had to kill
        ("pid N (command line)")."""
        killed: list[str] = []
        managed = {p.pid for p in self.running}
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            orphans = [pid for pid in own_children() if pid not in managed]
            if not orphans:
                break
            for pid in orphans:
                what = f"pid {pid} ({command_line(pid)})"
                # a zombie has already exited: it only needs reaping, it was not left running
                if not is_zombie(pid) and kill_by_pidfd(pid):
                    killed.append(what)
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        return killed

    def end_all(self) -> list[str]:
        for proc in list(self.running):
            self.stop(proc, timeout=15.0)
        return self.end_leftovers()


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


def load_average() -> str:
    """1, 5 and 15 minute load averages: other work on the machine shows here."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def cpu_seconds(pid: int) -> float:
    """CPU time of a process, in ns resolution from /proc/PID/task/*/schedstat (psutil's
    user+system comes in 10 ms clock ticks: too coarse for the cost of one restart)."""
    total, seen = 0, False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tasks = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
                seen = True
        except (OSError, ValueError, IndexError):
            continue
    if seen:
        return total / 1e9
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def voluntary_switches(pid: int) -> int:
    """voluntary_ctxt_switches summed over every thread (wake-ups from blocking waits)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def rss_bytes(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss
