"""A small relayq-style job worker and client: the reference worker of the default config.

It reproduces the incident's smoke test shape,
    python3 -c "from relayq_supervisor.selftest import job; print(job.run('echo SUCCESS').get())"
so a node can be checked end to end: client -> Redis list -> worker -> `sh -c` -> result.

Wire format (Redis, URL from RELAYQ_REDIS_URL):
  queue `relayq:jobs` (RPUSH by clients, BLPOP by workers): {"id", "command", "timeout"}
  result `relayq:result:<id>` (RPUSH by the worker, EXPIRE 1 h):
      {"id", "stdout", "stderr", "returncode", "worker": "host:pid", "finished_at": epoch seconds}

Usage:
  python3 -m relayq_supervisor.selftest worker [--queue NAME]
  python3 -m relayq_supervisor.selftest run 'echo SUCCESS'
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relayq_supervisor.linux.journal import stderr_is_journal
from relayq_supervisor.linux.notify_socket import connect_notify_socket, send_notify
from relayq_supervisor.linux.siginfo import signal_name

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "relayq:jobs"
RESULT_PREFIX = "relayq:result:"
RESULT_TTL = 3600               # seconds a result waits for its client
POLL_TIMEOUT = 2.0              # BLPOP timeout: also bounds how long SIGTERM takes when idle
RETRY_MIN, RETRY_MAX = 0.1, 2.0  # reconnect backoff while Redis is away
TIMED_OUT = 124                 # returncode of a job killed at its time limit (as timeout(1))


# --- shared ------------------------------------------------------------------

def redis_url(url: str | None = None) -> str:
    """The URL to use: explicit, else $RELAYQ_REDIS_URL (set by the supervisor), else the default."""
    return url or os.environ.get("RELAYQ_REDIS_URL") or DEFAULT_URL


def display_url(url: str) -> str:
    """The URL with any password masked, fit for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def connect(url: str, block: float = 0.0) -> redis.Redis:
    """A client with short timeouts and no hidden retries: callers own the retry policy.

    `block` is the longest BLPOP the caller will issue; the read timeout must outlast it.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=block + 2.0,
        retry=Retry(NoBackoff(), 0),   # a retried RPUSH could queue a job twice
        decode_responses=True,
    )


def result_key(job_id: str) -> str:
    return RESULT_PREFIX + job_id


@dataclass(frozen=True)
class JobResult:
    id: str
    stdout: str
    stderr: str
    returncode: int
    worker: str
    finished_at: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> JobResult:
        data = json.loads(text)
        return cls(id=str(data["id"]), stdout=data.get("stdout", ""), stderr=data.get("stderr", ""),
                   returncode=int(data["returncode"]), worker=str(data.get("worker", "?")),
                   finished_at=float(data.get("finished_at", 0.0)))


# --- client ------------------------------------------------------------------

class JobFailed(Exception):
    """The job ran and its command failed (returncode != 0)."""

    def __init__(self, result: JobResult):
        self.result = result
        how = (f"failed with exit code {result.returncode}" if result.returncode >= 0
               else f"was killed by {signal_name(-result.returncode)}")
        message = f"job {result.id} {how} on worker {result.worker}"
        stderr = result.stderr.strip()
        if stderr:
            message += f": {stderr}"
        super().__init__(message)


class RedisUnreachable(ConnectionError):
    """The client could not reach Redis to queue a job."""


class Job:
    """Handle on a queued job; get() waits for and returns its output."""

    def __init__(self, id: str, command: str, timeout: float, url: str, queue: str):
        self.id = id
        self.command = command
        self.timeout = timeout
        self.url = url
        self.queue = queue
        self._result: JobResult | None = None

    @property
    def payload(self) -> str:
        """The queue entry; deterministic, so the client can LREM exactly this job."""
        return json.dumps({"id": self.id, "command": self.command, "timeout": self.timeout})

    @property
    def result(self) -> JobResult | None:
        """The full result (worker, stderr, returncode) once get() has received it."""
        return self._result

    def get(self, timeout: float = 30) -> str:
        """Wait up to `timeout` seconds; return stdout without its trailing newline.

        Raises JobFailed if the command failed, TimeoutError if no result came.
        """
        if self._result is None:
            self._result = self._wait_for_result(timeout)
        if self._result.returncode != 0:
            raise JobFailed(self._result)
        out = self._result.stdout
        return out[:-1] if out.endswith("\n") else out

    def _wait_for_result(self, timeout: float) -> JobResult:
        deadline = time.monotonic() + timeout
        client = connect(self.url, block=1.0)
        last_error: Exception | None = None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(self._timeout_message(client, timeout, last_error))
                try:
                    # Short BLPOPs rather than one long one: Redis may restart meanwhile.
                    item = client.blpop([result_key(self.id)], timeout=max(0.01, min(remaining, 1.0)))
                    last_error = None
                except (redis.ConnectionError, redis.TimeoutError) as e:
                    last_error = e
                    time.sleep(min(RETRY_MIN, max(0.0, deadline - time.monotonic())))
                    continue
                if item is not None:
                    return JobResult.from_json(_text(item[1]))
        finally:
            client.close()

    def _timeout_message(self, client: redis.Redis, timeout: float, error: Exception | None) -> str:
        where = f"queue {self.queue} at {display_url(self.url)}"
        if error is not None:
            return (f"no result for job {self.id} within {timeout:g}s: Redis unreachable ({error}); "
                    f"{where}")
        try:
            # Withdraw the job so a worker that turns up later does not run it for nobody.
            withdrawn = client.lrem(self.queue, 1, self.payload) > 0
        except redis.RedisError:
            withdrawn = False
        if withdrawn:
            return (f"no worker answered job {self.id} within {timeout:g}s on {where} "
                    f"(job withdrawn; is a worker running? try: relayqctl status)")
        return (f"no result for job {self.id} within {timeout:g}s on {where}: "
                f"a worker took it but has not finished")


class JobClient:
    """Queues jobs: `job.run('echo SUCCESS').get()`."""

    def __init__(self, queue: str = DEFAULT_QUEUE):
        self.queue = queue

    def run(self, command: str, timeout: float = 30, url: str | None = None) -> Job:
        """Queue `command` (run with sh -c, killed after `timeout` s) and return its Job."""
        url = redis_url(url)
        handle = Job(uuid.uuid4().hex, command, float(timeout), url, self.queue)
        client = connect(url)
        try:
            client.rpush(self.queue, handle.payload)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise RedisUnreachable(f"cannot reach Redis at {display_url(url)} to queue the job ({e}); "
                                   "is relayq-supervisor running? try: relayqctl status") from None
        finally:
            client.close()
        return handle


job = JobClient()


# --- worker ------------------------------------------------------------------

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
                    self._handle(client, _text(item[1]))
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


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


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


# --- command line ------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m relayq_supervisor.selftest",
        description="Reference relayq job worker and smoke-test client. "
                    f"Redis URL: --url, else $RELAYQ_REDIS_URL, else {DEFAULT_URL}.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{worker,run}")

    w = sub.add_parser("worker", help="serve jobs from a queue until SIGTERM/SIGINT")
    w.add_argument("--queue", default=DEFAULT_QUEUE, help=f"queue to serve (default {DEFAULT_QUEUE})")
    w.add_argument("--url", help="Redis URL (default: $RELAYQ_REDIS_URL)")
    w.add_argument("--poll", type=float, default=POLL_TIMEOUT,
                   help=f"BLPOP timeout in seconds; bounds how long an idle worker takes to stop "
                        f"(default {POLL_TIMEOUT:g})")

    r = sub.add_parser("run", help="queue a shell command, wait for it and print its output")
    r.add_argument("shell_command", metavar="COMMAND", help="run by a worker with sh -c")
    r.add_argument("--queue", default=DEFAULT_QUEUE, help=f"queue to use (default {DEFAULT_QUEUE})")
    r.add_argument("--url", help="Redis URL (default: $RELAYQ_REDIS_URL)")
    r.add_argument("-c", "--config", help="take the Redis address from this relayq-supervisor config")
    r.add_argument("--timeout", type=float, default=30.0, help="job time limit in seconds (default 30)")
    r.add_argument("--wait", type=float, help="seconds to wait for the result (default: timeout + 5)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "worker":
        if args.poll <= 0:
            print("relayq: --poll must be a positive number of seconds", file=sys.stderr)
            return 2
        return Worker(url=args.url, queue=args.queue, poll=args.poll).serve()

    wait = args.wait if args.wait is not None else args.timeout + 5
    if args.config and not args.url:
        from relayq_supervisor.config.load import load_config
        from relayq_supervisor.errors import ConfigError
        from relayq_supervisor.kinds.redis.server import client_url
        try:
            spec = load_config(args.config).redis
        except ConfigError as e:
            print(f"relayq: {e}", file=sys.stderr)
            return 2
        if spec is None:
            print(f"relayq: {args.config} has no [redis] table", file=sys.stderr)
            return 2
        args.url = client_url(spec)
    try:
        output = JobClient(args.queue).run(args.shell_command, timeout=args.timeout, url=args.url).get(wait)
    except (JobFailed, TimeoutError, RedisUnreachable) as e:
        print(f"relayq: {e}", file=sys.stderr)
        return 1
    except redis.RedisError as e:
        print(f"relayq: Redis at {display_url(redis_url(args.url))} refused the job: {e}", file=sys.stderr)
        return 1
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
