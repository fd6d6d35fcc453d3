"""Storms: thousands of signals to Redis from shell loops (witness/bursts.py), and an audit
log on a full disk (audit/held.py). Bounded loops; no timing assertions (bench/storm.py
measures the latencies)."""
from __future__ import annotations

import errno
import json
import os
import subprocess

import pytest
import redis
from support import PYTHON, redis_config, wait_for

from relayq_supervisor.audit.review import iter_events

LOOPS = 10
PER_LOOP = 200


def test_a_sigterm_storm_to_redis_is_counted_per_sender_and_supervision_answers(make_supervisor, port, procs):
    sup = make_supervisor(redis_config(None, port)).start()
    st = sup.wait_all_running()
    assert st["supervisor"]["signal_tap"] == "attached"
    redis_pid = sup.program("redis")["pid"]
    loops = []
    for _ in range(LOOPS):
        # kill is the shell's builtin: each loop is one sender, alive for the whole storm
        loops.append(subprocess.Popen(["bash", "-c", f"read _; for i in $(seq {PER_LOOP}); do kill -TERM {redis_pid}; done"],
                                      stdin=subprocess.PIPE))
    procs.extend(loops)
    status = subprocess.Popen([PYTHON, "-m", "relayq_supervisor.ctl", "status", "-c", str(sup.config), "--json"],
                              stdout=subprocess.PIPE, text=True, cwd=sup.dir)
    procs.append(status)
    for p in loops:
        p.stdin.write(b"go\n")
        p.stdin.flush()
    for p in loops:
        assert p.wait(60) == 0
    out, _ = status.communicate(timeout=60)             # asked while the storm ran, answered
    assert status.returncode in (0, 3) and '"signal_tap"' in out

    sent = LOOPS * PER_LOOP
    senders = {p.pid for p in loops}

    def settled():
        status = sup.status()["supervisor"]
        # to any of Redis' threads: a process-directed signal stops whichever thread takes it
        events = [e for e in sup.audit_events("signal") if e["signal"] == "SIGTERM"
                  and e["target"]["program"] == "redis" and e["via"] in ("ptrace", "tracefs")]
        seen = status["signal_tap_stats"]["recorded"].get("redis SIGTERM", 0)
        delivered = sum(e.get("count", 1) for e in events if e["via"] == "ptrace")
        coalesced = sum(e.get("coalesced", 0) for e in events)
        kw = status["kernel_trace_stats"]
        exact = bool(kw) and kw["state"] == "watching" and kw["lost"] == 0
        if exact and delivered + coalesced < sent:
            return None         # the kernel's merges are still being counted (one event per second)
        return (events, seen, coalesced, exact) if seen and delivered == seen else None

    events, seen, coalesced, exact = wait_for(settled, timeout=30, what="the storm's events add up to what the tap saw")
    assert redis.Redis(port=port, socket_timeout=5).ping()          # Redis survived: every one blocked
    assert sup.program("redis")["pid"] == redis_pid
    assert all(e["sender"] is not None and e["sender"]["pid"] in senders for e in events)
    assert all(e["action"] == "blocked" for e in events if e["via"] == "ptrace")
    assert len(events) < sent // 4                                  # folded into bursts
    assert seen + coalesced <= sent
    if exact:
        assert seen + coalesced == sent                              # the kernel accounts for the rest
    human = sup.ctl("audit", "--signal", "SIGTERM")
    assert human.returncode == 0 and "coalesced" in human.stdout and f"pid {loops[0].pid}" in human.stdout
    as_json = [json.loads(line) for line in sup.ctl("audit", "--signal", "SIGTERM", "--json").stdout.splitlines()]
    assert sum(e.get("count", 1) + e.get("coalesced", 0) for e in as_json
               if e["via"] in ("ptrace", "tracefs")) == seen + coalesced


CRASHER = """
[[program]]
name = "crasher"
command = ["sh", "-c", "echo crashing; exit 1"]
ready_after = 5
[program.restart]
backoff_initial = 0.02
backoff_factor = 1
jitter = 0
start_limit_burst = 0
"""


def fill(path, chunk: int = 4096) -> None:
    """Write `path` until the file system refuses."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                if os.write(fd, b"\0" * chunk) < chunk:
                    return
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    return
                raise
    finally:
        os.close(fd)


@pytest.fixture
def small_disk(tmp_path):
    """log/ as a 256 KiB tmpfs (root only), unmounted after."""
    where = tmp_path / "log"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip() or r.returncode}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_one_warning_events_stay_in_order_and_none_is_torn(make_supervisor, port, small_disk):
    sup = make_supervisor(redis_config(None, port, programs=CRASHER)).start()
    sup.wait_state("redis", "RUNNING")
    wait_for(lambda: len(sup.audit_events("spawn")) >= 5, what="the crasher restarting")
    spare = small_disk / "spare"
    spare.write_bytes(b"\0" * 4096)             # freed first: a little space, soon full again
    fill(small_disk / "filler")
    wait_for(lambda: "audit: audit log" in sup.log() and "write failed" in sup.log(), what="the outage noticed")
    def restarts_go_on(more: int) -> None:
        at = sup.program("crasher")["restarts"]
        wait_for(lambda: sup.program("crasher")["restarts"] >= at + more, what=f"{more} more restarts")

    restarts_go_on(3)                           # while the disk is full
    spare.unlink()
    restarts_go_on(2)                           # with a little space back: held events retried
    os.unlink(small_disk / "filler")
    wait_for(lambda: "writing again" in sup.log(), what="the audit log written again")
    assert sup.ctl("stop", "crasher").returncode == 0
    restarts = sup.program("crasher")["restarts"]
    wait_for(lambda: sum(e.get("count", 1) for e in sup.audit_events("spawn")
                         if e["program"] == "crasher") >= restarts + 1, what="every spawn in the log")
    log = sup.log()
    assert log.count("write failed") == 1 and log.count("writing again") == 1, log
    # (its few bytes a run may still fit in the last page tmpfs gave its log file)
    assert log.count("crasher: cannot write its log") <= 1
    assert log.count("crasher: cannot write its log") == log.count("crasher: writing its log again")
    stream = iter_events(small_disk / "audit.jsonl")
    events = list(stream)
    assert stream.torn_lines == 0 and stream.corrupt_lines == 0
    stamps = [e["ts"] for e in events]
    assert stamps == sorted(stamps)
    spawns = sum(e.get("count", 1) for e in events if e["event"] == "spawn" and e["program"] == "crasher")
    dropped = sum(e["dropped"] for e in events if e["event"] == "audit_gap")
    assert spawns == restarts + 1 and dropped == 0
