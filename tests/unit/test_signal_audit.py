"""The signal tap without a tracee: what it reports when the kernel refuses ptrace. Real senders,
tracees and the audit trail are in tests/integration/test_signal_audit.py."""
from __future__ import annotations

from relayq_supervisor.linux import ptrace
from relayq_supervisor.witness.tap import SignalTap


def test_tap_reports_unavailable_when_ptrace_is_refused(monkeypatch):
    def refuse(pid, options):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(ptrace, "seize", refuse)
    tap = SignalTap(lambda tid, info: True)
    assert tap.attach(12345) is False
    assert tap.state == "unavailable (ptrace refused: Operation not permitted)"
    assert tap.attach(12345) is False       # once refused, not tried again
