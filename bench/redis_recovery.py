"""2. Redis recovery: kill -9 the supervised Redis and time until PING answers again,
next to a cold `redis-server` start to first PONG measured by the same loop. The two
alternate round by round."""
from __future__ import annotations

import os
import select
import signal
import socket
import time

from .contenders import RedisSetup, RelayqSupervisor
from .context import BenchContext
from .processes import BenchError, free_port, poll_until
from .records import MIN_RUN_S
from .report import Samples, Section, Table, Target, ms, ratio

NAME = "redis"
TITLE = "Redis recovery (kill -9 to PONG)"


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def wait_pong(port: int, timeout: float) -> float:
    """time.monotonic() of the first PONG; a fast loop (0.5 ms between refused attempts)."""
    deadline = time.monotonic() + timeout
    while True:
        if ping(port):
            return time.monotonic()
        if time.monotonic() > deadline:
            raise BenchError(f"no PONG on port {port} within {timeout:g}s")
        time.sleep(0.0005)


def redis_status(sup: RelayqSupervisor) -> dict | None:
    sup.ensure_running()
    try:
        return next((p for p in sup.status()["programs"] if p["name"] == "redis"), None)
    except Exception:       # not listening yet, or mid-restart: poll again
        return None


def kill_supervised(sup: RelayqSupervisor, port: int) -> float:
    st = poll_until(lambda: (s := redis_status(sup)) and s["state"] == "RUNNING" and s["pid"]
                    and (s["uptime_s"] or 0) >= MIN_RUN_S and s, 30, "supervised Redis RUNNING", 0.02)
    pidfd = os.pidfd_open(st["pid"])
    try:
        before = time.monotonic()
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        # Never count a PONG from the dying server: wait until it has exited.
        select.select([pidfd], [], [], 10)
    finally:
        os.close(pidfd)
    return wait_pong(port, 30) - before


def cold_start(ctx: BenchContext, argv: list[str], port: int, n: int) -> float:
    before = time.monotonic()
    proc = ctx.launcher.start(argv, f"redis-cold-{n}", cwd=ctx.dir(NAME, "cold"))
    try:
        return wait_pong(port, 30) - before
    finally:
        ctx.launcher.stop(proc, timeout=10, signo=signal.SIGKILL)


def run(ctx: BenchContext) -> Section:
    if not ctx.redis_binary:
        return Section(NAME, TITLE, "", skipped="no redis-server found")
    rounds = 4 if ctx.quick else 15
    taps = (True, False) if ctx.tap.config_key else (None,)
    supervised = []
    for tap in taps:
        port = free_port()
        sup = RelayqSupervisor(ctx.dir(NAME, {True: "relayq-tap", False: "relayq-notap", None: "relayq"}[tap]),
                               signal_tap=tap, redis=RedisSetup(ctx.redis_binary, port))
        sup.launch(ctx.launcher, [])
        supervised.append((sup, port))
    cold_port = free_port()
    cold_dir = ctx.dir(NAME, "cold")
    cold_argv = [ctx.redis_binary, *RedisSetup(ctx.redis_binary, cold_port).args, "--daemonize", "no",
                 "--port", str(cold_port), "--bind", "127.0.0.1", "--dir", str(cold_dir)]
    samples: dict[str, list[float]] = {sup.label: [] for sup, _ in supervised}
    cold: list[float] = []
    problem = ""
    steps = [*supervised, (None, cold_port)]
    try:
        for sup, _port in supervised:
            poll_until(lambda sup=sup: (st := redis_status(sup)) and st["state"] == "RUNNING", 30,
                       f"{sup.label}: Redis RUNNING", 0.02)
        ctx.say(f"redis recovery: {rounds} rounds x {len(steps)}")
        for r in range(rounds):
            for sup, port in steps[r % len(steps):] + steps[:r % len(steps)]:
                if sup is None:
                    cold.append(cold_start(ctx, cold_argv, cold_port, r))
                else:
                    samples[sup.label].append(kill_supervised(sup, port))
    except BenchError as e:
        outputs = "; ".join(f"{sup.label}: {ctx.launcher.output_of(sup.log_name, 300) or '(none)'}"
                            for sup, _ in supervised)
        problem = f"{e}; supervisor output: {outputs}"
    finally:
        for sup, _ in supervised:
            sup.stop(ctx.launcher, timeout=60)
    return summarize(ctx, rounds, supervised, samples, cold, problem)


def summarize(ctx, rounds, supervised, samples, cold, problem) -> Section:
    c = Samples.of(cold) if cold else None
    rows, targets = [], []
    for sup, _ in supervised:
        got = samples[sup.label]
        if not got:
            rows.append((f"{sup.label}: kill -9 to PONG", "-", "-", "-", "0", "-"))
            continue
        s = Samples.of(got)
        rows.append((f"{sup.label}: kill -9 to PONG", ms(s.median), ms(s.min), ms(s.max), str(s.n),
                     ratio(s.median, c.median) if c else "-"))
        what = f"{sup.label}: Redis back to PONG within 2x of its cold start"
        if c is None:
            targets.append(Target(what, ms(s.median), None, problem or "no cold start measured"))
            continue
        r = s.median / c.median
        why = "" if r <= 2.0 else f"{ms(s.median - c.median)} more than a cold start (see below)"
        targets.append(Target(what, f"{r:.2f}x ({ms(s.median)} vs {ms(c.median)})", r <= 2.0, why))
    if c:
        rows.append(("cold `redis-server` start to PONG", ms(c.median), ms(c.min), ms(c.max), str(c.n), "1.00x"))
    if not supervised or not any(samples.values()):
        targets.append(Target("Redis back to PONG within 2x of its cold start", "-", None, problem or "no samples"))
    table = Table(f"Redis back to PONG, {rounds} rounds, alternating",
                  ("what", "median", "min", "max", "n", "median / cold"), tuple(rows))
    method = (f"Redis is `{ctx.redis_binary}` with `--save \"\" --appendonly no` (nothing to load), under "
              "relayq-supervisor with `[redis.restart] stable_after = 0.5`"
              + (", once with the signal tap and once without, side by side" if len(supervised) > 1 else "") +
              f". Each round waits until Redis has been RUNNING for {MIN_RUN_S} s, sends SIGKILL through a pidfd, "
              "waits for that process to be gone, then connects and sends PING in a loop (0.5 ms between refused "
              "attempts) until `+PONG`. The cold start is `redis-server` with the same arguments on another port, "
              "timed from just before the spawn by the same loop. The order rotates each round.")
    notes = [f"Stopped early: {problem}"] if problem else []
    if any(t.met is False for t in targets):
        notes.append(RESTART_PATH)
    return Section(NAME, TITLE, method, (table,), tuple(targets), tuple(notes))


RESTART_PATH = (
    "Where the time goes: after reaping, the loop logs and test-binds the port, then posix_spawns the exec "
    "gate (a small dash script the tap seizes before it execs Redis). With the tap, Redis then waits at each "
    "start-up thread's clone stop until the loop answers (compare the tap-on and tap-off rows).")
