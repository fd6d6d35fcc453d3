"""Rival-manager detection on files: the incident's units, timer and cron job in a fake root
(no systemctl, no process scan), and the rules that word what was found. Real processes and a
fake systemctl are in tests/integration/test_doctor.py."""
import os

import pytest
from support.fake_root import TARGET, by_name, clean_root, incident_root, link, write

from relayq_supervisor.doctor import (
    CgroupUnit,
    DoctorTarget,
    command_reason,
    disable_for_process,
    find_rivals,
    format_report,
    program_markers,
    rival_for_file,
    watched_dirs,
)


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
