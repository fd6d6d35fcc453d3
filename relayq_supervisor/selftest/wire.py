"""The wire format shared by the client and the worker: the Redis URL, a client with
short timeouts, the queue and result keys, a job's result."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_QUEUE = "relayq:jobs"
RESULT_PREFIX = "relayq:result:"
RESULT_TTL = 3600               # seconds a result waits for its client
POLL_TIMEOUT = 2.0              # BLPOP timeout: also bounds how long SIGTERM takes when idle
RETRY_MIN, RETRY_MAX = 0.1, 2.0  # reconnect backoff while Redis is away
TIMED_OUT = 124                 # returncode of a job killed at its time limit (as timeout(1))


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


def as_text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
