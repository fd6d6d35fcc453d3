"""The command line: `python3 -m relayq_supervisor.selftest worker|run`."""
from __future__ import annotations

import argparse
import sys

import redis

from relayq_supervisor.selftest.client import JobClient, JobFailed, RedisUnreachable
from relayq_supervisor.selftest.wire import DEFAULT_QUEUE, DEFAULT_URL, POLL_TIMEOUT, display_url, redis_url
from relayq_supervisor.selftest.worker import Worker


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
