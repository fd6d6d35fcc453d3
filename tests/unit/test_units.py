"""The systemd unit and the production config shipped in units/, read as files (systemd-analyze
verify runs in tests/integration/test_units.py)."""
import configparser
import tomllib
from pathlib import Path

UNITS = Path(__file__).resolve().parents[2] / "units"
UNIT = UNITS / "relayq-supervisor.service"
CONFIG = UNITS / "config.production.toml"

HARDENING = ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
             "ProtectControlGroups", "RestrictSUIDSGID", "LockPersonality")


def unit_sections(text):
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",),
                                       comment_prefixes=("#", ";"))
    parser.optionxform = str        # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def test_unit_has_the_service_contract():
    unit = unit_sections(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) > 0
    assert service["Restart"] == "on-failure"
    assert int(service["TimeoutStopSec"]) >= 300
    assert service["ExecStart"] == "/usr/local/bin/relayq-supervisor -c /etc/relayq/config.toml"
    assert service["ExecReload"] == "/usr/local/bin/relayqctl -c /etc/relayq/config.toml reload"
    assert int(service["LimitNOFILE"]) >= 65536
    for key, value in (("RuntimeDirectory", "relayq"), ("StateDirectory", "relayq"), ("LogsDirectory", "relayq")):
        assert service[key] == value
    # The start limit lives in [Unit] since systemd 230.
    assert "StartLimitBurst" not in service
    assert set(unit["Unit"]["Conflicts"].split()) == {"redis-server.service", "redis.service"}
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_a_supervisor_crash_or_watchdog_abort_signals_only_the_supervisor():
    # KillMode=mixed SIGKILLed Redis after the supervisor's SIGABRT: no save (issue 12, item 3)
    service = unit_sections(UNIT.read_text())["Service"]
    assert service["KillMode"] == "process"
    assert "ExecStopPost" not in service and "ExecStop" not in service
    # the lock files naming the survivors as ours outlive a crash; the OOM killer's victim is ours to restart
    assert service["RuntimeDirectoryPreserve"] == "yes"
    assert service["OOMPolicy"] == "continue"


def test_a_rival_start_is_ordered_after_our_stop():
    # Conflicts= without ordering started Debian's Redis while ours still held the port (issue 12, item 4)
    unit = unit_sections(UNIT.read_text())["Unit"]
    after = set(unit["After"].split())
    assert set(unit["Conflicts"].split()) <= after


def test_automatic_restarts_never_exhaust_the_start_limit():
    """An operator's `systemctl start` after a failure must not meet "start request repeated too
    quickly": restarts RestartSec= apart cannot fit StartLimitBurst= starts in StartLimitIntervalSec=."""
    unit = unit_sections(UNIT.read_text())
    burst = int(unit["Unit"]["StartLimitBurst"])
    interval = float(unit["Unit"]["StartLimitIntervalSec"])
    restart_sec = float(unit["Service"]["RestartSec"])
    assert burst >= 2 and interval > 0         # a start loop from outside is still refused
    assert restart_sec * (burst - 1) > interval
    # a config error or a refused start (exit 2) is not retried: it needs the operator
    assert "2" in unit["Service"]["RestartPreventExitStatus"].split()


def test_unit_hardening_keeps_ptrace_and_proc_working():
    service = unit_sections(UNIT.read_text())["Service"]
    for key in HARDENING:
        assert key in service, f"{key}= is missing"
    assert service["ProtectSystem"] in ("full", "strict")
    # ptrace of its own children and other processes' /proc for sender identity must keep working.
    assert "SystemCallFilter" not in service
    bounding = service.get("CapabilityBoundingSet")
    assert bounding is None or ("CAP_SYS_PTRACE" in bounding and not bounding.startswith("~"))
    assert service.get("ProtectProc", "default") == "default"
    assert service.get("PrivateUsers", "no") == "no"
    # programs' cgroups: a delegated subtree, writable (systemd 252 keeps ProtectControlGroups=yes read-only)
    assert service["Delegate"] == "yes" and service["ProtectControlGroups"] == "no"
    assert service.get("User", "root") == "root"


def test_every_hardening_line_says_why():
    lines = UNIT.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.split("=", 1)[0] in HARDENING:
            assert lines[i - 1].startswith("#"), f"{line} has no comment above it"


def test_production_config_parses_and_has_the_schema_keys():
    with CONFIG.open("rb") as f:
        config = tomllib.load(f)
    supervisor = config["supervisor"]
    assert supervisor["run_dir"] == "/run/relayq"
    assert supervisor["log_dir"] == "/var/log/relayq"
    assert supervisor["audit_log"].startswith("/var/log/relayq/")
    assert supervisor["audit_ignore"] == ["SIGCHLD", "SIGWINCH"]
    assert supervisor["control_socket"].startswith("/run/relayq/")

    redis = config["redis"]
    assert redis["port"] == 6379
    assert redis["dir"] == "/var/lib/relayq/redis"
    for key in ("binary", "bind", "config", "protect"):
        assert key in redis
    restart = redis["restart"]
    for key in ("policy", "backoff_initial", "backoff_factor", "backoff_max", "jitter", "stable_after",
                "start_limit_burst", "start_limit_interval"):
        assert key in restart

    [worker] = config["program"]
    assert worker["numprocs"] == 2
    assert worker["command"][-2:] == ["relayq_supervisor.selftest", "worker"]
    for key in ("name", "depends_on", "environment", "stop_signal", "stop_timeout", "ready_after", "log",
                "restart"):
        assert key in worker
    assert worker["restart"]["policy"] in ("always", "on-failure", "never")
    # The unit's directories are the config's directories.
    unit = unit_sections(UNIT.read_text())["Service"]
    assert supervisor["run_dir"] == "/run/" + unit["RuntimeDirectory"]
    assert redis["dir"].startswith("/var/lib/" + unit["StateDirectory"] + "/")
    assert supervisor["log_dir"] == "/var/log/" + unit["LogsDirectory"]


def test_production_config_passes_the_config_loader(tmp_path):
    from relayq_supervisor.config.load import parse_config

    # The parser insists the Redis binary exists and is executable: point it at one. (load_config
    # would also run its --version, a process: tests/integration/test_hardening.py covers that.)
    text = CONFIG.read_text()
    assert 'binary = "/usr/bin/redis-server"' in text
    redis_server = tmp_path / "redis-server"
    redis_server.write_text("#!/bin/sh\n")
    redis_server.chmod(0o755)
    copy = tmp_path / "config.toml"
    text = text.replace('binary = "/usr/bin/redis-server"', f'binary = "{redis_server}"')
    # Redis as `redis`, jobs as `relayq` (README's install makes them): `nobody` stands in for
    # a user this machine lacks, since the loader refuses an unknown user
    assert 'user = "redis"' in text and 'user = "relayq"' in text
    for user in ("redis", "relayq"):
        if not _user_exists(user):
            text = text.replace(f'user = "{user}"', 'user = "nobody"')
    copy.write_text(text)

    config = parse_config(copy.read_bytes(), str(copy))
    assert config.redis.privileges.user in ("redis", "nobody") and config.redis.privileges.no_new_privileges
    assert config.program("worker").privileges.umask == 0o027
    assert config.redis.redis.port == 6379
    assert config.redis.redis.dir == "/var/lib/relayq/redis"
    assert config.supervisor.control_socket == "/run/relayq/relayq.sock"
    worker = config.program("worker")
    assert worker.numprocs == 2 and worker.depends_on == ("redis",)
    assert [p.name for p in config.programs] == ["redis", "worker"]


def _user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
