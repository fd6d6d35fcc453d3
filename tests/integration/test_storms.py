"""Storms: thousands of signals to Redis from shell loops (witness/bursts.py), and an audit
log on a full disk (audit/held.py). Bounded loops; no timing assertions (bench/storm.py
measures the latencies)."""
from __future__ import annotations

import json
import subprocess

import redis
from support import PYTHON, redis_config, wait_for

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
        events = [e for e in sup.audit_events("signal") if e["signal"] == "SIGTERM"
                  and e["target"]["pid"] == redis_pid and e["via"] in ("ptrace", "tracefs")]
        seen = status["signal_tap_stats"]["recorded"].get("redis SIGTERM", 0)
        delivered = sum(e.get("count", 1) for e in events if e["via"] == "ptrace")
        coalesced = sum(e.get("coalesced", 0) for e in events)
        kw = status["kernel_witness_stats"]
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
