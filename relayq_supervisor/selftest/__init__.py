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

Modules: `wire` (URL, client, keys, JobResult), `client` (JobClient, `job`), `worker`
(Worker), `command` (the command line); their public names are re-exported here.
"""
from relayq_supervisor.selftest.client import Job, JobClient, JobFailed, RedisUnreachable, job
from relayq_supervisor.selftest.command import main
from relayq_supervisor.selftest.wire import (
    DEFAULT_QUEUE,
    DEFAULT_URL,
    POLL_TIMEOUT,
    RESULT_PREFIX,
    RESULT_TTL,
    RETRY_MAX,
    RETRY_MIN,
    TIMED_OUT,
    JobResult,
    connect,
    display_url,
    redis_url,
    result_key,
)
from relayq_supervisor.selftest.worker import Worker, notify_ready

__all__ = [
    "DEFAULT_QUEUE", "DEFAULT_URL", "POLL_TIMEOUT", "RESULT_PREFIX", "RESULT_TTL", "RETRY_MAX", "RETRY_MIN", "TIMED_OUT",
    "Job", "JobClient", "JobFailed", "JobResult", "RedisUnreachable", "Worker", "connect", "display_url", "job", "main",
    "notify_ready", "redis_url", "result_key",
]
