"""What prompt ACL LOG reading costs: `python -m bench.redis_clients_cost [--quick]` prints a table.

A supervised Redis (health_interval 5 s), with the kernel witness on and off, while this
script opens and closes TCP connections to it at a fixed rate (connect, PING, close: the
connection churn of short-lived clients). For each rate: how many ACL LOG reads Redis
served per second (its own `cmdstat_acl|log` count, so nothing is estimated), the
supervisor's CPU % of one core, the closes the witness saw, and the connections it could
not name (their ESTABLISHED came in a softirq: see witness.tracefs.ClientConnections). Then how long a oneshot
`redis-cli shutdown` waits to be reported (the `redis_denied` event's appearance in the
audit log after the cli's exit), and whether it was named.

Needs root and tracefs for the witness rows (otherwise only "off" is measured). Not a
test: numbers, never assertions. Everything started here is ended by pid.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.processes import stop_supervisor
from bench.witness_cost import cpu_seconds, table, witness_stats
from relayq_supervisor.linux import tracefs as tracefs_files
from relayq_supervisor.witness.trace_instance import in_initial_pid_namespace

REDIS_CLI = "/usr/bin/redis-cli"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ping_once(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"PING\r\n")
        s.recv(64)


def churn(port: int, rate: float, seconds: float) -> int:
    """`rate` connections a second for `seconds`, paced by the clock; returns how many."""
    interval, started, done = 1.0 / rate, time.monotonic(), 0
    while (now := time.monotonic()) - started < seconds:
        due = int((now - started) / interval) + 1
        while done < due:
            ping_once(port)
            done += 1
        time.sleep(min(interval, 0.002))
    return done


def acl_log_calls(port: int) -> int:
    """Redis' own count of ACL LOG calls (the default user may run INFO)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO commandstats\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n") and b"\r\n" in data[data.find(b"\r\n") + 2:] or not data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            header, _, body = data.partition(b"\r\n")
            if header.startswith(b"$") and len(body) >= int(header[1:]):
                break
    for line in data.decode().splitlines():
        if line.startswith("cmdstat_acl|log:") or line.startswith("cmdstat_acl:"):
            # 7.x: cmdstat_acl|log:calls=N,...; 6.x folds every ACL subcommand into cmdstat_acl
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


def audit_denials(workdir: Path) -> list[dict]:
    path = workdir / "log" / "audit.jsonl"
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == "redis_denied"]


def supervisor_run(workdir: Path, witness: bool, rates: list[float], window: float) -> tuple[list, list]:
    port = free_port()
    workdir.mkdir(parents=True)
    (workdir / "config.toml").write_text(textwrap.dedent(f"""\
        [supervisor]
        run_dir = "run"
        log_dir = "log"
        kernel_trace = {"true" if witness else "false"}

        [redis]
        binary = "{shutil.which("redis-server")}"
        port = {port}
        dir = "data"
        args = ["--save", ""]
        """))
    log = open(workdir / "supervisor.log", "wb")
    sup = subprocess.Popen([sys.executable, "-m", "relayq_supervisor", "-c", "config.toml"], cwd=workdir,
                           stdout=log, stderr=subprocess.STDOUT)
    rows, latency = [], []
    try:
        deadline = time.monotonic() + 30
        while True:
            stats = None
            r = subprocess.run([sys.executable, "-m", "relayq_supervisor.ctl", "status", "--json", "-c",
                                str(workdir / "config.toml")], capture_output=True, text=True)
            status = json.loads(r.stdout) if r.returncode == 0 else None
            if status and status["programs"][0]["state"] == "RUNNING":
                break
            if time.monotonic() > deadline or sup.poll() is not None:
                raise RuntimeError(f"supervisor did not come up: {(workdir / 'supervisor.log').read_text()}")
            time.sleep(0.05)
        state = status["supervisor"]["kernel_trace"].split(" (")[0]
        for rate in rates:
            stats0, calls0 = witness_stats(workdir), acl_log_calls(port)
            cpu0, t0 = cpu_seconds(sup.pid), time.monotonic()
            done = churn(port, rate, window) if rate else (time.sleep(window) or 0)
            cpu, took = cpu_seconds(sup.pid) - cpu0, time.monotonic() - t0
            calls = acl_log_calls(port) - calls0
            stats = witness_stats(workdir)
            closes = (stats or {}).get("client_closes", 0) - (stats0 or {}).get("client_closes", 0)
            unnamed = (stats or {}).get("clients_unnamed", 0) - (stats0 or {}).get("clients_unnamed", 0)
            rows.append((state, f"{rate:g}", f"{done / took:.0f}", f"{calls / took:.2f}",
                         f"{100 * cpu / took:.2f} %", str(closes) if stats else "-",
                         str(unnamed) if stats else "-"))
        if os.access(REDIS_CLI, os.X_OK):
            for _ in range(3):
                before = len(audit_denials(workdir))
                subprocess.run([REDIS_CLI, "-p", str(port), "shutdown"], capture_output=True, timeout=30)
                gone = time.monotonic()
                while len(audit_denials(workdir)) == before and time.monotonic() - gone < 15:
                    time.sleep(0.005)
                waited = time.monotonic() - gone
                event = audit_denials(workdir)[-1] if len(audit_denials(workdir)) > before else {}
                sender = event.get("sender") or {}
                latency.append((state, f"{waited * 1000:.0f} ms",
                                f"pid {sender['pid']} {sender.get('comm')} ({sender.get('seen_by')})"
                                if sender else event.get("note", "not reported")))
    finally:
        stop_supervisor(sup)
        log.close()
    return rows, latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_clients_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter windows, fewer rates")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("skipped: no redis-server")
        return 0
    can_trace = os.geteuid() == 0 and in_initial_pid_namespace()
    mounted = None
    if can_trace and tracefs_files.find_mount() is None:
        tracefs_files.mount()
        mounted = tracefs_files.DEFAULT_MOUNT
    rates = [0.0, 10.0, 100.0] if args.quick else [0.0, 10.0, 100.0, 500.0]
    window = 5.0 if args.quick else 10.0
    rows, latency = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="relayq-clients-bench-") as tmp:
            for witness in ((False, True) if can_trace else (False,)):
                r, lat = supervisor_run(Path(tmp) / ("on" if witness else "off"), witness, rates, window)
                rows += r
                latency += lat
    finally:
        if mounted:
            tracefs_files.umount(mounted)
    if not can_trace:
        print("witness rows skipped: needs root in the initial pid namespace")
    print(table(f"ACL LOG reads under connection churn ({window:g} s windows, health_interval 5 s, "
                f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})",
                ("witness", "conns/s asked", "conns/s done", "ACL LOG reads/s", "supervisor CPU",
                 "closes seen", "unnamed"), rows))
    print()
    print(table("a oneshot `redis-cli shutdown`: from its exit to the redis_denied event",
                ("witness", "waited", "named"), latency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
