"""Rival-manager detection with real processes (a redis-server, supervisord look-alikes) and a fake
systemctl on PATH. Detection on files alone is in tests/unit/test_doctor.py."""
import os
import subprocess
import sys

import psutil
from support import REDIS_SERVER, free_port, wait_for, wait_for_redis
from support.fake_root import TARGET, by_name, incident_root, write

from relayq_supervisor.doctor import DoctorTarget, find_rivals


def test_live_systemctl_state_is_added_and_its_failure_tolerated(tmp_path, monkeypatch):
    root = incident_root(tmp_path / "root")
    fake_bin = tmp_path / "bin"
    systemctl = write(fake_bin / "systemctl", "", 0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")

    # A systemd that answers: one block per unit, in the order asked.
    script = """#!/bin/sh
first=1
for unit in "$@"; do
  case "$unit" in -*|show) continue;; esac
  [ $first = 1 ] || echo
  first=0
  echo "Id=$unit"
  case "$unit" in
    redis-server.service) echo ActiveState=active; echo UnitFileState=enabled;;
    relayq-redis-monitor.service) echo ActiveState=inactive; echo UnitFileState=masked-runtime;;
    *) echo ActiveState=inactive; echo UnitFileState=enabled;;
  esac
done
"""
    systemctl.write_text(script)
    found = by_name(find_rivals(TARGET, root=str(root), use_systemctl=True))
    assert found["redis-server.service"].state == "enabled, active"
    assert found["relayq-redis-monitor.timer"].state == "enabled"
    assert "relayq-redis-monitor.service" not in found      # masked at run time

    # A systemd that is not there (containers, CI): the file parse stands.
    systemctl.write_text("#!/bin/sh\necho 'System has not been booted with systemd' >&2\nexit 1\n")
    found = by_name(find_rivals(TARGET, root=str(root), use_systemctl=True))
    assert found["redis-server.service"].state == "enabled"
    assert found["relayq-redis-monitor.service"].state == "installed"


# ------------------------------------------------------------------------------------------------
# Real processes

def test_a_real_redis_server_is_found_unless_it_is_ours(tmp_path, procs):
    port = free_port()
    data = tmp_path / "redis"
    data.mkdir()
    redis = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                              "--save", "", "--appendonly", "no", "--daemonize", "no"],
                             cwd=data, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(redis)
    wait_for_redis(port, redis)

    target = DoctorTarget(redis_port=port, redis_dir=str(data))
    mine = [r for r in find_rivals(target, use_systemctl=False) if r.pid == redis.pid]
    kinds = {r.kind: r for r in mine}
    assert {"process", "port", "open-file"} <= set(kinds)
    assert kinds["process"].name == "redis-server"
    assert kinds["process"].evidence.startswith(f"pid {redis.pid}: ")
    assert f"127.0.0.1:{port}" in kinds["port"].evidence
    assert str(redis.pid) in kinds["process"].disable

    owned = DoctorTarget(redis_port=port, redis_dir=str(data), own_pids=frozenset({redis.pid}))
    assert [r for r in find_rivals(owned, use_systemctl=False) if r.pid == redis.pid] == []


def test_processes_are_not_scanned_under_a_fake_root(tmp_path, procs):
    port = free_port()
    redis = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
                              "--save", "", "--daemonize", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(redis)
    wait_for_redis(port, redis)
    assert find_rivals(DoctorTarget(redis_port=port), root=str(tmp_path)) == []


def test_other_supervisors_are_reported_with_what_their_config_says(tmp_path, procs):
    # A program named supervisord: the kernel names the process after the script (comm), as it does
    # for the real /usr/bin/supervisord Python script.
    supervisord = write(tmp_path / "bin/supervisord",
                        f"#!{sys.executable}\nimport time\ntime.sleep(60)\n", 0o755)
    redis_conf = write(tmp_path / "managed/supervisord.conf",
                       "[supervisord]\nnodaemon=true\n\n[include]\nfiles = conf.d/*.conf\n")
    write(tmp_path / "managed/conf.d/redis.conf", "[program:redis]\ncommand=/usr/bin/redis-server --port 6390\n")
    quiet_conf = write(tmp_path / "quiet/supervisord.conf", "[program:web]\ncommand=/usr/sbin/nginx\n")

    managing = subprocess.Popen([str(supervisord), "-c", str(redis_conf)])
    procs.append(managing)
    quiet = subprocess.Popen([str(supervisord), "--configuration", str(quiet_conf)])
    procs.append(quiet)
    wait_for(lambda: psutil.Process(quiet.pid).name() == "supervisord", what="supervisord to exec")

    rivals = {r.pid: r for r in find_rivals(DoctorTarget(), use_systemctl=False) if r.kind == "supervisor"}
    loud = rivals[managing.pid]
    assert loud.name == "supervisord" and loud.path == str(redis_conf)
    assert f"{tmp_path}/managed/conf.d/redis.conf:2: command=/usr/bin/redis-server --port 6390" in loud.evidence
    assert loud.disable == (f"edit {tmp_path}/managed/conf.d/redis.conf line 2, "
                            "then supervisorctl reread && supervisorctl update")

    calm = rivals[quiet.pid]
    assert "does not mention Redis" in calm.evidence
    assert calm.reason == "supervisord is running (its config does not mention Redis)"

    ours = DoctorTarget(own_pids=frozenset({managing.pid, quiet.pid}))
    assert not [r for r in find_rivals(ours, use_systemctl=False) if r.pid in (managing.pid, quiet.pid)]




def test_another_supervisors_relative_config_is_read_from_its_own_directory(tmp_path, procs, monkeypatch):
    """`relayq-supervisor -c config.toml` started in A is not "the same config" as our A/../B/config.toml,
    however the doctor's own working directory lies."""
    fake = write(tmp_path / "bin/relayq-supervisor", f"#!{sys.executable}\nimport time\ntime.sleep(60)\n", 0o755)
    for d in ("a", "b"):
        write(tmp_path / d / "config.toml", "[supervisor]\nrun_dir = 'run'\n")
    other = subprocess.Popen([str(fake), "-c", "config.toml"], cwd=tmp_path / "a")
    procs.append(other)
    wait_for(lambda: psutil.Process(other.pid).name().startswith("relayq-supervis"), what="the fake supervisor to exec")
    monkeypatch.chdir(tmp_path / "b")       # where a relative path would wrongly resolve to our own config

    def rival(own: str):
        found = [r for r in find_rivals(DoctorTarget(own_config=own), use_systemctl=False) if r.pid == other.pid]
        assert len(found) == 1
        return found[0]
    different = rival(str(tmp_path / "b" / "config.toml"))
    assert different.path == str(tmp_path / "a" / "config.toml")
    assert different.reason != "another relayq-supervisor with the same config"
    assert rival(str(tmp_path / "a" / "config.toml")).reason == "another relayq-supervisor with the same config"
