"""The guard's rule, every case."""
import signal

import pytest

from relayq_supervisor.witness.guard import GUARDED_SIGNALS, SERVICE_MANAGER_STOP, judge

BASE = dict(protected=True, user_sent=True, from_program_itself=False, from_service_manager=False,
            shutting_down=False)


@pytest.mark.parametrize("signo", sorted(GUARDED_SIGNALS))
def test_foreign_stop_signals_to_a_protected_program_are_blocked(signo):
    v = judge(signo, **BASE)
    assert not v.deliver and v.action == "blocked" and not v.shutdown


@pytest.mark.parametrize("change", [
    {"protected": False}, {"user_sent": False}, {"from_program_itself": True}, {"shutting_down": True},
])
def test_delivered_when_unprotected_kernel_sent_self_sent_or_shutting_down(change):
    assert judge(signal.SIGTERM, **{**BASE, **change}).deliver


@pytest.mark.parametrize("signo", [signal.SIGUSR1 + 0, signal.SIGWINCH, signal.SIGCHLD, signal.SIGCONT, signal.SIGPIPE])
def test_other_signals_pass(signo):
    assert judge(signo, **BASE).deliver == (signo not in GUARDED_SIGNALS)


def test_service_manager_sigterm_becomes_an_ordered_shutdown():
    v = judge(signal.SIGTERM, **{**BASE, "from_service_manager": True})
    assert not v.deliver and v.shutdown and v.note == SERVICE_MANAGER_STOP
    # other signals from it are just blocked
    v = judge(signal.SIGINT, **{**BASE, "from_service_manager": True})
    assert not v.deliver and not v.shutdown
