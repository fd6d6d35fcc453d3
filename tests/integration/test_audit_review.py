"""The audit review tools on a real sender's identity: written, filtered and formatted. The
parsing, filtering and formatting rules are in tests/unit/test_audit_review.py."""
import os
import subprocess
from datetime import UTC, datetime

from support import wait_for

from relayq_supervisor.audit.log import AuditLog, make_event
from relayq_supervisor.audit.review import EventFilter, format_event, iter_events, parse_when
from relayq_supervisor.witness.identity import ProcessIdentity


def test_real_sender_written_filtered_and_formatted(tmp_path, procs):
    p = subprocess.Popen(["sleep", "30"])
    procs.append(p)
    # Popen returns after fork, maybe before exec: wait until the process is `sleep`
    wait_for(lambda: open(f"/proc/{p.pid}/cmdline", "rb").read() == b"sleep\x0030\x00", 10, 0.005,
             what="sleep to exec")
    sender = ProcessIdentity.capture(p.pid, uid_hint=os.getuid(), code_hint="SI_USER")
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as audit:
        audit.write(make_event("spawn", program="redis", pid=1234, argv=["redis-server"]))
        audit.write(make_event("signal", signal="SIGTERM", signo=15, code="SI_USER",
                               target={"program": "redis", "pid": 1234}, sender=sender.to_dict(),
                               action="blocked", via="signalfd"))

    wanted = EventFilter(program="redis", sender=str(p.pid), signal="TERM",
                         since=parse_when("1h", datetime.now(UTC)))
    lines = [format_event(e) for e in iter_events(path) if wanted.matches(e)]

    assert len(lines) == 1
    assert lines[0].endswith(f"redis pid 1234 <- SIGTERM from pid {p.pid} sleep 30 BLOCKED")
