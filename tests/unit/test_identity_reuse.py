"""A process' identity is read from /proc once a second per (pid, start ticks): a signal
storm's sender is not re-read at each window, nor again by the kernel witness's namer."""
from __future__ import annotations

import dataclasses
import os

import pytest

from relayq_supervisor.witness import identity as ident


@pytest.fixture(autouse=True)
def fresh_readings():
    ident._identities.clear()
    yield
    ident._identities.clear()       # no reading of this process left for other tests


def test_a_second_capture_within_the_window_reads_no_proc(monkeypatch):
    first = ident.ProcessIdentity.capture(os.getpid(), code_hint="SI_USER")
    assert first.comm is not None and first.code == "SI_USER"

    def no_reads(pid):
        raise AssertionError("read /proc again")
    monkeypatch.setattr(ident, "_read_facts", no_reads)
    again = ident.ProcessIdentity.capture(os.getpid(), code_hint="SI_TKILL")
    assert again.comm == first.comm and again.cmdline == first.cmdline
    assert again.code == "SI_TKILL"         # the caller's siginfo, not the cached one's
    # the uid check still applies to a reused reading
    other = ident.ProcessIdentity.capture(os.getpid(), uid_hint=os.getuid() + 1)
    assert other.alive is False and "not the sender's uid" in (other.note or "")


def test_an_old_reading_or_another_start_time_is_not_reused(monkeypatch):
    me = os.getpid()
    assert ident.ProcessIdentity.capture(me).comm is not None
    (key, (when, cached)), = ident._identities.items()
    reads = []
    real = ident._read_facts
    monkeypatch.setattr(ident, "_read_facts", lambda pid: reads.append(pid) or real(pid))
    # the window passed: read again
    ident._identities[key] = (when - ident.IDENTITY_REUSE_S, cached)
    assert ident.ProcessIdentity.capture(me).comm is not None
    assert reads == [me]
    # a reading of an earlier process at the same pid (other start ticks) is never this one's
    ident._identities.clear()
    ident._identities[(me, key[1] - 1)] = (when, dataclasses.replace(cached, comm="someone-else"))
    assert ident.ProcessIdentity.capture(me).comm == cached.comm
    assert reads == [me, me]
