"""Issue 13 against a real supervisor: relayqctl with a broken config on disk, the
control socket's connection cap, log lines that another process cannot forge, and the
config checks that run a process (the Redis binary's --version)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap

import pytest
from support import PYTHON, REDIS_SERVER, wait_for

from relayq_supervisor.config.load import load_config
from relayq_supervisor.control.server import MAX_CONNECTIONS
from relayq_supervisor.errors import ConfigError

SLEEPER = textwrap.dedent(f"""\
    [supervisor]
    run_dir = "run"
    log_dir = "log"
    control_socket = "sock/ctl.sock"

    [[program]]
    name = "sleeper"
    command = ["{PYTHON}", "-c", "import time; time.sleep(600)"]
    ready_after = 0.2
    """)


def test_status_reaches_the_supervisor_when_the_config_on_disk_is_broken(make_supervisor):
    sup = make_supervisor(SLEEPER)
    (sup.dir / "sock").mkdir()
    sup.start()
    sup.wait_state("sleeper", "RUNNING")
    record = json.loads((sup.dir / "run" / "supervisor.lock").read_text())
    assert record["control_socket"] == str(sup.dir / "sock" / "ctl.sock")

    # a syntax error below [supervisor]: its table is still read
    sup.config.write_text(SLEEPER + "\n[[program]\nname = \n")
    r = sup.ctl("status")
    assert r.returncode == 0, r.stderr
    assert "sleeper" in r.stdout and "RUNNING" in r.stdout
    assert "warning:" in r.stderr and "invalid TOML" in r.stderr

    # the socket's own line broken: the lock record names the socket
    sup.config.write_text(SLEEPER.replace('control_socket = "sock/ctl.sock"', 'control_socket = "sock/ctl.s'))
    r = sup.ctl("status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["supervisor"]["pid"] == sup.pid

    # not UTF-8 at all: the same
    sup.config.write_bytes(SLEEPER.encode().replace(b"sleeper", b"sl\xffeeper", 1))
    r = sup.ctl("pid")
    assert r.returncode == 0 and r.stdout.strip() == str(sup.pid), r.stderr
    assert "not UTF-8 text" in r.stderr

    # a reload of the broken file is refused with its PATH:LINE, and nothing changes
    r = sup.ctl("reload")
    assert r.returncode == 2 and f"{sup.config}:7: not UTF-8 text" in r.stderr
    assert sup.program("sleeper")["state"] == "RUNNING"


def raw_reply(path, payload: bytes | None) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(path))
        if payload is not None:
            s.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


def test_control_connections_are_capped_and_answered(make_supervisor):
    sup = make_supervisor(SLEEPER)
    (sup.dir / "sock").mkdir()
    sup.start()
    sup.wait_state("sleeper", "RUNNING")
    path = sup.dir / "sock" / "ctl.sock"
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(path))
            idle.append(s)
        # once the server has accepted them all, one more is refused with a reply, not left hanging
        reply = wait_for(lambda: (r := raw_reply(path, b'{"v": 1, "cmd": "pid"}\n')) and not r["ok"] and r,
                         10, what="a connection over the cap to be refused")
        assert reply["error"] == f"too many control connections ({MAX_CONNECTIONS} open): try again shortly"
    finally:
        for s in idle:
            s.close()
    # the slots come back as soon as the idle clients are gone
    wait_for(lambda: raw_reply(path, b'{"v": 1, "cmd": "pid"}\n')["ok"], 10, what="the cap to free up")
    assert sup.log().count("refusing more until some close") == 1
    # and a deeply nested request gets a clear refusal, not an internal error
    reply = raw_reply(path, b'{"v": 1, "cmd": "status", "args": ' + b"[" * 20_000 + b"]" * 20_000 + b"}\n")
    assert reply == {"v": 1, "ok": False, "error": "malformed request: nested deeper than 8 levels", "code": 2}


FORGED = "x\n<2>FORGED: data lost, run FLUSHALL\x1b[2K"


def test_a_senders_argv_cannot_forge_a_log_line(make_supervisor, procs):
    # on systemd's journal stream (JOURNAL_STREAM names its stderr) with log_target = "stderr":
    # the supervisor writes `<N>` priority prefixes on stderr, as under systemd
    sup = make_supervisor(SLEEPER.replace("[supervisor]\n", '[supervisor]\nlog_target = "stderr"\n')
                          + "protect = true\n")
    (sup.dir / "sock").mkdir()
    sup.log_path.touch()
    st = sup.log_path.stat()
    sup.start(env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    target = sup.wait_state("sleeper", "RUNNING")["pid"]
    script = sup.dir / "s.py"       # short: the sender's description is cut at 80 characters
    script.write_text("import os, sys, time\nos.kill(int(sys.argv[2]), 15)\ntime.sleep(30)\n")
    sender = subprocess.Popen([PYTHON, "s.py", FORGED, str(target)], cwd=sup.dir)
    procs.append(sender)
    wait_for(lambda: "blocked SIGTERM" in sup.log(), 20, what="the guard's warning")
    lines = sup.log().splitlines()
    forged = [line for line in lines if "FORGED" in line]
    assert len(forged) == 1, forged
    assert forged[0].startswith("<4>") and f"pid {sender.pid}" in forged[0]
    assert "x\\n<2>FORGED: data lost, run FLUSHALL\\x1b[2K" in forged[0]
    assert all(line.startswith("<") for line in lines), lines

    # the audit timeline: one escaped line; its JSON keeps the argv exact
    text = sup.ctl("audit", "--signal", "SIGTERM").stdout
    timeline = [line for line in text.splitlines() if "FORGED" in line]
    assert len(timeline) == 1 and "BLOCKED" in timeline[0] and "x\\n<2>FORGED" in timeline[0], text
    events = [json.loads(line) for line in sup.ctl("audit", "--json", "--signal", "SIGTERM").stdout.splitlines()]
    assert any(FORGED in (e.get("sender") or {}).get("cmdline", []) for e in events)

    # relayqctl why / status: the same, escaped
    sender.kill()
    why = sup.ctl("why", "sleeper").stdout
    assert "\x1b" not in why and "\n<2>" not in why


# --- config: the Redis binary must be a Redis server (load_config runs its --version) -------------

def refused_on_disk(tmp_path, text: str) -> str:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    return str(e.value).replace(str(tmp_path), "TMP")


@pytest.mark.parametrize("script, said", [
    ("exit 0", "printed nothing"),
    ("echo 'true (GNU coreutils) 9.1'; echo more", "printed 'true (GNU coreutils) 9.1'"),
])
def test_a_binary_that_is_not_a_redis_server(tmp_path, script, said):
    binary = tmp_path / "not-redis"
    binary.write_text(f"#!/bin/sh\n{script}\n")
    binary.chmod(0o755)
    text = '[redis]\nbinary = "./not-redis"\n'
    binary = "TMP/not-redis"
    assert refused_on_disk(tmp_path, text) == (
        f"TMP/config.toml:2: {binary} is not a Redis server: its --version {said} "
        "(a Redis server prints 'Redis server v=...')")


@pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server")
def test_a_real_redis_server_is_accepted(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[redis]\nbinary = "{REDIS_SERVER}"\n')
    assert load_config(cfg).redis.redis.binary == REDIS_SERVER
