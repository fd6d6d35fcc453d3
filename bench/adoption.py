"""7. Adoption after kill -9 of the supervisor: Redis (appendonly yes) and two reference
workers run under relayq-supervisor; the supervisor is killed with SIGKILL and a new one is
started on the same config, round after round. A client thread PINGs Redis every 10 ms and
records the longest gap between PONGs; each round checks that Redis was adopted (same pid),
that exactly one Redis and one set of workers run, and that a key written before the first
kill is still there. At the end the adopted Redis is killed and must be restarted as usual."""
from __future__ import annotations

import json
import os
import select
import signal
import statistics
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relayq_supervisor.linux.procfs import own_children

from .contenders import PYTHON, RedisSetup, RelayqSupervisor, Supervised
from .context import BenchContext
from .processes import BenchError, free_port, is_zombie, load_average, poll_until
from .report import Section, Table, Target

NAME = "adoption"
TITLE = "Adoption after kill -9 of the supervisor (Redis and workers)"
ARGS = ("--appendonly", "yes", "--appendfsync", "everysec")
NUMPROCS = 2
GAP_TARGET_S = 0.300
PING_EVERY_S = 0.010
# Short enough that a stalled Redis shows as a gap, not as one PING that waited for it.
PING_TIMEOUT_S = 0.25
KEY, VALUE = "adoption:kept", "written before the first kill"


class Pinger(threading.Thread):
    """PING every 10 ms, never retried (a retry would hide a failure inside one slow call);
    the longest time between two PONGs since the last take()."""

    def __init__(self, port: int):
        super().__init__(daemon=True, name="pinger")
        self.port = port
        self.lock = threading.Lock()
        self.last_ok = time.monotonic()
        self.worst = 0.0
        self.pongs = 0
        self.failures = 0
        self.failures_taken = 0
        self.done = threading.Event()

    def run(self) -> None:
        db = redis.Redis(port=self.port, socket_timeout=PING_TIMEOUT_S, socket_connect_timeout=PING_TIMEOUT_S,
                         retry=Retry(NoBackoff(), 0))
        try:
            while not self.done.is_set():
                try:
                    ok = db.ping()
                except (redis.RedisError, OSError):
                    ok = False
                now = time.monotonic()
                with self.lock:
                    if ok:
                        self.worst = max(self.worst, now - self.last_ok)
                        self.last_ok = now
                        self.pongs += 1
                    else:
                        self.failures += 1
                self.done.wait(PING_EVERY_S)
        finally:
            db.close()

    def take(self) -> tuple[float, int]:
        """The longest gap since the previous take(), counting one still open now, and the failed
        PINGs since then; then start afresh."""
        with self.lock:
            worst = max(self.worst, time.monotonic() - self.last_ok)
            failed = self.failures - self.failures_taken
            self.worst, self.failures_taken = 0.0, self.failures
            return worst, failed


def reap_orphans(managed: set[int]) -> None:
    """The bench is a child subreaper: a dead supervisor's Redis and workers are re-parented
    to it, so the workers its successor stops end as our zombies. Reap them (only zombies:
    a reaped zombie's pid could otherwise be reused and confuse the scans below)."""
    for pid in own_children():
        if pid not in managed and is_zombie(pid):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def live_workers(cwd: Path) -> set[int]:
    """Every running reference worker of this config (its `directory` is this section's own)."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        cmd = proc.info["cmdline"] or []
        if ("relayq_supervisor.selftest" in cmd and "worker" in cmd and proc.info["cwd"] == str(cwd)
                and proc.info["status"] != psutil.STATUS_ZOMBIE):
            found.add(proc.info["pid"])
    return found


def live_redis_on(port: int) -> set[int]:
    """Every live redis-server that listens on the port or names it in its process title
    (Redis sets it to `redis-server 127.0.0.1:PORT`): a second one, adopted or not, shows."""
    found = {c.pid for c in psutil.net_connections("tcp")
             if c.pid and c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN}
    for proc in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        if (proc.info["name"] or "").startswith("redis-server") and proc.info["status"] != psutil.STATUS_ZOMBIE \
                and f":{port}" in " ".join(proc.info["cmdline"] or []):
            found.add(proc.info["pid"])
    return {pid for pid in found if psutil.pid_exists(pid) and not is_zombie(pid)}


def all_running(sup: RelayqSupervisor) -> dict | None:
    """The status (what `relayqctl status --json` prints) once every program is RUNNING."""
    sup.ensure_running()
    try:
        st = sup.status(timeout=2.0)
    except Exception:       # not listening yet (starting), or busy: poll again
        return None
    return st if all(p["state"] == "RUNNING" and p["pid"] for p in st["programs"]) else None


def audit_since(path: Path, offset: int) -> tuple[list[dict], int]:
    """Audit events appended after `offset` bytes; from the start if the log rotated meanwhile."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(offset if size >= offset else 0)
            data = f.read()
    except OSError:
        return [], offset
    events = [json.loads(line) for line in data.decode(errors="replace").splitlines() if line.strip()]
    return events, (offset if size >= offset else 0) + len(data)


def event_time(event: dict) -> float:
    """An audit event's `ts` (UTC, ms) as epoch seconds."""
    return datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


def sigkill_and_wait(pid: int, timeout: float = 10.0) -> None:
    """SIGKILL through a pidfd (no recycled-pid accident) and wait for the exit."""
    fd = os.pidfd_open(pid)
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        if not select.select([fd], [], [], timeout)[0]:
            raise BenchError(f"pid {pid} still alive {timeout:g}s after SIGKILL")
    finally:
        os.close(fd)


class Round:
    def __init__(self, n: int):
        self.n = n
        self.gap = 0.0
        self.failed_pings = 0
        self.to_running = 0.0
        self.to_adopted: float | None = None       # kill -9 to the `adopted` event
        self.to_stopped: float | None = None       # kill -9 to the last `orphan_stopped` event
        self.adopted = False
        self.one_set = False
        self.orphans_stopped = False
        self.key_ok = False
        self.problems: list[str] = []

    @property
    def ok(self) -> bool:
        return self.adopted and self.one_set and self.orphans_stopped and self.key_ok


def run(ctx: BenchContext) -> Section:
    binary = "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else ctx.redis_binary
    if not binary:
        return Section(NAME, TITLE, "", skipped="no redis-server found")
    rounds_wanted = 5 if ctx.quick else 30
    port = free_port()
    home = ctx.dir(NAME)
    worker = Supervised("worker", (PYTHON, "-m", "relayq_supervisor.selftest", "worker"), numprocs=NUMPROCS)
    sup = RelayqSupervisor(home, redis=RedisSetup(binary, port, ARGS),
                           restart={"stable_after": 0.5, "backoff_initial": 0.05, "backoff_max": 1.0},
                           program_extra={"depends_on": ["redis"], "stop_timeout": 5, "directory": str(home)})
    audit_path = home / "log" / "audit.jsonl"
    load_before = load_average()
    pinger = Pinger(port)
    rounds: list[Round] = []
    problem = ""
    baseline = 0.0
    final_failures = 0
    final = {"restarted": False, "key": False, "text": "not reached"}
    launcher = ctx.launcher

    def managed() -> set[int]:
        return {p.pid for p in launcher.running}

    try:
        sup.launch(launcher, [worker])
        st = poll_until(lambda: all_running(sup), 60, "the first supervisor: all RUNNING", 0.05)
        redis_pid = next(p["pid"] for p in st["programs"] if p["name"] == "redis")
        db = redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
        try:
            db.set(KEY, VALUE)
        finally:
            db.close()
        pinger.start()
        poll_until(lambda: pinger.pongs > 10, 10, "the pinger's first PONGs", 0.01)
        # for comparison: the longest gap with nothing happening, over about one round's length
        pinger.take()
        time.sleep(3.0)
        baseline, _ = pinger.take()
        _, offset = audit_since(audit_path, 0)
        for n in range(1, rounds_wanted + 1):
            r = Round(n)
            rounds.append(r)
            old_workers = {p["pid"] for p in st["programs"] if p["name"].startswith("worker")}
            pinger.take()           # the gap of this round starts here
            began, began_wall = time.monotonic(), time.time()
            old = sup.proc
            sigkill_and_wait(old.pid)
            old.wait(10)            # our child: reap it before its successor starts
            launcher.forget(old)
            sup.launch(launcher, [worker])
            st = poll_until(lambda: all_running(sup), 60, f"round {n}: all RUNNING", 0.02)
            r.to_running = time.monotonic() - began
            r.gap, r.failed_pings = pinger.take()

            now_redis = next(p for p in st["programs"] if p["name"] == "redis")
            events, offset = audit_since(audit_path, offset)
            adopted = [e for e in events if e["event"] == "adopted" and e.get("pid") == redis_pid]
            r.adopted = now_redis["pid"] == redis_pid and len(adopted) == 1
            if not r.adopted:
                r.problems.append(f"Redis pid {redis_pid} -> {now_redis['pid']}, {len(adopted)} `adopted` events")
            stopped = {e.get("pid") for e in events if e["event"] == "orphan_stopped"}
            if adopted:
                r.to_adopted = event_time(adopted[0]) - began_wall
            if stopped:
                r.to_stopped = max(event_time(e) for e in events if e["event"] == "orphan_stopped") - began_wall
            new_workers = {p["pid"] for p in st["programs"] if p["name"].startswith("worker")}
            r.orphans_stopped = stopped == old_workers and not (new_workers & old_workers)
            if not r.orphans_stopped:
                r.problems.append(f"predecessor's workers {sorted(old_workers)}, orphan_stopped {sorted(stopped)}")
            reap_orphans(managed())
            workers = live_workers(home)
            redises = live_redis_on(port)
            r.one_set = workers == new_workers and len(new_workers) == NUMPROCS and redises == {redis_pid}
            if not r.one_set:
                r.problems.append(f"live workers {sorted(workers)} (status: {sorted(new_workers)}), "
                                  f"redis-server on the port {sorted(redises)}")
            db = redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
            try:
                r.key_ok = db.get(KEY) == VALUE.encode()
            finally:
                db.close()
            ctx.say(f"adoption: round {n}: gap {r.gap * 1e3:.1f} ms, all RUNNING after {r.to_running:.2f} s"
                    + (f"; {'; '.join(r.problems)}" if r.problems else ""))
            redis_pid = now_redis["pid"]        # follow a replaced Redis so one miss is not counted twice

        # the adopted Redis is supervised like one the supervisor started: kill it
        sigkill_and_wait(redis_pid)
        back = poll_until(lambda: (s := all_running(sup)) and next(
            p for p in s["programs"] if p["name"] == "redis")["pid"] != redis_pid and s, 60,
            "the adopted Redis restarted after kill -9", 0.02)
        new_pid = next(p["pid"] for p in back["programs"] if p["name"] == "redis")
        final_gap, final_failures = pinger.take()
        db = redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
        try:
            final["key"] = db.get(KEY) == VALUE.encode()
        finally:
            db.close()
        final["restarted"] = True
        final["text"] = (f"pid {redis_pid} killed, pid {new_pid} RUNNING, key " +
                         ("intact" if final["key"] else "MISSING") +
                         f" (Redis down {final_gap * 1e3:.0f} ms, {final_failures} failed PINGs: expected)")
    except BenchError as e:
        problem = str(e)
    finally:
        pinger.done.set()
        if pinger.is_alive():
            pinger.join(5)
        if sup.proc is not None:
            sup.stop(launcher, timeout=60)      # ordered: workers, then Redis with SHUTDOWN SAVE
        reap_orphans(managed())
    return section(ctx, rounds, rounds_wanted, final, problem, load_before, pinger, baseline)


def section(ctx: BenchContext, rounds: list[Round], wanted: int, final: dict, problem: str, load_before: str,
            pinger: Pinger, baseline: float) -> Section:
    done = [r for r in rounds if r.to_running]
    gaps = [r.gap for r in done]
    worst = max(gaps) if gaps else 0.0
    over = [r for r in done if r.gap > GAP_TARGET_S]
    adopted = sum(r.adopted for r in done)
    one_set = sum(r.one_set for r in done)
    orphans = sum(r.orphans_stopped for r in done)
    key_ok = sum(r.key_ok for r in done)
    ms = lambda s: f"{s * 1e3:.1f}"     # noqa: E731
    table = Table(f"{wanted} kill -9 of relayq-supervisor, Redis `{' '.join(ARGS)}` and {NUMPROCS} reference workers",
                  ("rounds", "Redis adopted (same pid, audit `adopted`)", "max PING gap (ms)", "median gap (ms)",
                   "rounds ending with 1 Redis and 2 workers", "predecessor's workers stopped (`orphan_stopped`)",
                   "key readable", "kill -9 to all RUNNING (median / max)", "final kill -9 of the adopted Redis"),
                  ((str(len(done)), str(adopted), ms(worst) if gaps else "-",
                    ms(statistics.median(gaps)) if gaps else "-", str(one_set), str(orphans), str(key_ok),
                    f"{statistics.median(r.to_running for r in done):.2f} s / {max(r.to_running for r in done):.2f} s"
                    if done else "-", final["text"]),))
    def median_of(values: list[float | None]) -> str:
        have = [v for v in values if v is not None]
        return f"{statistics.median(have):.2f} s" if have else "-"
    phases = Table("where a round's time goes (from the kill; audit event times)",
                   ("longest PING gap over 3 s with no kill (baseline)", "kill -9 to `adopted` (median)",
                    "kill -9 to the last `orphan_stopped` (median)", "kill -9 to all RUNNING (median)"),
                   ((ms(baseline) + " ms" if baseline else "-", median_of([r.to_adopted for r in done]),
                     median_of([r.to_stopped for r in done]), median_of([r.to_running for r in done])),))
    per_round = Table("per round: longest gap between PONGs (ms)", ("rounds", "gaps"),
                      tuple((f"{i + 1}-{min(i + 10, len(done))}", ", ".join(ms(r.gap) for r in done[i:i + 10]))
                            for i in range(0, len(done), 10)))
    measured = len(done) == wanted
    targets = (
        Target(f"no PING gap over {GAP_TARGET_S * 1e3:.0f} ms across {wanted} kill -9 of the supervisor",
               f"max {ms(worst)} ms, {len(over)} rounds over" if gaps else "-",
               None if not gaps else (not over and measured), problem if problem else
               (f"rounds {', '.join(str(r.n) for r in over)} (see below)" if over else "")),
        Target(f"Redis adopted in every round ({wanted})", f"{adopted} of {len(done)}",
               None if not done else adopted == wanted, problem),
        Target(f"every round ends with exactly one Redis and {NUMPROCS} workers, the predecessor's stopped",
               f"{min(one_set, orphans)} of {len(done)}", None if not done else min(one_set, orphans) == wanted,
               problem),
        Target("key written before the first kill readable after every round and after the final restart",
               f"{key_ok} of {len(done)} rounds; final: {'yes' if final['key'] else 'no'}",
               None if not done else key_ok == wanted and bool(final["key"]), problem),
        Target("a later kill -9 of the adopted Redis is restarted as usual", final["text"],
               None if problem and not final["restarted"] else bool(final["restarted"]), problem),
    )
    notes = [f"Stopped early: {problem}"] if problem else []
    notes += [f"Round {r.n}: {'; '.join(r.problems)}" for r in done if r.problems]
    notes.append(f"The pinger got {pinger.pongs} PONGs in all; failed PINGs (timeout {PING_TIMEOUT_S * 1e3:.0f} ms, "
                 f"no retry): {sum(r.failed_pings for r in done)} during the {len(done)} rounds, the others while "
                 "the adopted Redis was down after the final kill -9.")
    notes.append(f"Load average (1/5/15 min) at the section's start {load_before}, at its end {load_average()} "
                 "on 2 cores shared with other test runs: the gaps include the machine's scheduling delays.")
    return Section(NAME, TITLE, METHOD, (table, phases, per_round), targets, tuple(notes))


METHOD = (
    f"One relayq-supervisor with Debian's redis-server (`[redis] args = {list(ARGS)}`) and the reference worker "
    f"(`python -m relayq_supervisor.selftest worker` with the bench's interpreter, numprocs {NUMPROCS}, "
    "`depends_on = [\"redis\"]`). A key is written, then a client thread PINGs Redis every 10 ms "
    f"(redis-py, socket timeout {PING_TIMEOUT_S * 1e3:.0f} ms, `retry=Retry(NoBackoff(), 0)`: a failed PING is "
    "a failure, not a hidden second try) and keeps the longest time between two PONGs. Each round sends SIGKILL "
    "to the supervisor through a pidfd, starts a new one on the same config, and polls the control socket's "
    "`status` (what `relayqctl status --json` prints) every 20 ms until every program is RUNNING. It then "
    "checks: Redis' pid is unchanged and the audit log has one `adopted` event for it; the audit log has an "
    "`orphan_stopped` event for each of the predecessor's workers and none of them is in the new status; a "
    "process scan finds exactly the status' workers alive (reference workers whose cwd is this section's "
    "directory, zombies excluded) and exactly one live redis-server on the port (its listener or its process "
    "title); the key reads back. The bench is a child subreaper, so the dead supervisor's Redis and workers "
    "become its children: it reaps the stopped workers' zombies (by pid) before the scan. The round's gap runs "
    "from the kill to all RUNNING. At the end the adopted Redis is killed with SIGKILL, and the supervisor must "
    "restart it (a new pid RUNNING) with the key intact.\n\n"
    "What the numbers say: Redis never stops serving; the longest gap of a round is the 10 ms period plus the "
    "machine's scheduling delay, the same as the baseline measured with no kill. The new supervisor's start-up "
    "(Python imports, locks, control socket) before `adopted`, the ptrace seizure of Redis' threads (PTRACE_SEIZE "
    "does not stop them) and the worker replacement do not reach Redis' clients. The time to all RUNNING is "
    "start-up, then the predecessor's workers' exit after SIGTERM (the reference worker finishes its BLPOP "
    "first), then the new workers' start. Found by this benchmark and fixed in node.py: the predecessor's "
    "workers were stopped one after the other, so each waited for the previous one's exit (kill -9 to all "
    "RUNNING was about 4.6 s, now about 2.7 s; with N slow workers a start could wait N x stop_timeout); and "
    "in kinds/redis: the executable in the data-dir record was read at STARTING, before the exec, so `adopted` "
    "claimed the supervisor's Python as Redis' executable (now the configured binary, resolved, and compared "
    "with /proc/PID/exe on adoption)."
)
