"""Unit tests for the pure restart rules (relayq_supervisor.core.policy) on a fake clock."""
from __future__ import annotations

import dataclasses
import random
import signal

import pytest

from relayq_supervisor import config
from relayq_supervisor.core.policy import Decision, RestartTracker, format_seconds


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fixed(value: float):
    return lambda: value


def tracker(clock=None, rng=fixed(0.5), **kw) -> RestartTracker:
    # the real config value object, with jitter off unless a test asks for it
    return RestartTracker(config.RestartPolicy(**{"jitter": 0.0, **kw}), clock=clock or FakeClock(), rng=rng)


def crash_loop(t: RestartTracker, clock: FakeClock, runs: int, runtime: float = 0.1):
    """Start, run `runtime` seconds, crash, wait the decided delay; returns the decisions."""
    decisions = []
    for _ in range(runs):
        t.record_start()
        clock.advance(runtime)
        d = t.on_exit(runtime, exit_code=1, signal=None)
        decisions.append(d)
        if d.action not in ("backoff", "restart"):
            break
        clock.advance(d.delay)
    return decisions


# --- delay formula -----------------------------------------------------------

def test_next_delay_doubles_from_initial_and_caps_at_max():
    t = tracker()
    assert [t.next_delay(s) for s in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert t.next_delay(0) == 0.0


def test_next_delay_survives_float_overflow_on_huge_streaks():
    t = tracker(backoff_factor=10.0, backoff_max=30.0)
    assert t.next_delay(5000) == 30.0


@pytest.mark.parametrize("kw, expected", [
    (dict(backoff_factor=1.0), [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]),
    (dict(backoff_initial=0.0), [0.0] * 6),
    (dict(backoff_initial=1.0, backoff_factor=3.0, backoff_max=20.0), [1, 3, 9, 20, 20, 20]),
    (dict(backoff_initial=0.2, backoff_max=30.0), [0.2, 0.4, 0.8, 1.6, 3.2, 6.4]),
])
def test_on_exit_delay_sequence(kw, expected):
    clock = FakeClock()
    t = tracker(clock, start_limit_burst=100, **kw)
    decisions = crash_loop(t, clock, len(expected))
    assert [d.action for d in decisions] == ["backoff"] * len(expected)
    assert [d.delay for d in decisions] == pytest.approx(expected)
    assert [d.streak for d in decisions] == list(range(1, len(expected) + 1))
    assert t.streak == len(expected)


def test_streak_grows_and_delays_reach_the_cap():
    clock = FakeClock()
    t = tracker(clock, start_limit_burst=1000, start_limit_interval=1.0, backoff_max=10.0)
    decisions = crash_loop(t, clock, 8)
    assert [d.delay for d in decisions] == [0.5, 1, 2, 4, 8, 10, 10, 10]


def test_backoff_initial_zero_is_still_backoff_with_a_growing_streak():
    clock = FakeClock()
    t = tracker(clock, backoff_initial=0.0)
    d1, d2 = crash_loop(t, clock, 2)
    assert (d1.action, d1.delay, d1.streak) == ("backoff", 0.0, 1)
    assert d1.reason == "next start in 0.0s, failure 1 of 5"
    assert (d2.action, d2.delay, d2.streak) == ("backoff", 0.0, 2)


# --- jitter ------------------------------------------------------------------

@pytest.mark.parametrize("rng_value, factor", [(0.0, 0.9), (1.0, 1.1), (0.5, 1.0), (0.25, 0.95)])
def test_jitter_bounds(rng_value, factor):
    """u = jitter * (2 * rng - 1): rng 0 gives -jitter, rng 1 gives +jitter."""
    clock = FakeClock()
    t = tracker(clock, rng=fixed(rng_value), jitter=0.1, backoff_initial=4.0)
    (d,) = crash_loop(t, clock, 1)
    assert d.delay == pytest.approx(4.0 * factor)


def test_jitter_stays_within_bounds_for_random_draws():
    clock = FakeClock()
    t = tracker(clock, rng=random.Random(7).random, jitter=0.25, backoff_factor=1.0,
                backoff_initial=2.0, start_limit_burst=10_000)
    delays = [d.delay for d in crash_loop(t, clock, 500)]
    assert all(1.5 <= x <= 2.5 for x in delays)
    assert min(delays) < 1.6 and max(delays) > 2.4   # the whole range is used


def test_jitter_is_clamped_at_zero():
    clock = FakeClock()
    t = tracker(clock, rng=fixed(0.0), jitter=1.5)
    (d,) = crash_loop(t, clock, 1)
    assert d.delay == 0.0


def test_jitter_applies_after_the_cap():
    clock = FakeClock()
    t = tracker(clock, rng=fixed(1.0), jitter=0.1, backoff_initial=100.0, backoff_max=60.0)
    (d,) = crash_loop(t, clock, 1)
    assert d.delay == pytest.approx(66.0)


def test_decisions_are_deterministic_given_clock_and_rng():
    def run():
        clock = FakeClock()
        t = tracker(clock, rng=random.Random(42).random, jitter=0.3, start_limit_burst=20)
        return crash_loop(t, clock, 30)
    assert run() == run()


# --- stable runs -------------------------------------------------------------

def test_stable_run_resets_streak_and_restarts_now():
    clock = FakeClock()
    t = tracker(clock, start_limit_burst=100)
    crash_loop(t, clock, 3)
    assert t.streak == 3
    t.record_start()
    clock.advance(12.0)
    d = t.on_exit(12.0, exit_code=1, signal=None)
    assert d == Decision("restart", 0.0, 0, "stable run of 12.0s: restarting now")
    assert t.streak == 0
    # The next quick failure starts the backoff over at backoff_initial.
    t.record_start()
    d = t.on_exit(0.1, exit_code=1, signal=None)
    assert (d.action, d.delay, d.streak) == ("backoff", 0.5, 1)


@pytest.mark.parametrize("runtime, action", [(10.0, "restart"), (9.999, "backoff"), (10.5, "restart")])
def test_stable_after_boundary(runtime, action):
    t = tracker()
    t.record_start()
    assert t.on_exit(runtime, exit_code=None, signal=signal.SIGKILL).action == action


# --- start limit -------------------------------------------------------------

def test_fatal_when_a_start_would_exceed_the_burst_and_says_the_starts_made():
    clock = FakeClock()
    t = tracker(clock)
    decisions = crash_loop(t, clock, 10)
    # Five starts happened (0, 0.6, 1.7, 3.8, 7.9 s); a sixth within 60 s is too many.
    assert [d.action for d in decisions] == ["backoff"] * 4 + ["fatal"]
    assert decisions[-1] == Decision("fatal", 0.0, 5, "gave up: 5 starts in 60s")
    assert t.starts_in_window() == 5
    assert t.may_start() == "gave up: 5 starts in 60s"


@pytest.mark.parametrize("burst", [1, 2, 3, 7])
def test_fatal_counts_burst_starts(burst):
    clock = FakeClock()
    t = tracker(clock, start_limit_burst=burst, backoff_initial=0.1)
    decisions = crash_loop(t, clock, burst + 5)
    assert len(decisions) == burst
    assert decisions[-1].reason == f"gave up: {burst} start{'' if burst == 1 else 's'} in 60s"


def test_not_fatal_when_window_slid_past_old_starts():
    clock = FakeClock(0.0)
    t = tracker(clock, backoff_initial=0.0, stable_after=100.0)
    # One start every 13 s: at most 5 fall in any 60 s window, counting the planned one.
    decisions = crash_loop(t, clock, 20, runtime=13.0)
    assert all(d.action == "backoff" for d in decisions)
    assert len(decisions) == 20


@pytest.mark.parametrize("exit_at, action", [(60.0, "backoff"), (59.999, "fatal")])
def test_window_is_half_open_at_planned_minus_interval(exit_at, action):
    clock = FakeClock(0.0)
    t = tracker(clock, backoff_initial=0.0, stable_after=100.0)
    for at in (0.0, 1.0, 2.0, 3.0, 4.0):
        clock.now = at
        t.record_start()
    # Planned start at 60.0: the start at 0.0 is outside (0, 60], so a sixth start is
    # allowed; a hair earlier all five are inside and the sixth is refused.
    clock.now = exit_at
    assert t.starts_in_window() == (4 if exit_at == 60.0 else 5)
    assert t.on_exit(1.0, exit_code=1, signal=None).action == action


def test_planned_start_time_includes_the_delay():
    """Counting at now+delay: a long backoff can let old starts slide out of the window."""
    clock = FakeClock(0.0)
    t = tracker(clock, backoff_initial=30.0, backoff_factor=1.0, start_limit_burst=2,
                start_limit_interval=31.0, stable_after=1000.0)
    t.record_start()                      # at 0
    clock.now = 1.0
    d = t.on_exit(1.0, exit_code=1, signal=None)
    assert (d.action, d.delay) == ("backoff", 30.0)
    clock.now = 31.0
    t.record_start()                      # at 31; the start at 0 is outside (0, 31]
    clock.now = 31.5
    d = t.on_exit(0.5, exit_code=1, signal=None)
    assert d.action == "backoff"          # planned 61.5: only the start at 31 counts


def test_stable_restarts_also_count_against_the_start_limit():
    clock = FakeClock(0.0)
    t = tracker(clock, stable_after=1.0, start_limit_burst=3)
    decisions = crash_loop(t, clock, 5, runtime=5.0)
    assert [d.action for d in decisions] == ["restart", "restart", "fatal"]
    assert decisions[-1].reason == "gave up: 3 starts in 60s"


@pytest.mark.parametrize("interval, text", [(60.0, "60s"), (2.5, "2.5s"), (0.1, "0.1s"), (3600, "3600s")])
def test_fatal_reason_formats_the_interval(interval, text):
    clock = FakeClock()
    t = tracker(clock, backoff_initial=0.0, start_limit_burst=1, start_limit_interval=interval)
    (d,) = crash_loop(t, clock, 3, runtime=0.01)
    assert d.reason == f"gave up: 1 start in {text}"


def test_format_seconds_has_no_float_noise():
    assert format_seconds(0.1 + 0.2) == "0.3s"
    assert format_seconds(60) == "60s"


def test_fatal_stays_until_reset_even_after_the_window_passes():
    clock = FakeClock()
    t = tracker(clock)
    crash_loop(t, clock, 10)
    clock.advance(3600)
    assert t.starts_in_window() == 0
    assert t.may_start() == "gave up: 5 starts in 60s"


def test_reset_clears_streak_window_and_fatal():
    clock = FakeClock()
    t = tracker(clock)
    assert crash_loop(t, clock, 10)[-1].action == "fatal"
    t.reset()
    assert t.streak == 0
    assert t.starts_in_window() == 0
    assert t.may_start() is None
    # A fresh crash loop after the operator start gets the full burst again.
    decisions = crash_loop(t, clock, 10)
    assert [d.action for d in decisions] == ["backoff"] * 4 + ["fatal"]
    assert decisions[0].delay == 0.5


def test_may_start_allows_a_fresh_program():
    t = tracker()
    assert t.may_start() is None
    assert t.starts_in_window() == 0
    t.record_start()
    assert t.starts_in_window() == 1


def test_zero_interval_disables_the_start_limit():
    clock = FakeClock()
    t = tracker(clock, start_limit_burst=1, start_limit_interval=0.0, backoff_initial=0.0)
    assert all(d.action == "backoff" for d in crash_loop(t, clock, 50))


# --- policies ----------------------------------------------------------------

@pytest.mark.parametrize("policy, exit_code, sig, action, reason", [
    ("on-failure", 0, None, "exit", "exited 0 with policy on-failure"),
    ("on-failure", 1, None, "backoff", "next start in 0.5s, failure 1 of 5"),
    ("on-failure", None, signal.SIGTERM, "backoff", "next start in 0.5s, failure 1 of 5"),
    ("on-failure", None, signal.SIGKILL, "backoff", "next start in 0.5s, failure 1 of 5"),
    ("always", 0, None, "backoff", "next start in 0.5s, failure 1 of 5"),
    ("always", 3, None, "backoff", "next start in 0.5s, failure 1 of 5"),
    ("always", None, signal.SIGTERM, "backoff", "next start in 0.5s, failure 1 of 5"),
    ("never", 0, None, "exit", "policy never"),
    ("never", 1, None, "exit", "policy never"),
    ("never", None, signal.SIGKILL, "exit", "policy never"),
])
def test_policy_table(policy, exit_code, sig, action, reason):
    t = tracker(policy=policy)
    t.record_start()
    d = t.on_exit(0.1, exit_code=exit_code, signal=sig)
    assert (d.action, d.reason) == (action, reason)
    assert d.streak == (1 if action == "backoff" else 0)
    assert t.streak == d.streak


def test_on_failure_clean_exit_after_stable_run_does_not_restart():
    t = tracker(policy="on-failure")
    t.record_start()
    assert t.on_exit(500.0, exit_code=0, signal=None).action == "exit"


def test_exit_decisions_leave_the_streak_alone():
    clock = FakeClock()
    t = tracker(clock, policy="on-failure")
    crash_loop(t, clock, 2)
    t.record_start()
    d = t.on_exit(0.1, exit_code=0, signal=None)
    assert (d.action, d.streak, t.streak) == ("exit", 2, 2)


def test_backoff_reason_names_delay_streak_and_burst():
    clock = FakeClock()
    t = tracker(clock, backoff_initial=0.8)
    decisions = crash_loop(t, clock, 3)
    assert decisions[-1].reason == "next start in 3.2s, failure 3 of 5"


def test_decision_is_frozen():
    d = tracker().on_exit(0.1, 1, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.delay = 0.0  # type: ignore[misc]


def test_accepts_the_config_restart_policy():
    t = RestartTracker(config.RestartPolicy(jitter=0.1), clock=FakeClock(), rng=fixed(1.0))
    t.record_start()
    d = t.on_exit(0.1, exit_code=None, signal=signal.SIGTERM)
    assert (d.action, d.streak) == ("backoff", 1)
    assert d.delay == pytest.approx(0.55)


# --- no start limit (Redis' default) ----------------------------------------------

def test_start_limit_burst_0_never_gives_up_and_caps_the_delay():
    clock = FakeClock()
    t = tracker(clock, start_limit_burst=0, backoff_initial=0.2, backoff_max=30.0)
    decisions = crash_loop(t, clock, 100)
    assert len(decisions) == 100 and all(d.action == "backoff" for d in decisions)
    assert max(d.delay for d in decisions) == 30.0 and t.gave_up is None
    assert decisions[-1].reason == "flapping: next start in 30.0s, failure 100, no start limit"


def test_flapping_is_said_from_the_third_failure_only_without_a_limit():
    clock = FakeClock()
    unlimited = crash_loop(tracker(clock, start_limit_burst=0), clock, 4)
    assert [d.flapping for d in unlimited] == [False, False, True, True]
    assert unlimited[1].reason == "next start in 1.0s, failure 2, no start limit"
    clock = FakeClock()
    limited = crash_loop(tracker(clock, start_limit_burst=5), clock, 4)
    assert not any(d.flapping for d in limited) and limited[2].reason.endswith("failure 3 of 5")


def test_a_stable_run_ends_the_flapping():
    clock = FakeClock()
    t = tracker(clock, start_limit_burst=0, stable_after=10.0)
    assert crash_loop(t, clock, 5)[-1].flapping
    t.record_start()
    d = t.on_exit(11.0, exit_code=None, signal=signal.SIGKILL)
    assert (d.action, d.streak, d.flapping) == ("restart", 0, False)


def test_start_limit_burst_must_not_be_negative(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[program]]\nname = "a"\ncommand = ["true"]\n[program.restart]\nstart_limit_burst = -1\n')
    with pytest.raises(config.ConfigError, match=r"c\.toml:5: 'start_limit_burst' must be 0 \(no start limit\)"):
        config.load_config(path)
