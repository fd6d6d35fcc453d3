"""signal_name: the one signal-number-to-name function (exit descriptions, audit events, the worker)."""
import signal

from relayq_supervisor.linux.siginfo import signal_name


def test_named_and_unnamed_signals():
    assert signal_name(signal.SIGTERM) == "SIGTERM"
    assert signal_name(9) == "SIGKILL"
    assert signal_name(0) == "signal 0"
    assert signal_name(200) == "signal 200"
