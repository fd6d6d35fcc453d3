"""8. Shutdown order under systemd: `systemctl kill -s TERM relayq-supervisor` (every process of
the unit signalled at once) over many runs, in a real systemd (PID 1 of a private namespace,
tests/under_systemd/harness.py) with the unit and the production config installed the README's
way. A run is ordered when both workers exited before Redis and Redis was stopped by the
supervisor, not by systemd's own SIGTERM (issue 12, item 5)."""
from __future__ import annotations

import json
import sys
import time

from .contenders import REPO_DIR
from .context import BenchContext
from .report import Samples, Section, Table, Target, ms

# The harness is test code (tests/under_systemd): the same machine the tests use, not a copy.
sys.path.insert(0, str(REPO_DIR / "tests"))
from under_systemd.harness import Refused, SystemdNamespace, host_refusal, poll, prepare_venv  # noqa: E402
from under_systemd.product import CONFIG, TARGET, installed_files  # noqa: E402

NAME = "systemd"
TITLE = "Shutdown order under systemd (systemctl kill -s TERM)"
UNIT = "relayq-supervisor.service"
AUDIT = "/var/log/relayq/audit.jsonl"
RUNS, QUICK_RUNS = 50, 10

METHOD = (
    "Each run: `systemctl start relayq-supervisor` (production config: Redis and 2 workers), then "
    "`systemctl kill -s TERM relayq-supervisor`, which signals the supervisor, Redis and both workers at "
    "once, then wait until the unit is inactive. From the audit log: the order of the `exit` events, how "
    "Redis' run ended, and what became of systemd's SIGTERM to Redis. Stop time = from `systemctl kill` "
    "returning to the unit inactive. The machine is booted once; each run starts from a stopped unit "
    "with an empty audit log.")


def audit_events(m: SystemdNamespace) -> list[dict]:
    path = m.path(AUDIT)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def one_run(m: SystemdNamespace) -> dict:
    m.run("rm", "-f", AUDIT)
    m.systemctl("start", UNIT)
    m.systemctl("kill", "--signal=SIGTERM", UNIT)
    t0 = time.monotonic()
    poll(lambda: m.show(UNIT, "ActiveState")["ActiveState"] in ("inactive", "failed"), 120, "the unit to stop",
         interval=0.01)
    stop_s = time.monotonic() - t0
    events = audit_events(m)
    exits = [e for e in events if e["event"] == "exit"]
    order = [e["program"] for e in exits]
    redis_exit = next((e for e in exits if e["program"] == "redis"), None)
    to_redis = [e for e in events if e["event"] == "signal" and e["target"]["program"] == "redis"
                and (e.get("sender") or {}).get("pid") == 1]
    ordered = bool(order) and order[-1] == "redis" and redis_exit is not None \
        and redis_exit["note"] == "supervisor shutdown" and redis_exit["code"] == 0
    return {"ordered": ordered, "order": order, "stop_s": stop_s,
            "redis_end": redis_exit["note"] if redis_exit else "no exit recorded",
            "systemd_sigterm": sorted({e["action"] for e in to_redis}) or ["not seen"],
            "result": m.show(UNIT, "Result")["Result"], "cgroup_empty": not m.unit_pids(UNIT)}


def run(ctx: BenchContext) -> Section:
    refusal = host_refusal()
    if refusal:
        return Section(NAME, TITLE, METHOD, skipped=refusal)
    runs = QUICK_RUNS if ctx.quick else RUNS
    venv = ctx.dir("systemd", "opt-relayq")
    try:
        prepare_venv(venv, ctx.dir("systemd", "venv-work"))
    except Refused as e:
        return Section(NAME, TITLE, METHOD, skipped=str(e))
    machine = SystemdNamespace(ctx.dir("systemd", "machine"), venv, installed_files(), target=TARGET)
    results = []
    try:
        try:
            machine.boot()
        except Refused as e:
            return Section(NAME, TITLE, METHOD, skipped=str(e))
        for i in range(runs):
            results.append(one_run(machine))
            r = results[-1]
            ctx.say(f"    run {i + 1}/{runs}: {'ordered' if r['ordered'] else 'NOT ORDERED'} "
                    f"{' '.join(r['order'])}; redis: {r['redis_end']}; {r['stop_s'] * 1000:.0f} ms")
    finally:
        machine.close()
    ordered = sum(r["ordered"] for r in results)
    stops = Samples.of(r["stop_s"] for r in results)
    rows = []
    for label, pick in (("both workers exited before Redis", lambda r: r["order"] and r["order"][-1] == "redis"),
                        ("Redis stopped by the supervisor, exit 0", lambda r: r["ordered"]),
                        ("systemd's SIGTERM to Redis blocked", lambda r: r["systemd_sigterm"] == ["blocked"]),
                        ("unit inactive with Result=success", lambda r: r["result"] == "success"),
                        ("unit's cgroup empty afterwards", lambda r: r["cgroup_empty"])):
        rows.append((label, f"{sum(bool(pick(r)) for r in results)} of {len(results)}"))
    rows.append(("stop time (median, min, max)", f"{ms(stops.median)}, {ms(stops.min)}, {ms(stops.max)}"))
    bad = [r for r in results if not r["ordered"]]
    notes = tuple(f"Not ordered: exits {' '.join(r['order'])}; Redis: {r['redis_end']}" for r in bad[:5])
    notes += (f"Config: {CONFIG} as shipped (units/config.production.toml); the unit as shipped "
              "(units/relayq-supervisor.service).",)
    return Section(NAME, TITLE, METHOD,
                   tables=(Table(f"systemctl kill -s TERM, {len(results)} runs", ("measured", "runs"), tuple(rows)),),
                   targets=(Target(f"shutdown ordered in every run ({runs} of {runs})",
                                   f"{ordered} of {len(results)}", ordered == runs == len(results),
                                   "" if ordered == runs else f"{runs - ordered} runs out of order"),),
                   notes=notes)
