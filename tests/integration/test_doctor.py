"""Rival-manager detection: the incident's units, timer and cron job in a fake root, and real processes."""
import os
import shutil
import subprocess
import sys

import psutil
import pytest
from support import REDIS_SERVER, free_port, wait_for, wait_for_redis

from relayq_supervisor.doctor import (CgroupUnit, DoctorTarget, command_reason, disable_for_process, find_rivals,
                                      format_report, parse_cgroup_unit, program_markers, rival_for_file,
                                      watched_dirs)

WORKER = ("python3", "-m", "relayq_supervisor.selftest", "worker")
TARGET = DoctorTarget(redis_port=6379, redis_dir="/var/lib/relayq/redis", program_commands=(WORKER,))

DEBIAN_REDIS_UNIT = """\
[Unit]
Description=Advanced key-value store
After=network.target

[Service]
Type=notify
ExecStart=/usr/bin/redis-server /etc/redis/redis.conf --supervised systemd --daemonize no
PIDFile=/run/redis/redis-server.pid
Restart=always
User=redis

[Install]
WantedBy=multi-user.target
Alias=redis.service
"""

MONITOR_SCRIPT = """\
#!/bin/sh
# restart Redis when it looks stuck
if ! redis-cli -p 6379 ping >/dev/null; then
    redis-cli -p 6379 shutdown
fi
"""


def write(path, text, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


def link(path, target):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return path


def clean_root(root):
    """Directories of a Debian node with only unrelated units and cron jobs."""
    write(root / "lib/systemd/system/nginx.service",
          "[Service]\nExecStart=/usr/sbin/nginx -g 'daemon off;'\nExecReload=/usr/sbin/nginx -s reload\n"
          "[Install]\nWantedBy=multi-user.target\n")
    link(root / "etc/systemd/system/multi-user.target.wants/nginx.service", "/lib/systemd/system/nginx.service")
    (root / "run/systemd/system").mkdir(parents=True)
    write(root / "etc/crontab", "SHELL=/bin/sh\n17 * * * * root cd / && run-parts --report /etc/cron.hourly\n")
    write(root / "etc/cron.d/e2scrub_all", "30 3 * * 0 root test -e /run/systemd/system || /sbin/e2scrub_all\n")
    write(root / "etc/cron.daily/dpkg", "#!/bin/sh\n/usr/libexec/dpkg/dpkg-db-backup\n", 0o755)
    (root / "var/spool/cron/crontabs").mkdir(parents=True)
    # Our own unit, installed: never a rival of itself.
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "..", "units", "relayq-supervisor.service"),
                root / "etc/systemd/system/relayq-supervisor.service")
    link(root / "etc/systemd/system/multi-user.target.wants/relayq-supervisor.service",
         "/etc/systemd/system/relayq-supervisor.service")
    return root


def incident_root(root):
    """The incident: Debian's redis-server.service enabled, the home-made monitor timer, a cron shutdown."""
    clean_root(root)
    write(root / "lib/systemd/system/redis-server.service", DEBIAN_REDIS_UNIT)
    link(root / "etc/systemd/system/multi-user.target.wants/redis-server.service",
         "/lib/systemd/system/redis-server.service")
    link(root / "etc/systemd/system/redis.service", "/lib/systemd/system/redis-server.service")
    write(root / "etc/systemd/system/relayq-redis-monitor.service",
          "[Unit]\nDescription=relayq Redis health monitor\n\n[Service]\nType=oneshot\n"
          "ExecStart=/usr/local/bin/redis-monitor.sh\n")
    write(root / "etc/systemd/system/relayq-redis-monitor.timer",
          "[Unit]\nDescription=Check Redis every 30s\n\n[Timer]\nOnBootSec=1min\nOnUnitActiveSec=30s\n"
          "Unit=relayq-redis-monitor.service\n\n[Install]\nWantedBy=timers.target\n")
    link(root / "etc/systemd/system/timers.target.wants/relayq-redis-monitor.timer",
         "/etc/systemd/system/relayq-redis-monitor.timer")
    write(root / "usr/local/bin/redis-monitor.sh", MONITOR_SCRIPT, 0o755)
    write(root / "etc/cron.d/redis-check",
          "# installed by setup.sh\nMAILTO=root\n*/5 * * * * root redis-cli -p 6379 shutdown\n")
    # Masked: a unit file exists, but /etc links it to /dev/null.
    write(root / "lib/systemd/system/redis-sentinel.service",
          "[Service]\nExecStart=/usr/bin/redis-sentinel /etc/redis/sentinel.conf\n")
    link(root / "etc/systemd/system/redis-sentinel.service", "/dev/null")
    return root


def by_name(rivals):
    return {r.name: r for r in rivals}


def test_incident_root_finds_each_rival_with_its_disable_command(tmp_path):
    rivals = find_rivals(TARGET, root=str(incident_root(tmp_path)), use_systemctl=False)

    assert {(r.kind, r.name) for r in rivals} == {
        ("systemd-unit", "redis-server.service"),
        ("systemd-unit", "relayq-redis-monitor.service"),
        ("systemd-timer", "relayq-redis-monitor.timer"),
        ("cron", "redis-check"),
    }
    found = by_name(rivals)

    redis = found["redis-server.service"]
    assert redis.state == "enabled"
    assert redis.path == "/lib/systemd/system/redis-server.service"
    assert redis.evidence.splitlines()[0] == (
        "/lib/systemd/system/redis-server.service:7: ExecStart=/usr/bin/redis-server /etc/redis/redis.conf "
        "--supervised systemd --daemonize no")
    assert "enabled by /etc/systemd/system/multi-user.target.wants/redis-server.service" in redis.evidence
    assert redis.disable == ("systemctl disable --now redis-server.service && "
                             "systemctl mask redis-server.service")

    timer = found["relayq-redis-monitor.timer"]
    assert timer.state == "enabled"
    assert timer.disable == "systemctl disable --now relayq-redis-monitor.timer"
    assert "/etc/systemd/system/relayq-redis-monitor.timer:7: Unit=relayq-redis-monitor.service" in timer.evidence
    assert "shuts Redis down" in timer.reason

    monitor = found["relayq-redis-monitor.service"]
    assert monitor.state == "installed"     # only its timer is enabled
    assert monitor.disable == ("systemctl disable --now relayq-redis-monitor.service && "
                               "systemctl mask relayq-redis-monitor.service")
    # ExecStart only names the script; the script's own line is the evidence.
    assert "/usr/local/bin/redis-monitor.sh:4: redis-cli -p 6379 shutdown" in monitor.evidence
    assert monitor.reason == "its script shuts Redis down (redis-cli shutdown)"

    cron = found["redis-check"]
    assert cron.path == "/etc/cron.d/redis-check"
    assert cron.evidence == "/etc/cron.d/redis-check:3: */5 * * * * root redis-cli -p 6379 shutdown"
    assert cron.disable == "edit /etc/cron.d/redis-check line 3"
    assert cron.reason == "shuts Redis down (redis-cli shutdown)"

    for rival in rivals:
        assert isinstance(rival.to_dict(), dict) and rival.to_dict()["disable"] == rival.disable
        assert "kill" not in rival.disable      # units and cron files are disabled, never killed


def test_masked_unrelated_own_and_alias_units_are_not_reported(tmp_path):
    names = {r.name for r in find_rivals(TARGET, root=str(incident_root(tmp_path)), use_systemctl=False)}
    assert "redis-sentinel.service" not in names    # masked: cannot start
    assert "nginx.service" not in names
    assert "relayq-supervisor.service" not in names
    assert "redis.service" not in names             # an alias of redis-server.service, reported once


def test_clean_root_has_no_rivals(tmp_path):
    rivals = find_rivals(TARGET, root=str(clean_root(tmp_path)), use_systemctl=False)
    assert rivals == []
    assert format_report(rivals) == "no rival managers found"


def test_empty_root_has_no_rivals(tmp_path):
    assert find_rivals(TARGET, root=str(tmp_path)) == []


def test_rival_for_file_on_newly_dropped_units_and_links(tmp_path):
    root = incident_root(tmp_path)
    # A timer whose name says nothing: its service runs redis-cli.
    write(root / "etc/systemd/system/cache-flush.service",
          "[Service]\nType=oneshot\nExecStart=/usr/bin/redis-cli -p 6379 flushall\n")
    timer = write(root / "etc/systemd/system/cache-flush.timer",
                  "[Timer]\nOnCalendar=hourly\n\n[Install]\nWantedBy=timers.target\n")

    rival = rival_for_file(str(timer), TARGET, root=str(root))
    assert rival is not None and rival.kind == "systemd-timer" and rival.name == "cache-flush.timer"
    assert rival.state == "installed"
    assert rival.disable == "systemctl disable --now cache-flush.timer"
    assert "triggers cache-flush.service" in rival.evidence

    # `systemctl enable cache-flush.timer` then drops a link: the watcher sees the link.
    wants = link(root / "etc/systemd/system/timers.target.wants/cache-flush.timer",
                 "/etc/systemd/system/cache-flush.timer")
    enabled = rival_for_file(str(wants), TARGET, root=str(root))
    assert enabled is not None and enabled.name == "cache-flush.timer" and enabled.state == "enabled"

    assert rival_for_file(str(root / "lib/systemd/system/nginx.service"), TARGET, root=str(root)) is None
    assert rival_for_file(str(root / "etc/systemd/system/redis-sentinel.service"), TARGET, root=str(root)) is None
    assert rival_for_file(str(root / "etc/systemd/system/gone.timer"), TARGET, root=str(root)) is None
    cron = rival_for_file(str(root / "etc/cron.d/redis-check"), TARGET, root=str(root))
    assert cron is not None and cron.disable == "edit /etc/cron.d/redis-check line 3"
    assert rival_for_file(str(root / "etc/cron.d/e2scrub_all"), TARGET, root=str(root)) is None


def test_rival_for_file_agrees_with_find_rivals(tmp_path):
    root = incident_root(tmp_path)
    for rival in find_rivals(TARGET, root=str(root), use_systemctl=False):
        if rival.kind == "cron":
            path = root / rival.path.lstrip("/")
        else:
            path = next(root.glob(f"*/systemd/system/{rival.name}"))
        assert rival_for_file(str(path), TARGET, root=str(root)) == rival


def test_cron_scripts_user_crontabs_and_configured_programs(tmp_path):
    root = clean_root(tmp_path)
    write(root / "etc/cron.daily/redis-backup", "#!/bin/sh\nredis-cli -p 6379 bgsave\n", 0o755)
    write(root / "etc/cron.weekly/redis-cleanup", "#!/bin/sh\nredis-cli -p 6379 shutdown\n", 0o644)  # not executable
    write(root / "var/spool/cron/crontabs/alice",
          "# m h dom mon dow command\n@reboot redis-server --daemonize yes\n"
          "*/10 * * * * pkill -f redis\n")
    write(root / "etc/crontab", "SHELL=/bin/sh\nREDIS_URL=redis://127.0.0.1:6379/0\n"
          "* * * * * root cd /opt/app && python3 -m relayq_supervisor.selftest worker\n")

    found = by_name(find_rivals(TARGET, root=str(root), use_systemctl=False))
    assert set(found) == {"cron.daily/redis-backup", "crontab of alice", "/etc/crontab"}

    assert found["cron.daily/redis-backup"].disable == (
        "chmod -x /etc/cron.daily/redis-backup (or edit /etc/cron.daily/redis-backup line 2)")
    alice = found["crontab of alice"]
    assert alice.disable == "crontab -u alice -e (remove lines 2, 3)"
    assert alice.evidence.splitlines() == [
        "/var/spool/cron/crontabs/alice:2: @reboot redis-server --daemonize yes",
        "/var/spool/cron/crontabs/alice:3: */10 * * * * pkill -f redis"]
    crontab = found["/etc/crontab"]
    assert crontab.evidence.startswith("/etc/crontab:3: ")     # the REDIS_URL= line is not a job
    assert crontab.reason == "runs relayq_supervisor.selftest, a program relayq-supervisor owns"

    # Without the program configured, the worker line is nobody's business.
    unconfigured = DoctorTarget(redis_port=6379)
    assert "/etc/crontab" not in by_name(find_rivals(unconfigured, root=str(root), use_systemctl=False))


def test_special_and_odd_files_are_skipped_without_blocking(tmp_path):
    root = clean_root(tmp_path)
    os.mkfifo(root / "etc/cron.d/redis-fifo")              # opening it would block forever
    link(root / "etc/cron.d/redis-dangling", "/nonexistent/redis")
    (root / "etc/cron.d/redis-dir").mkdir()
    write(root / "etc/cron.d/.redis-check.swp", "* * * * * root redis-cli shutdown\n")
    (root / "etc/cron.d/redis-binary").write_bytes(b"\xff\xfe\x00redis-cli shutdown\x00\n")
    write(root / "etc/systemd/system/empty-redis.service", "")    # empty: systemd treats it as masked
    link(root / "etc/systemd/system/broken-redis.service", "/lib/systemd/system/missing.service")

    rivals = find_rivals(TARGET, root=str(root), use_systemctl=False)
    assert [r.name for r in rivals] == ["redis-binary"]     # a readable regular file: still evidence


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


def test_format_report_has_a_block_per_rival_and_a_summary(tmp_path):
    rivals = find_rivals(TARGET, root=str(incident_root(tmp_path)), use_systemctl=False)
    report = format_report(rivals)
    blocks = report.split("\n\n")
    assert len(blocks) == len(rivals) + 1
    assert blocks[0].startswith("[systemd-unit] ")
    assert "  disable:  systemctl disable --now redis-server.service && systemctl mask redis-server.service" in report
    assert "  evidence: /etc/cron.d/redis-check:3: */5 * * * * root redis-cli -p 6379 shutdown" in report
    assert blocks[-1].startswith("4 rival managers found (2 systemd-unit, 1 systemd-timer, 1 cron)")


def test_watched_dirs_are_the_unit_and_cron_dirs_that_exist(tmp_path):
    root = incident_root(tmp_path)
    dirs = watched_dirs(str(root))
    for rel in ("etc/systemd/system", "run/systemd/system", "lib/systemd/system", "etc/cron.d", "etc/cron.daily",
                "var/spool/cron/crontabs", "etc/systemd/system/timers.target.wants"):
        assert str(root / rel) in dirs
    assert str(root / "usr/lib/systemd/system") not in dirs      # does not exist here
    assert all(os.path.isdir(d) for d in dirs)


@pytest.mark.parametrize("argv, markers", [
    (("python3", "-m", "relayq_supervisor.selftest", "worker"), ("relayq_supervisor.selftest",)),
    (("/usr/bin/python3", "/opt/relayq/worker.py", "--queue", "q"), ("worker.py",)),
    (("env", "FOO=1", "/usr/local/bin/relayq-worker", "-v"), ("relayq-worker",)),
    (("python3 -m relayq.worker",), ("relayq.worker",)),
    (("python3", "-c", "print(1)"), ()),
])
def test_program_markers(argv, markers):
    assert program_markers(argv) == markers


@pytest.mark.parametrize("text, unit, uid", [
    ("0::/system.slice/redis-server.service\n", "redis-server.service", None),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope", None),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/redis.service\n", "redis.service", 1000),
    ("12:pids:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n0::/\n", "cron.service", None),
])
def test_parse_cgroup_unit(text, unit, uid):
    parsed = parse_cgroup_unit(text)
    assert parsed.name == unit and parsed.user_uid == uid


def test_parse_cgroup_unit_outside_systemd():
    assert parse_cgroup_unit("0::/\n") is None


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


@pytest.mark.parametrize("unit, disable", [
    (CgroupUnit("redis-server.service", None),
     "systemctl disable --now redis-server.service && systemctl mask redis-server.service"),
    (CgroupUnit("docker-" + "ab12" * 16 + ".scope", None),
     "docker update --restart=no ab12ab12ab12 && docker stop ab12ab12ab12"),
    (CgroupUnit("redis.service", 0), "systemctl --user -M root@ disable --now redis.service"),
    (CgroupUnit("cron.service", None), "remove the job that starts it (see the cron entries), then kill 812"),
    (CgroupUnit("session-3.scope", None), "kill 812 (no unit or supervisor restarts it: it was started by hand)"),
    (None, "kill 812 (no unit or supervisor restarts it: it was started by hand)"),
])
def test_a_process_is_disabled_through_whatever_restarts_it(unit, disable):
    assert disable_for_process(812, unit) == disable


@pytest.mark.parametrize("line, reason", [
    ("redis-cli -p 6379 SHUTDOWN NOSAVE", "shuts Redis down (redis-cli shutdown)"),
    ("python3 -c 'import redis; redis.Redis().shutdown()'", "shuts Redis down"),
    ("pkill -f redis-server", "kills or stops Redis"),
    ("fuser -k 6379/tcp", "kills or stops whatever holds port 6379"),
    ("systemctl restart redis-server.service", "kills or stops Redis"),
    ("/usr/bin/redis-server --daemonize yes", "starts a redis-server"),
    ("redis-cli -p 6379 bgsave", "runs redis-cli (which can shut Redis down)"),
    ("/usr/local/bin/relayq-supervisor -c /tmp/other.toml", "runs another relayq-supervisor"),
    ("nice python3 -m relayq_supervisor.selftest worker",
     "runs relayq_supervisor.selftest, a program relayq-supervisor owns"),
    ("/opt/tools/redis-monitor.sh", "runs redis-monitor.sh, a Redis-named command"),
    ("relayqctl -c /etc/relayq/config.toml status", None),      # goes through the supervisor
    ("curl -s http://localhost/health?redis_url=redis://x", None),
    ("/usr/sbin/nginx -s reload", None),
])
def test_command_reason(line, reason):
    assert command_reason(line, TARGET) == reason


def test_a_drop_in_that_adds_redis_to_an_unrelated_unit_is_found(tmp_path):
    root = clean_root(tmp_path)
    write(root / "etc/systemd/system/nginx.service.d/override.conf",
          "[Service]\nExecStartPost=/usr/bin/redis-cli -p 6379 flushall\n")
    [rival] = find_rivals(TARGET, root=str(root), use_systemctl=False)
    assert rival.name == "nginx.service" and rival.state == "enabled"
    assert rival.evidence.splitlines()[0] == (
        "/etc/systemd/system/nginx.service.d/override.conf:2: ExecStartPost=/usr/bin/redis-cli -p 6379 flushall")
