"""Signal storms folded into one event per target, sender and signal per second
(witness/bursts.py), as Attribution records them and `relayqctl audit` prints them."""
from __future__ import annotations

import signal

from relayq_supervisor.audit.review import format_event
from relayq_supervisor.linux.siginfo import Siginfo
from relayq_supervisor.witness import bursts
from relayq_supervisor.witness.attribution import Attribution

from .test_kernel_witness import SH, Sup, gone_sender, kernel_signal

SI_USER = 0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sigterm() -> Siginfo:
    return Siginfo(signo=signal.SIGTERM, errno=0, code=SI_USER, pid=SH, uid=0)


def test_a_storm_is_one_event_per_second_with_its_count_and_the_kernel_merges():
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    clock = Clock()
    a.bursts.clock = clock
    first = a.on_traced_signal(812, sigterm())
    assert first.deliver is False and first.then is not None
    first.then()                                    # the first of a quiet key: recorded alone, at once
    assert [e["count"] if "count" in e else 1 for _, e in sup.audited] == [1]
    for _ in range(1199):
        d = a.on_traced_signal(812, sigterm())
        assert d.deliver is False and d.then is None    # counted: no sender inspection, nothing slow
    for _ in range(300):
        a.on_kernel_signal(kernel_signal(signal.SIGTERM, sender=gone_sender(), result=2))
    assert len(sup.audited) == 1
    clock.now += bursts.WINDOW_S
    a.bursts.close_due()
    kind, burst = sup.audited[-1]
    assert (kind, burst["count"], burst["coalesced"], burst["action"], burst["via"]) == \
        ("signal", 1199, 300, "blocked", "ptrace")
    assert burst["sender"]["pid"] == SH and burst["since"]
    line = format_event({"event": kind, "ts": "2026-11-26T12:00:01.000Z", **burst})
    assert "x 1199" in line and "+300 coalesced" in line and f"pid {SH}" in line and "BLOCKED" in line
    # the storm goes on: the next window counts at once, without recording one alone
    assert a.on_traced_signal(812, sigterm()).then is None
    a.close_bursts()
    assert sup.audited[-1][1]["count"] == 1 and len(sup.audited) == 3


def test_a_quiet_second_ends_the_burst_and_the_next_signal_is_recorded_alone():
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    clock = Clock()
    a.bursts.clock = clock
    a.on_traced_signal(812, sigterm()).then()
    clock.now += bursts.WINDOW_S
    a.bursts.close_due()                            # nothing counted: no event, the key is quiet
    assert len(sup.audited) == 1 and not a.bursts.open
    d = a.on_traced_signal(812, sigterm())
    assert d.then is not None


def test_merges_the_tap_never_saw_are_recorded_from_the_trace():
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    clock = Clock()
    a.bursts.clock = clock
    for _ in range(3):
        a.on_kernel_signal(kernel_signal(signal.SIGUSR1, sender=gone_sender(), result=2))
    clock.now += bursts.WINDOW_S
    a.bursts.close_due()
    [(kind, e)] = sup.audited
    assert (e["via"], e["action"], e["count"], e["coalesced"], e["sender"]["pid"]) == \
        ("tracefs", "already-pending", 0, 3, SH)
