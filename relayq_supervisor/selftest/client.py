"""The client: queue a job, wait for its result (`job.run('echo SUCCESS').get()`)."""
from __future__ import annotations

import json
import time
import uuid

import redis

from relayq_supervisor.linux.siginfo import signal_name
from relayq_supervisor.selftest.wire import (
    DEFAULT_QUEUE,
    RETRY_MIN,
    JobResult,
    as_text,
    connect,
    display_url,
    redis_url,
    result_key,
)


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
                    return JobResult.from_json(as_text(item[1]))
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
