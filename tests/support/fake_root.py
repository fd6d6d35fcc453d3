"""A Debian node's unit and cron files under a temp root, with or without the incident's rival
managers (Debian's redis-server.service, the home-made monitor timer, a cron shutdown). Files
only: nothing here starts a process, so unit and integration tests of the doctor share it."""
import os
import shutil

from relayq_supervisor.doctor import DoctorTarget

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
