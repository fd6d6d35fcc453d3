"""Issue 13's smaller items: a rival file warned about once per content, one audit
line per event whatever the sender's argv holds, a port holder without title padding."""
from __future__ import annotations

import logging

from relayq_supervisor import doctor
from relayq_supervisor.audit.review import format_event
from relayq_supervisor.ground import GroundWatch
from relayq_supervisor.kinds.redis.server import command_text


class FakeGround:
    def __init__(self, root: str, config_path: str):
        self.config_path = config_path
        self.doctor_root = root
        self.control_socket_path = "/nonexistent/ctl.sock"
        self.locks = None
        self.control = None
        self.events: list[dict] = []

    def audit(self, kind: str, **fields) -> dict:
        self.events.append({"event": kind, **fields})
        return self.events[-1]

    def doctor_target(self) -> doctor.DoctorTarget:
        return doctor.DoctorTarget(redis_port=6379, redis_dir="/var/lib/redis")


def test_a_rival_file_is_warned_about_once_per_content(tmp_path, caplog):
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    unit = units / "my-redis.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/redis-server --port 6379\n")
    ground = FakeGround(str(tmp_path), str(tmp_path / "config.toml"))
    watch = GroundWatch(ground)
    with caplog.at_level(logging.WARNING, logger="relayq_supervisor.ground"):
        for what in ("created", "modified", "modified"):        # an editor's save, a touch
            watch.on_rival_dir(str(unit), what)
        assert [e["event"] for e in ground.events] == ["rival_manager"]
        unit.write_text("[Service]\nExecStart=/usr/bin/redis-server --port 6379 --save ''\n")
        watch.on_rival_dir(str(unit), "modified")               # new content: news again
        watch.on_rival_dir(str(unit), "deleted")
        unit.write_text("[Service]\nExecStart=/usr/bin/redis-server --port 6379\n")
        watch.on_rival_dir(str(unit), "created")                # back after deletion: news again
    assert len(ground.events) == 3
    assert sum("rival manager appeared" in r.getMessage() for r in caplog.records) == 3


def test_a_senders_newline_does_not_break_the_audit_line():
    event = {"event": "signal", "ts": "2026-01-02T03:04:05.678Z", "signal": "SIGTERM", "action": "blocked",
             "target": {"program": "redis", "pid": 10},
             "sender": {"pid": 4412, "comm": "python3", "cmdline": ["python3", "x\n<2>FORGED\r"], "alive": True}}
    line = format_event(event)
    # one line, the argument shell-quoted as bash would write it back
    assert line == "03:04:05.678 redis pid 10 <- SIGTERM from pid 4412 python3 $'x\\n<2>FORGED\\r' BLOCKED"


def test_a_rewritten_process_title_loses_its_padding():
    assert command_text(["/usr/bin/redis-server 127.0.0.1:6379" + " " * 300]) == "/usr/bin/redis-server 127.0.0.1:6379"
    assert command_text(["redis-server", "127.0.0.1:6379", "", ""]) == "redis-server 127.0.0.1:6379"
    assert command_text(["sh", "-c", "echo  two  spaces"]) == "sh -c echo  two  spaces"
    assert command_text([]) == "?"
