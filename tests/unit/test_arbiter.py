"""The arbiter's rules, in-process: a fake spawner and a fake clock, no process, no sleep."""
from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest
from support.fakes import Rig, exit_status, kill_status

from relayq_supervisor.control import operator
from relayq_supervisor.core import reload
from relayq_supervisor.core.states import TRANSITIONS, IllegalTransition, State
from relayq_supervisor.errors import UnknownProgram
from relayq_supervisor.kinds import StopCalls
from relayq_supervisor.kinds.exec import ExecKind

BASE = """
[[program]]
name = "db"
command = ["sleep", "1000"]
ready_after = 0.5
[program.restart]
backoff_initial = 1.0
backoff_factor = 2.0
backoff_max = 4.0
jitter = 0.0
stable_after = 10.0
start_limit_burst = 3
start_limit_interval = 60.0

[[program]]
name = "worker"
command = ["sleep", "1000"]
numprocs = 2
depends_on = ["db"]
ready_after = 0.2
stop_timeout = 5
[program.restart]
jitter = 0.0
"""


def started(rig: Rig) -> Rig:
    rig.arbiter.reconcile()
    return rig


def run(coro):
    return asyncio.run(coro)


async def settle(rounds: int = 5) -> None:
    """Let the tasks the arbiter started (gather, operator jobs) take their next steps."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def test_dependencies_start_first_and_dependents_wait_until_running():
    rig = started(Rig(BASE))
    assert rig.states() == {"db": "STARTING", "worker:0": "STOPPED", "worker:1": "STOPPED"}
    assert rig.program("worker:0").reason == "waiting for db"
    rig.clock.advance(0.5)                      # db alive for ready_after
    assert rig.state("db") == "RUNNING"
    assert rig.states()["worker:0"] == "STARTING" and rig.states()["worker:1"] == "STARTING"
    rig.clock.advance(0.2)
    assert set(rig.states().values()) == {"RUNNING"}
    assert [e["program"] for e in rig.events_of("spawn")] == ["db", "worker:0", "worker:1"]


def test_children_get_their_environment():
    text = BASE.replace('numprocs = 2', 'numprocs = 2\nenvironment = { MODE = "fast" }')
    rig = started(Rig(text))
    rig.clock.advance(0.5)
    env = rig.child("worker:1").env
    assert env["RELAYQ_PROGRAM"] == "worker:1" and env["MODE"] == "fast" and env["PATH"] == "/usr/bin"


def test_ready_notification_beats_ready_after():
    rig = started(Rig(BASE))
    rig.arbiter.notified(rig.child("db").pid, {"READY": "1", "STATUS": "loaded"})
    assert rig.state("db") == "RUNNING"
    assert rig.program("db").reason == "sent READY=1"
    assert rig.program("db").notify_status == "loaded"
    rig.clock.advance(1.0)                      # the cancelled ready_after timer changes nothing
    assert rig.program("db").reason == "sent READY=1"


def test_quick_exits_back_off_exponentially_then_give_up():
    rig = started(Rig(BASE))
    delays = []
    for _ in range(3):
        rig.exit("db", exit_status(1))
        p = rig.program("db")
        if p.state != State.BACKOFF:
            break
        delays.append(p.next_start_at - rig.clock.now)
        rig.clock.advance(delays[-1])
        assert p.state == State.STARTING
    assert delays == [1.0, 2.0]
    assert rig.state("db") == "FATAL"
    assert rig.program("db").reason.startswith("gave up: 3 starts in 60s")
    assert rig.events_of("gave_up")[0]["program"] == "db"
    assert [e["delay_s"] for e in rig.events_of("backoff")] == [1.0, 2.0]


def test_stable_run_restarts_at_once_and_resets_the_streak():
    rig = started(Rig(BASE))
    rig.clock.advance(0.5)
    first = rig.child("db").pid
    rig.clock.advance(20)                       # longer than stable_after
    rig.exit("db", kill_status(signal.SIGKILL))
    assert rig.state("db") == "STARTING"
    assert rig.child("db").pid != first
    assert rig.program("db").restarts == 1 and rig.program("db").tracker.streak == 0
    assert "killed by SIGKILL, sender not visible to the tap" in rig.program("db").last_exit.describe()


def test_policy_never_leaves_it_exited_and_operator_start_revives():
    text = BASE.replace("jitter = 0.0\nstable_after", 'policy = "never"\njitter = 0.0\nstable_after', 1)
    rig = started(Rig(text))
    rig.exit("db", exit_status(0))
    assert rig.state("db") == "EXITED"

    async def scenario():
        job = asyncio.ensure_future(operator.start(rig.arbiter, [rig.program("db")], "test"))
        await settle()
        assert rig.state("db") == "STARTING"
        rig.clock.advance(0.5)
        await job
    run(scenario())
    assert rig.state("db") == "RUNNING"


def test_operator_start_of_fatal_program_resets_its_window():
    rig = started(Rig(BASE))
    for _ in range(3):
        rig.exit("db", exit_status(1))
        rig.clock.advance(5)
    assert rig.state("db") == "FATAL"

    async def scenario():
        job = asyncio.ensure_future(operator.start(rig.arbiter, [rig.program("worker:0")], "test"))
        await settle()
        rig.clock.advance(0.5)                  # db RUNNING, then worker:0 starts
        rig.clock.advance(0.2)
        await job
    run(scenario())
    assert rig.state("db") == "RUNNING" and rig.state("worker:0") == "RUNNING"
    assert rig.program("db").tracker.streak == 0


def test_stop_sends_stop_signal_then_sigkill_after_timeout():
    rig = started(Rig(BASE))
    rig.clock.advance(0.7)
    worker = rig.program("worker:0")
    child = rig.child("worker:0")

    async def scenario():
        job = asyncio.ensure_future(rig.arbiter.want_stopped([worker], "test stop"))
        await settle()
        assert worker.state == State.STOPPING and child.signals == [signal.SIGTERM]
        rig.clock.advance(5)                    # stop_timeout
        assert child.group_killed
        rig.exit("worker:0", kill_status(signal.SIGKILL))
        await job
    run(scenario())
    assert worker.state == State.STOPPED and not worker.wanted
    assert "SIGKILL after stop_timeout 5s" in worker.last_exit.describe()
    reasons = [fields.get("reason") for name, pid, signo, fields in rig.witness.records]
    assert reasons == ["test stop", "stop-timeout-kill"]
    rig.clock.advance(100)
    assert worker.state == State.STOPPED        # a stopped program stays stopped


def test_shutdown_stops_dependents_before_dependencies():
    rig = started(Rig(BASE))
    rig.clock.advance(0.7)
    order = []

    async def scenario():
        job = asyncio.ensure_future(rig.arbiter.shutdown())
        for _ in range(10):
            await settle()
            for name in ("worker:0", "worker:1", "db"):
                p = rig.program(name)
                if p.state == State.STOPPING:
                    order.append(name)
                    rig.exit(name, kill_status(signal.SIGTERM))
        await job
    run(scenario())
    assert sorted(order[:2]) == ["worker:0", "worker:1"] and order[2] == "db"
    assert set(rig.states().values()) == {"STOPPED"}
    assert sorted(rig.spawner.released) == ["db", "worker:0", "worker:1"]


def test_exit_during_shutdown_is_not_restarted():
    rig = started(Rig(BASE))
    rig.arbiter.shutting_down = True
    rig.exit("db", exit_status(1))
    assert rig.state("db") == "STOPPED"
    assert len(rig.spawner.of("db")) == 1


def test_spawn_failure_is_fatal_with_the_reason():
    rig = Rig(BASE)
    rig.spawner.fail_with = OSError(2, "No such file or directory")
    rig.arbiter.reconcile()
    assert rig.state("db") == "FATAL"
    assert rig.program("db").reason == "cannot start: No such file or directory"


def test_exec_failure_is_named_in_the_exit():
    rig = started(Rig(BASE))
    rig.child("db").exec_failure = "exec of sleep failed: Permission denied"
    rig.exit("db", exit_status(127))
    assert rig.program("db").last_exit.describe() == "exited 127, exec of sleep failed: Permission denied"


def test_unknown_names_are_refused_and_groups_expand():
    rig = Rig(BASE)
    assert [p.name for p in rig.arbiter.graph.resolve(["worker"])] == ["worker:0", "worker:1"]
    assert [p.name for p in rig.arbiter.graph.resolve(["worker:1", "db"])] == ["worker:1", "db"]
    with pytest.raises(UnknownProgram, match="unknown program name 'nope' \\(known: db, worker"):
        rig.arbiter.graph.resolve(["nope"])
    assert [p.name for p in rig.arbiter.graph.with_dependents(rig.arbiter.graph.resolve(["db"]))] == \
        ["db", "worker:0", "worker:1"]


def test_every_transition_is_in_the_table():
    rig = Rig(BASE)
    p = rig.program("db")
    with pytest.raises(IllegalTransition, match="db: STOPPED -> RUNNING"):
        p.ready("impossible")
    assert State.STOPPED in TRANSITIONS[State.STOPPING] and len(TRANSITIONS[State.STOPPING]) == 1
    assert set(TRANSITIONS) == set(State)


def test_reload_diff_names_what_changed():
    old = Rig(BASE).config
    text = BASE.replace('numprocs = 2', 'numprocs = 3').replace('ready_after = 0.5', 'ready_after = 0.6') + """
[[program]]
name = "extra"
command = ["sleep", "1"]
"""
    new = Rig(text).config
    changes = reload.diff(old, new)
    assert (changes.added, changes.removed, changes.changed, changes.resized) == (["extra"], [], ["db"], ["worker"])
    assert changes.going(old, new) == {"db"}
    shrink = Rig(BASE.replace('numprocs = 2', 'numprocs = 3')).config
    assert reload.diff(shrink, old).going(shrink, old) == {"worker:2"}


def test_reload_applies_only_the_difference():
    rig = started(Rig(BASE))
    rig.clock.advance(0.7)
    kept = rig.child("worker:0").pid
    new = Rig(BASE.replace('numprocs = 2', 'numprocs = 3')).config
    changes = reload.diff(rig.config, new)
    run(rig.arbiter.apply(new, changes, rig.arbiter.kinds))
    assert rig.child("worker:0").pid == kept
    assert rig.state("worker:2") == "STARTING"
    assert [p.name for p in rig.arbiter.programs] == ["db", "worker:0", "worker:1", "worker:2"]


WATCHED = """
[[program]]
name = "w"
command = ["sleep", "1000"]
ready_after = 0.5
watchdog_sec = 3
stop_timeout = 4
max_rss = "1MiB"
[program.restart]
jitter = 0.0
stable_after = 1.0
"""


def test_watchdog_fires_after_silence_with_evidence_and_counts_as_failure():
    rig = started(Rig(WATCHED))
    rig.clock.advance(0.5)
    w = rig.program("w")
    child = rig.child("w")
    assert child.env["WATCHDOG_USEC"] == "3000000"
    for _ in range(3):                          # pings keep it alive past watchdog_sec
        rig.clock.advance(2.0)
        rig.arbiter.notified(child.pid, {"WATCHDOG": "1"})
    assert w.state == State.RUNNING and child.signals == []
    rig.clock.advance(3.0)                      # silent for watchdog_sec
    assert child.signals == [signal.SIGABRT]
    event = rig.events_of("watchdog")[0]
    assert event["cause"].startswith("watchdog: no WATCHDOG=1 for 3.0s")
    assert event["evidence"]["wchan"] == "ep_poll" and "(state sleeping, wchan ep_poll)" in event["cause"]
    rig.clock.advance(4.0)                      # stop_timeout after the watchdog signal
    assert child.group_killed
    rig.exit("w", kill_status(signal.SIGKILL))
    assert w.state == State.BACKOFF and w.tracker.streak == 1   # a long run, still a failure
    assert w.last_exit.describe().startswith("killed by SIGKILL, watchdog: no WATCHDOG=1")


def test_watchdog_trigger_fires_at_once_and_usec_retimes():
    rig = started(Rig(WATCHED))
    rig.clock.advance(0.5)
    child = rig.child("w")
    rig.arbiter.notified(child.pid, {"WATCHDOG_USEC": "1000000"})
    rig.clock.advance(1.1)
    assert child.signals == [signal.SIGABRT]
    assert "watchdog_sec 1" in rig.events_of("watchdog")[0]["cause"]
    rig.exit("w", kill_status(signal.SIGABRT))
    rig.clock.advance(1.0)                      # backoff over: a new run
    rig.clock.advance(0.5)
    second = rig.child("w")
    rig.arbiter.notified(second.pid, {"WATCHDOG": "trigger"})
    assert second.signals == [signal.SIGABRT]
    assert rig.events_of("watchdog")[1]["cause"].startswith("watchdog: WATCHDOG=trigger")


def test_max_rss_fires_on_the_second_reading_over():
    rig = started(Rig(WATCHED.replace("watchdog_sec = 3", "watchdog_sec = 0")))
    rig.clock.advance(0.5)
    child = rig.child("w")
    rig.probe.rss_by_pid[child.pid] = 2 * 2**20
    rig.clock.advance(5.0)
    assert child.signals == []                  # one reading over the line is not enough
    rig.clock.advance(5.0)
    assert child.signals == [signal.SIGABRT]
    assert rig.events_of("watchdog")[0]["cause"].startswith("rss 2.0 MiB over max_rss 1.0 MiB")


def test_stopping_disarms_the_watchdog():
    rig = started(Rig(WATCHED))
    rig.clock.advance(0.5)
    w, child = rig.program("w"), rig.child("w")

    async def scenario():
        job = asyncio.ensure_future(rig.arbiter.want_stopped([w], "test"))
        await settle()
        rig.clock.advance(10)                   # past watchdog_sec while stopping
        rig.exit("w", kill_status(signal.SIGTERM))
        await job
    run(scenario())
    assert child.signals == [signal.SIGTERM] and rig.events_of("watchdog") == []
# --- a kind whose stop can be refused (Redis' SHUTDOWN SAVE on a full disk) ------------------

class SavingKind(ExecKind):
    """ExecKind whose stop is a request the test answers: refused (with a cause) or not."""
    kill_on_stop_timeout = False
    ready_by_notify = False

    def __init__(self, spec, ctx):
        super().__init__(spec, ctx)
        self.stops: list[StopCalls] = []
        self.refuse: Callable[[str], None] | None = None

    def stop_method(self, save: bool) -> str:
        return "SHUTDOWN SAVE" if save else "SHUTDOWN NOSAVE"

    def begin_stop(self, p, calls: StopCalls):
        self.stops.append(calls)
        return None

    def begin_ready_check(self, p, on_ready, on_refused):
        self.refuse = on_refused
        return super().begin_ready_check(p, on_ready, on_refused)


def saving_rig() -> tuple[Rig, SavingKind]:
    rig = Rig(BASE)
    kind = SavingKind(rig.config.program("db"), rig.ctx)
    rig.arbiter.kinds["db"] = kind
    return started(rig), kind


def test_a_refused_stop_is_reported_never_killed_and_stop_force_kills():
    rig, kind = saving_rig()
    rig.clock.advance(0.5)
    db, child = rig.program("db"), rig.child("db")

    async def scenario():
        job = asyncio.ensure_future(rig.arbiter.want_stopped([db], "test stop"))
        await settle()
        assert db.state == State.STOPPING and "SHUTDOWN SAVE to pid" in db.reason and child.signals == []
        kind.stops[-1].refused("its final save failed: No space left on device")
        await job                               # the operator's stop returns: it keeps running
        assert db.state == State.STOPPING and db.proc is child
        assert "stop refused, it keeps running: its final save failed: No space" in db.reason
        assert rig.events_of("stop_refused")[0]["cause"].endswith("No space left on device")
        rig.clock.advance(3600)                 # far beyond stop_timeout: still no kill
        assert not child.group_killed and db.state == State.STOPPING
        retry = asyncio.ensure_future(rig.arbiter.want_stopped([db], "again"))
        await settle()
        assert len(kind.stops) == 2 and db.stop_refused is None     # tried again
        kind.stops[-1].refused("its final save failed: still full")
        await retry
        force = asyncio.ensure_future(rig.arbiter.want_stopped([db], "operator --force", force=True))
        await settle()
        assert child.group_killed
        rig.exit("db", kill_status(signal.SIGKILL))
        await force
    run(scenario())
    assert db.state == State.STOPPED and "SIGKILL by operator --force" in db.last_exit.describe()
    assert [f["reason"] for _, _, signo, f in rig.witness.records if signo == signal.SIGKILL] == ["operator --force"]


def test_a_slow_stop_is_reported_and_waited_for_without_a_kill():
    rig, kind = saving_rig()
    rig.clock.advance(0.5)
    db, child = rig.program("db"), rig.child("db")

    async def scenario():
        rig.arbiter.begin_stop(db, "test")
        rig.clock.advance(db.spec.stop_timeout)
        assert rig.events_of("stop_slow") and not child.group_killed
        rig.exit("db", exit_status(0))          # the save finished late
    run(scenario())
    assert db.state == State.STOPPED


def test_refused_after_start_stops_without_a_save_then_fatal_until_an_operator_start():
    rig, kind = saving_rig()
    db = rig.program("db")
    assert kind.refuse is not None
    rig.arbiter.notified(rig.child("db").pid, {"READY": "1"})   # its own READY=1 does not count
    assert db.state == State.STARTING

    async def scenario():
        kind.refuse("persistence setting 'appendonly' is 'no' in Redis but the config asks 'yes'")
        assert db.state == State.STOPPING and "SHUTDOWN NOSAVE" in db.reason and not kind.stops[-1].save
        rig.exit("db", exit_status(0))
    run(scenario())
    assert db.state == State.FATAL and "'appendonly' is 'no'" in db.reason
    assert rig.events_of("refused")[0]["reason"] == db.reason
    rig.arbiter.want_started([db], "operator")
    assert db.state == State.STARTING and db.refused_start is None


def restart_workers(rig: Rig, during: Callable[[], None]) -> list[operator.Outcome]:
    """`relayqctl restart worker` with both instances RUNNING: each is stopped, started again,
    and `during()` runs once both new processes are STARTING."""
    rig.clock.advance(0.7)
    assert rig.state("worker:0") == rig.state("worker:1") == "RUNNING"
    workers = [rig.program("worker:0"), rig.program("worker:1")]

    async def scenario():
        job = asyncio.ensure_future(operator.restart(rig.arbiter, workers, "test"))
        await settle()
        for name in ("worker:0", "worker:1"):
            rig.exit(name, kill_status(signal.SIGTERM))
        await settle()
        assert rig.state("worker:0") == rig.state("worker:1") == "STARTING"
        during()
        await settle()
        rig.clock.advance(0.2)          # ready_after: worker:0 is RUNNING
        await settle()
        assert job.done(), "the restart must not wait for a backoff"
        return job.result()
    return run(scenario())


def test_restart_says_which_instance_died_during_it_and_waits_for_no_backoff():
    rig = started(Rig(BASE))
    outcomes = restart_workers(rig, lambda: (rig.clock.advance(0.1), rig.exit("worker:1", kill_status(signal.SIGKILL))))
    first, second = outcomes
    assert (first.name, first.ok, first.detail) == ("worker:0", True, f"running, pid {rig.program('worker:0').pid}")
    assert (second.name, second.state, second.ok) == ("worker:1", "BACKOFF", False)
    assert "died during the start: killed by SIGKILL" in second.detail, second.detail
    assert "now BACKOFF, next start in 0.4s, failure 1 of 5" in second.detail, second.detail


FAST_BACKOFF = BASE.replace("ready_after = 0.2\nstop_timeout = 5\n[program.restart]\n",
                            "ready_after = 0.2\nstop_timeout = 5\n[program.restart]\nbackoff_initial = 0.05\n")


def test_restart_reports_an_instance_started_again_but_not_ready_yet():
    rig = started(Rig(FAST_BACKOFF))

    def die_and_come_back():
        dead = rig.exit("worker:1", kill_status(signal.SIGKILL)).pid
        rig.clock.advance(0.05)         # its backoff: started again
        assert rig.state("worker:1") == "STARTING" and rig.child("worker:1").pid != dead
    outcomes = restart_workers(rig, die_and_come_back)
    assert [o.ok for o in outcomes] == [True, False]    # worker:1 is not ready yet when worker:0 is
    assert "died during the start: killed by SIGKILL" in outcomes[1].detail
    assert f"now started again, pid {rig.program('worker:1').pid}, not ready yet" in outcomes[1].detail


def test_restart_is_ok_when_an_instance_that_died_runs_again_at_the_end():
    rig = started(Rig(FAST_BACKOFF))

    def die_and_come_back_ready():
        rig.exit("worker:1", kill_status(signal.SIGKILL))
        rig.clock.advance(0.05)
        rig.arbiter.notified(rig.child("worker:1").pid, {"READY": "1"})
        assert rig.state("worker:1") == "RUNNING"
    outcomes = restart_workers(rig, die_and_come_back_ready)
    assert [o.ok for o in outcomes] == [True, True]
    assert outcomes[1].detail.startswith(f"running, pid {rig.program('worker:1').pid} (again, after pid ")
    assert "died during the start: killed by SIGKILL" in outcomes[1].detail


def test_a_restart_at_once_spawns_before_the_exit_is_judged_and_records_in_order():
    """The successor is started first; then the witnesses' backlog (here: the signal that
    killed it, as the kernel trace would deliver it) names the sender in the exit."""
    rig = started(Rig(BASE))
    rig.clock.advance(20)                       # stable: restarts at once
    db = rig.program("db")
    first = rig.child("db")
    seen: dict[str, object] = {}

    def catch_up() -> None:
        seen["spawned"] = len(rig.spawner.of("db"))
        seen["owner"] = rig.arbiter.program_of_pid(first.pid)     # a late trace line still finds db
        db.signalled({"signal": "SIGKILL", "signo": signal.SIGKILL, "sender": {"pid": 4242},
                      "describe": "pid 4242 kill -9"})
    rig.witness.catch_up = catch_up             # type: ignore[method-assign]
    rig.events.clear()
    rig.exit("db", kill_status(signal.SIGKILL))
    assert seen == {"spawned": 2, "owner": db}
    assert [e["event"] for e in rig.events] == ["exit", "spawn"]
    assert rig.events[0]["sender"] == {"pid": 4242} and "from pid 4242 kill -9" in rig.events[0]["note"]
    assert rig.events[1]["pid"] == rig.child("db").pid != first.pid
    assert rig.state("db") == "STARTING" and db.restarts == 1
    assert rig.arbiter.program_of_pid(first.pid) is None and rig.arbiter.program_of_pid(rig.child("db").pid) is db


def test_an_exit_that_backs_off_or_waits_spawns_nothing_before_it_is_judged():
    rig = started(Rig(BASE))
    rig.clock.advance(0.5)                      # db RUNNING, workers started
    spawned: list[int] = []
    rig.witness.catch_up = lambda: spawned.append(len(rig.spawner.children))    # type: ignore[method-assign]
    before = len(rig.spawner.children)
    rig.exit("db", exit_status(1))              # quick failure: a backoff delay
    assert spawned == [before] and rig.state("db") == "BACKOFF"
    assert len(rig.spawner.children) == before
