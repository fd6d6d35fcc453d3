"""6. Durability under kill -9: a client INCRs one counter as fast as Redis answers and records
every acknowledged value; Redis (appendfsync always) is killed with SIGKILL again and again
under relayq-supervisor. After each restart, and at the end, the counter must be at least the
highest value ever acknowledged: an acknowledged write that is missing was lost."""
from __future__ import annotations

import os
import select
import signal
import threading
import time

import redis

from .contenders import RedisSetup, RelayqSupervisor
from .context import BenchContext
from .processes import BenchError, free_port, poll_until
from .report import Section, Table, Target

NAME = "durability"
TITLE = "Acknowledged writes across kill -9 of Redis (appendfsync always)"
ARGS = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")
# No start limit (Redis' default now) and a short stable run, so 100 kills in a row restart quickly.
RESTART = {"stable_after": 0.3, "start_limit_burst": 0, "backoff_initial": 0.05, "backoff_max": 1.0}


class Incrementer(threading.Thread):
    """INCR in a loop; `acked` is the highest value Redis has answered with."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port = port
        self.acked = 0
        self.attempts = 0
        self.errors = 0
        self.done = threading.Event()

    def run(self) -> None:
        db = redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1, retry=None)
        while not self.done.is_set():
            self.attempts += 1
            try:
                self.acked = max(self.acked, int(db.incr("counter")))
            except (redis.RedisError, OSError):
                self.errors += 1        # sent maybe, not acknowledged: it may or may not count
                time.sleep(0.002)
        db.close()


def counter(port: int) -> int:
    """The counter as Redis has it now (after a restart: as it loaded it from its AOF)."""
    db = redis.Redis(port=port, socket_timeout=2, retry=None)
    try:
        return poll_until(lambda: _get(db), 30, f"GET counter on port {port}", 0.01)[0]
    finally:
        db.close()


def _get(db: redis.Redis) -> tuple[int] | None:
    try:
        return (int(db.get("counter") or 0),)
    except (redis.RedisError, OSError):
        return None


def redis_running(sup: RelayqSupervisor) -> dict | None:
    sup.ensure_running()
    try:
        st = next(p for p in sup.status()["programs"] if p["name"] == "redis")
    except Exception:       # mid-restart: poll again
        return None
    return st if st["state"] == "RUNNING" and st["pid"] else None


def one_build(ctx: BenchContext, label: str, binary: str, kills: int) -> tuple[tuple[str, ...], int, str]:
    port = free_port()
    sup = RelayqSupervisor(ctx.dir(NAME, label), redis=RedisSetup(binary, port, ARGS), restart=RESTART)
    sup.launch(ctx.launcher, [])
    client = Incrementer(port)
    lost_rounds, worst, problem = 0, 0, ""
    began = time.monotonic()
    done = 0
    try:
        poll_until(lambda: redis_running(sup), 30, f"{label}: Redis RUNNING", 0.02)
        client.start()
        for _ in range(kills):
            floor = client.acked
            st = poll_until(lambda floor=floor: (s := redis_running(sup)) and (s["uptime_s"] or 0) >= 0.4
                            and client.acked >= floor + 20 and s, 60, f"{label}: Redis RUNNING and acknowledging")
            pidfd = os.pidfd_open(st["pid"])
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                acked_at_kill = client.acked            # read after the kill: nothing later was answered
                select.select([pidfd], [], [], 10)
            finally:
                os.close(pidfd)
            poll_until(lambda: redis_running(sup), 60, f"{label}: Redis back")
            have = counter(port)
            if have < acked_at_kill:
                lost_rounds += 1
                worst = max(worst, acked_at_kill - have)
            done += 1
    except BenchError as e:
        problem = str(e)
    finally:
        client.done.set()
        client.join(10)
    final = counter(port) if not problem else -1
    seconds = time.monotonic() - began
    sup.stop(ctx.launcher, timeout=60)
    lost = max(0, client.acked - final) if final >= 0 else -1
    row = (label, binary, str(done), str(client.acked), str(final), str(lost), str(lost_rounds), str(worst),
           f"{client.acked / seconds:.0f}/s")
    return row, (lost + lost_rounds if lost >= 0 else -1), problem


def run(ctx: BenchContext) -> Section:
    from relayq_supervisor.config import embedded_redis_tool
    builds = [(label, b) for label, b in (("embedded", embedded_redis_tool("redis-server")),
                                          ("system", "/usr/bin/redis-server" if os.access("/usr/bin/redis-server",
                                                                                          os.X_OK) else None)) if b]
    if not builds:
        return Section(NAME, TITLE, "", skipped="no redis-server found")
    kills = 10 if ctx.quick else 100
    rows, targets, notes = [], [], []
    for label, binary in builds:
        ctx.say(f"durability: {kills} kill -9 of {label} Redis ({binary})")
        row, lost, problem = one_build(ctx, label, binary, kills)
        rows.append(row)
        if problem:
            notes.append(f"{label}: stopped early: {problem}")
        targets.append(Target(f"{label} Redis: 0 acknowledged writes lost over {kills} kill -9",
                              f"{row[5]} lost at the end, {row[6]} rounds with a loss", None if lost < 0 else lost == 0,
                              problem))
    table = Table(f"{kills} kill -9 of Redis under relayq-supervisor, appendfsync always",
                  ("build", "redis-server", "kills", "INCRs acknowledged", "counter at the end", "acknowledged lost",
                   "rounds with a loss", "worst round loss", "acknowledged rate"), tuple(rows))
    method = (f"Redis with `[redis] args = {list(ARGS)}` (the supervisor writes them to its redis.conf and checks "
              f"them with CONFIG GET) and `[redis.restart] {RESTART}`. One client thread INCRs a counter in a loop "
              "and keeps the highest value Redis answered. Each round waits until Redis is RUNNING, has run 0.4 s and "
              "acknowledged 20 more INCRs, sends SIGKILL through a pidfd, notes the highest acknowledged value, "
              "waits for the process to be gone and for the supervisor's restart, then GETs the counter: a value "
              "below the acknowledged one is a lost write. INCRs whose answer the kill cut off may or may not count "
              "(the counter may exceed the acknowledged value by up to one per kill).")
    return Section(NAME, TITLE, method, (table,), tuple(targets), tuple(notes))
