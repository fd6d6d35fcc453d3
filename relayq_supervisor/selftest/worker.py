"""The worker: BLPOP jobs from a queue, run each with `sh -c`, RPUSH its result; READY=1
and WATCHDOG=1 to the supervisor, SIGTERM to stop."""
from __future__ import annotations

import faulthandler
import json
import os
import select
import signal
import socket
import subprocess
import time

import psutil
import redis

from relayq_supervisor.linux.journal import stderr_is_journal
from relayq_supervisor.linux.notify_socket import connect_notify_socket, send_notify
from relayq_supervisor.linux.siginfo import signal_name
from relayq_supervisor.selftest.wire import (
    DEFAULT_QUEUE,
    POLL_TIMEOUT,
    RESULT_TTL,
    RETRY_MAX,
    RETRY_MIN,
    TIMED_OUT,
    JobResult,
    as_text,
    connect,
    display_url,
    redis_url,
    result_key,
)


def notify_ready(address: str | None = None, message: bytes = b"READY=1") -> bool:
    """Send `message` (READY=1, or WATCHDOG=1) to $NOTIFY_SOCKET (or `address`); '@' names an abstract socket.

    Returns False when there is no socket to notify.
    """
    address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    with connect_notify_socket(address) as sock:
        send_notify(sock, message)
    return True


def _journal_priorities(fd: int) -> bool:
    """True when `fd` is the journal stream systemd told us about (then lines get <N> prefixes)."""
    return stderr_is_journal(fd=fd)


def _write_line(fd: int, line: str) -> None:
    # os.write, not print(): lines are also written from signal handlers, where a
    # buffered print could re-enter a print in progress.
    data = (line + "\n").encode("utf-8", "replace")
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass    # nobody is reading our output any more; keep serving jobs


class Worker:
    """BLPOP loop on one queue; runs each job with `sh -c` and RPUSHes its result."""

    def __init__(self, url: str | None = None, queue: str = DEFAULT_QUEUE,
                 poll: float = POLL_TIMEOUT, out_fd: int = 1, err_fd: int = 2):
        self.url = redis_url(url)
        self.queue = queue
        self.poll = poll
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._out_fd, self._err_fd = out_fd, err_fd
        self._journal = _journal_priorities(err_fd)
        self._stop_signal: str | None = None
        self._usr1 = 0
        self._ready_sent = False
        self._connected = False
        self._down_since: float | None = None
        self._retry_delay = RETRY_MIN
        self._wake_r = self._wake_w = -1
        # the supervisor's watchdog (WATCHDOG_USEC, as systemd sets it): ping at a third of it
        usec = os.environ.get("WATCHDOG_USEC", "")
        self._watchdog_every = int(usec) / 3e6 if usec.isdigit() and int(usec) > 0 else None
        self._last_ping = 0.0
        if self._watchdog_every is not None:
            self.poll = min(self.poll, self._watchdog_every)

    # signals -------------------------------------------------------------

    def _install_signals(self) -> None:
        # A signal wakes _pause() through this pipe; handlers only set flags or write.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_usr1)

    def _on_stop(self, signum, frame) -> None:
        if self._stop_signal is None:
            self._stop_signal = signal_name(signum)

    def _on_usr1(self, signum, frame) -> None:
        self._usr1 += 1
        _write_line(self._out_fd, f"SIGUSR1 #{self._usr1}")

    def _pause(self, seconds: float) -> None:
        """Wait `seconds`, returning early when a signal arrives."""
        if self._stop_signal is not None:
            return
        try:
            select.select([self._wake_r], [], [], seconds)
            while os.read(self._wake_r, 64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # logging -------------------------------------------------------------

    def log(self, message: str, priority: int = 6) -> None:
        prefix = f"<{priority}>" if self._journal else ""
        _write_line(self._err_fd, f"{prefix}worker {self.name}: {message}")

    # main loop -----------------------------------------------------------

    def serve(self) -> int:
        """Serve jobs until SIGTERM/SIGINT; returns the exit status (0)."""
        faulthandler.enable()       # the watchdog's SIGABRT leaves a traceback in our log
        self._install_signals()
        client = connect(self.url, block=self.poll)
        self.log(f"serving queue {self.queue} at {display_url(self.url)}")
        try:
            while self._stop_signal is None:
                self._heartbeat()
                try:
                    if not self._connected:
                        client.ping()
                        self._on_reachable()
                    item = client.blpop([self.queue], timeout=self.poll)
                except redis.RedisError as e:
                    # ConnectionError (BusyLoadingError included) and TimeoutError while
                    # Redis restarts; anything else (ACL, WRONGTYPE) is retried the same way.
                    self._on_unreachable(client, e)
                    continue
                if item is not None:
                    self._handle(client, as_text(item[1]))
        finally:
            client.close()
        self.log(f"stopping ({self._stop_signal})")
        return 0

    def _heartbeat(self) -> None:
        """WATCHDOG=1 while the loop turns: a worker stuck in a job or a deadlock stops pinging."""
        now = time.monotonic()
        if self._watchdog_every is not None and now - self._last_ping >= self._watchdog_every:
            self._last_ping = now
            notify_ready(message=b"WATCHDOG=1")

    def _on_reachable(self) -> None:
        if self._down_since is not None:
            self.log(f"Redis at {display_url(self.url)} is back after "
                     f"{time.monotonic() - self._down_since:.1f}s")
        self._connected = True
        self._down_since = None
        self._retry_delay = RETRY_MIN
        if not self._ready_sent:
            self._ready_sent = True
            try:
                notify_ready()
            except OSError as e:
                self.log(f"cannot send READY=1 to NOTIFY_SOCKET "
                         f"{os.environ.get('NOTIFY_SOCKET')!r} ({e})", priority=4)

    def _on_unreachable(self, client: redis.Redis, error: Exception) -> None:
        if self._down_since is None:
            # One line per outage, not one per retry: Redis restarts are routine.
            self.log(f"cannot reach Redis at {display_url(self.url)} ({type(error).__name__}: {error}); "
                     f"retrying every {RETRY_MIN:g}-{RETRY_MAX:g}s", priority=4)
            self._down_since = time.monotonic()
        self._connected = False
        client.connection_pool.disconnect()
        self._pause(self._retry_delay)
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX)

    # jobs ----------------------------------------------------------------

    def _handle(self, client: redis.Redis, payload: str) -> None:
        try:
            spec = json.loads(payload)
            job_id = str(spec["id"])
        except (ValueError, TypeError, KeyError):
            self.log(f"dropped a malformed job (not JSON with an id): {payload[:200]!r}", priority=4)
            return
        command, timeout = spec.get("command"), spec.get("timeout", 30.0)
        if not isinstance(command, str) or not isinstance(timeout, (int, float)) or timeout <= 0:
            self.log(f"job {job_id}: malformed (needs a string command and a positive timeout)", priority=4)
            result = self._result(job_id, "", "malformed job: needs a string command and a positive timeout\n", 2)
        else:
            result = self._execute(job_id, command, float(timeout))
        self._store(client, result)

    def _execute(self, job_id: str, command: str, timeout: float) -> JobResult:
        env = dict(os.environ)
        # Jobs must not be able to speak for the worker to the supervisor.
        env.pop("NOTIFY_SOCKET", None)
        try:
            # The job stays in the worker's process group, so a supervisor that kills the
            # group on stop takes the job with it.
            proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except OSError as e:
            _write_line(self._out_fd, f"job {job_id}: could not start sh ({e})")
            return self._result(job_id, "", f"relayq: could not start sh: {e}\n", 127)
        try:
            out, err = proc.communicate(timeout=timeout)
            returncode = proc.returncode
            summary = (f"exit {returncode}" if returncode >= 0
                       else f"killed by {signal_name(-returncode)}")
        except subprocess.TimeoutExpired:
            _kill_tree(proc.pid)
            out, err = self._drain(proc)
            returncode = TIMED_OUT
            err += f"relayq: job killed after its time limit of {timeout:g}s\n".encode()
            summary = f"timed out after {timeout:g}s (exit {TIMED_OUT})"
        _write_line(self._out_fd, f"job {job_id}: {summary}")
        return self._result(job_id, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), returncode)

    @staticmethod
    def _drain(proc: subprocess.Popen) -> tuple[bytes, bytes]:
        # A background grandchild may hold the pipes open forever: read briefly, then let go.
        try:
            out, err = proc.communicate(timeout=1.0)
        except subprocess.TimeoutExpired:
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
            proc.wait()
            out, err = b"", b""
        return out or b"", err or b""

    def _result(self, job_id: str, stdout: str, stderr: str, returncode: int) -> JobResult:
        return JobResult(id=job_id, stdout=stdout, stderr=stderr, returncode=returncode,
                         worker=self.name, finished_at=time.time())

    def _store(self, client: redis.Redis, result: JobResult) -> None:
        """RPUSH the result; while Redis is away keep trying, unless told to stop."""
        key = result_key(result.id)
        while True:
            try:
                pipe = client.pipeline(transaction=True)
                pipe.rpush(key, result.to_json())
                pipe.expire(key, RESULT_TTL)
                pipe.execute()
                if not self._connected:
                    self._on_reachable()
                return
            except redis.RedisError as e:
                if self._stop_signal is not None:
                    self.log(f"job {result.id}: result lost, Redis unreachable while stopping ({e})",
                             priority=3)
                    return
                self._on_unreachable(client, e)


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and its descendants (sh may have forked: pipelines, `a; b`)."""
    try:
        root = psutil.Process(pid)
        # Collect before killing: once sh dies its children are reparented and lost to us.
        victims = root.children(recursive=True) + [root]
    except psutil.Error:
        return
    for proc in victims:
        try:
            proc.kill()     # psutil checks the pid still names the same process
        except psutil.Error:
            pass
