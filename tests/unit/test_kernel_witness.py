"""The kernel witness without a kernel: trace_pipe lines as the kernel prints them (recorded
on 6.x with record-tgid on and off), the bounded process history, naming a sender that is
gone, and what attribution does with what the witness saw.

Pids of "gone" processes are above any pid_max (4194304), so /proc can never answer for them.
"""
from __future__ import annotations

import signal
from typing import Any

import pytest

from relayq_supervisor.linux import tracefs as tracefs_files
from relayq_supervisor.linux.siginfo import SI_USER, Siginfo
from relayq_supervisor.witness import history, trace_instance, tracefs
from relayq_supervisor.witness.attribution import Attribution, attribute_exit
from relayq_supervisor.witness.history import ProcessHistory
from relayq_supervisor.witness.trace_instance import filter_expression
from relayq_supervisor.witness.trace_lines import KernelSignal, Lost, TraceLine, parse_line, parse_oom, parse_signal
from relayq_supervisor.witness.tracefs import KernelWitness

GONE = 4_200_000            # > PID_MAX_LIMIT: never a live pid
SH, SCRIPT, TIMER = GONE + 1, GONE + 2, GONE + 3


def line(task: str, tid: int, ts: float, event: str, body: str, tgid: int | None | str = "none") -> str:
    tg = "" if tgid == "none" else ("(-------) " if tgid is None else f"({tgid:>7}) ")
    return f"{task:>16}-{tid:<7} {tg}[001] d..1.  {ts:.6f}: {event}: {body}"


# --- parsing ----------------------------------------------------------------------------------

def test_header_without_and_with_tgid():
    plain = parse_line("              sh-30529   [001] d..1.  1651.658289: signal_generate: sig=18 errno=0 "
                       "code=0 comm=bash pid=25772 grp=1 res=1")
    assert plain == TraceLine(task="sh", tid=30529, tgid=None, ts=1651.658289, event="signal_generate",
                              body="sig=18 errno=0 code=0 comm=bash pid=25772 grp=1 res=1", flags="d..1.")
    threaded = parse_line("         python3-8150    (   8109) [001] d..1.  1906.628151: signal_generate: sig=18 "
                          "errno=0 code=0 comm=bash pid=25772 grp=1 res=1")
    assert (threaded.tid, threaded.tgid) == (8150, 8109)     # the thread sent it; its process is 8109
    unknown = parse_line("          <idle>-0       (-------) [001] ..s1.  1906.644252: sched_process_free: "
                         "comm=python3 pid=8150 prio=120")
    assert (unknown.task, unknown.tid, unknown.tgid) == ("<idle>", 0, None)


def test_task_names_with_dashes_and_spaces():
    t = parse_line(line("kworker/0:1-events", 99, 5.0, "sched_process_exit", "comm=x pid=99 prio=120"))
    assert (t.task, t.tid) == ("kworker/0:1-events", 99)
    t = parse_line(line("my prog-2", 4242, 5.0, "sched_process_exit", "comm=x pid=4242 prio=120"))
    assert (t.task, t.tid) == ("my prog-2", 4242)


def test_signal_body_with_spaces_in_the_target_comm():
    t = parse_line(line("kill", 700, 12.5, "signal_generate",
                        "sig=9 errno=0 code=0 comm=redis server pid=812 grp=1 res=0", tgid=700))
    s = parse_signal(t)
    assert (s.signo, s.code, s.target_comm, s.target_pid, s.group, s.result, s.sender_pid) == \
        (9, 0, "redis server", 812, True, 0, 700)


def test_lost_events_and_noise():
    assert parse_line("CPU:1 [LOST 1234 EVENTS]") == Lost(cpu=1, count=1234)
    assert parse_line("# tracer: nop") is None
    assert parse_line("") is None
    assert parse_signal(TraceLine("x", 1, None, 1.0, "signal_generate", "sig=nonsense")) is None


def test_oom_victim_line():
    t = parse_line(line("stress", 500, 3.0, "mark_victim",
                        "pid=812 comm=redis-server total-vm=1048576kB anon-rss=831488kB file-rss:0kB "
                        "shmem-rss:0kB uid=0 pgtables=2048kB oom_score_adj=0"))
    victim = parse_oom(t)
    assert (victim.pid, victim.comm, victim.anon_rss_kb) == (812, "redis-server", 831488)
    assert victim.describe() == "the kernel's OOM killer (anon-rss 812 MiB)"
    old_kernel = parse_oom(TraceLine("x", 1, None, 1.0, "mark_victim", "pid=812"))
    assert old_kernel.describe() == "the kernel's OOM killer"


def test_filter_expression_follows_pids_and_skips_sigchld():
    assert filter_expression([813, 812, 812]) == "sig != 17 && (pid == 812 || pid == 813)"
    assert filter_expression([]) == "pid == 0"


# --- the history ----------------------------------------------------------------------------

def test_history_fork_exec_exit_and_pid_reuse():
    h = ProcessHistory()
    h.forked(1.0, parent=100, child=200, comm="bash")
    h.execed(1.1, 200, "/usr/bin/kill", None)
    assert (h.get(200).comm, h.get(200).filename, h.get(200).ppid) == ("kill", "/usr/bin/kill", 100)
    h.exited_at(1.2, 200, "kill")
    assert h.get(200).exit == 1.2
    h.forked(2.0, parent=300, child=200, comm="python3")     # the pid, reused
    r = h.get(200)
    assert (r.ppid, r.comm, r.filename, r.exit, r.start) == (300, "python3", None, None, 2.0)


def test_history_is_bounded_by_count_and_by_age_after_exit():
    h = ProcessHistory(max_processes=3, max_age=10.0)
    for i in range(5):
        h.forked(float(i), parent=1, child=1000 + i, comm="x")
    assert sorted(h.records) == [1002, 1003, 1004]            # the oldest went first
    h.exited_at(5.0, 1002, "x")
    h.forked(30.0, parent=1, child=2000, comm="y")            # long after: the exited one ages out
    assert h.get(1002) is None and h.get(1003) is not None    # never-exited ones stay until pushed out


# --- naming from the trace --------------------------------------------------------------------

class Collect:
    def __init__(self) -> None:
        self.signals: list[KernelSignal] = []
        self.ooms: list[Any] = []


def witness(collect: Collect) -> KernelWitness:
    return KernelWitness(collect.signals.append, collect.ooms.append)


def feed(w: KernelWitness, *lines: str) -> None:
    w.feed(("\n".join(lines) + "\n").encode())


def test_a_gone_sender_is_named_with_its_parent_chain():
    c = Collect()
    w = witness(c)
    feed(w,
         line("bash", TIMER, 10.0, "sched_process_fork", f"comm=bash pid={TIMER} child_comm=bash child_pid={SCRIPT}"),
         line("check-redis.sh", SCRIPT, 10.1, "sched_process_exec",
              f"filename=/opt/relayq/bin/check-redis.sh pid={SCRIPT} old_pid={SCRIPT}"),
         line("check-redis.sh", SCRIPT, 10.2, "sched_process_fork",
              f"comm=check-redis.sh pid={SCRIPT} child_comm=check-redis.sh child_pid={SH}"),
         line("sh", SH, 10.3, "sched_process_exec", f"filename=/bin/sh pid={SH} old_pid={SH}"),
         line("sh", SH, 10.301, "signal_generate", "sig=9 errno=0 code=0 comm=redis-server pid=812 grp=1 res=0",
              tgid=SH),
         line("sh", SH, 10.302, "sched_process_exit", f"comm=sh pid={SH} prio=120 group_dead=true"))
    [seen] = c.signals
    assert (seen.signal, seen.target_pid, seen.sender_pid, seen.result_name, seen.code_name) == \
        ("SIGKILL", 812, SH, "delivered", "SI_USER")
    s = seen.sender
    assert (s["pid"], s["comm"], s["exe"], s["alive"], s["seen_by"]) == (SH, "sh", "/bin/sh", False, "tracefs")
    assert [(a["pid"], a["comm"], a["exe"]) for a in s["ancestry"]] == \
        [(SCRIPT, "check-redis.sh", "/opt/relayq/bin/check-redis.sh"), (TIMER, "bash", None)]
    assert history.lineage_text(s) == \
        f"pid {SH} sh <- pid {SCRIPT} /opt/relayq/bin/check-redis.sh <- pid {TIMER} bash"


def test_lineage_after_an_overrun_says_it_may_be_incomplete():
    c = Collect()
    w = witness(c)
    feed(w, "CPU:0 [LOST 50 EVENTS]",
         line("sh", SH, 10.0, "sched_process_fork", f"comm=sh pid={SCRIPT} child_comm=sh child_pid={SH}"),
         line("sh", SH, 10.1, "signal_generate", "sig=15 errno=0 code=0 comm=w pid=812 grp=1 res=0"))
    assert w.stats()["lost"] == 50
    assert c.signals[0].sender["note"].endswith(history.OVERRUN_NOTE)


def test_a_live_sender_is_read_from_proc():
    import os
    c = Collect()
    w = witness(c)
    w.self_pid = -1         # this test process plays the sender, not the supervisor
    now = tracefs.time.clock_gettime(tracefs.time.CLOCK_BOOTTIME)
    feed(w, line("python3", os.getpid(), now, "signal_generate", "sig=10 errno=0 code=0 comm=x pid=812 grp=1 res=0"))
    s = c.signals[0].sender
    assert (s["pid"], s["alive"], s["seen_by"]) == (os.getpid(), True, "procfs")
    assert s["cmdline"]                                     # only /proc has the argv


def test_kernel_sent_and_own_signals():
    import os
    c = Collect()
    w = witness(c)
    feed(w,
         line("stress", GONE, 3.0, "signal_generate", "sig=9 errno=0 code=128 comm=redis-server pid=812 grp=1 res=0"),
         line("python3", os.getpid(), 3.1, "signal_generate", "sig=15 errno=0 code=0 comm=w pid=813 grp=1 res=0",
              tgid=os.getpid()))
    [kernel] = c.signals                                      # our own SIGTERM is not reported
    assert kernel.sender is None and kernel.sender_pid is None   # the running task is not blamed
    assert (kernel.code_name, kernel.context) == ("SI_KERNEL", f"stress-{GONE}")


def test_a_thread_exit_is_not_its_process_exit_and_lines_split_across_reads():
    c = Collect()
    w = witness(c)
    feed(w, line("bash", SCRIPT, 1.0, "sched_process_fork", f"comm=bash pid={SCRIPT} child_comm=py child_pid={SH}"))
    text = line("py", SH, 1.5, "sched_process_exit", f"comm=py pid={SH} prio=120 group_dead=false") + "\n"
    w.feed(text[:20].encode())
    w.feed(text[20:].encode())
    assert w.history.get(SH).exit is None
    assert w.lines == 2


# --- attribution ----------------------------------------------------------------------------------

class Prog:
    def __init__(self, name: str, protected: bool = False):
        self.name, self.protected = name, protected
        self.last_signal: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []

    def signalled(self, record: dict[str, Any]) -> None:
        self.last_signal = record

    def remember(self, event: dict[str, Any]) -> None:
        self.events.append(event)


class Sup:
    def __init__(self, tap_active: bool):
        self.tap_active = tap_active            # the tap seized Redis
        self.shutting_down = False
        self.redis = Prog("redis", protected=True)
        self.worker = Prog("worker", protected=False)      # pid 900: never seized where the witness runs
        self.audited: list[tuple[str, dict[str, Any]]] = []

    def program_of_pid(self, pid: int | None) -> Prog | None:
        return self.redis if pid == 812 else self.worker if pid == 900 else None

    def traced(self, pid: int) -> bool:
        return self.tap_active and pid == 812

    def request_shutdown(self, why: str) -> None:
        raise AssertionError(why)

    def audit(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.audited.append((kind, fields))
        return {"event": kind, **fields}

    def count_blocked(self) -> None:
        pass


def gone_sender(pid: int = SH) -> dict[str, Any]:
    return {"pid": pid, "comm": "sh", "exe": "/bin/sh", "alive": False, "note": history.GONE_NOTE,
            "seen_by": "tracefs", "ancestry": [{"pid": SCRIPT, "comm": "bash", "cmdline": [], "exe": None}]}


def kernel_signal(signo: int, *, code: int = 0, sender: dict[str, Any] | None = None, result: int = 0) -> KernelSignal:
    now = tracefs.time.clock_gettime(tracefs.time.CLOCK_BOOTTIME)
    return KernelSignal(ts=now, signo=signo, code=code, target_pid=812, result=result,
                        sender_pid=sender["pid"] if sender else None, sender=sender)


def test_sigkill_is_recorded_via_tracefs_and_names_the_exit():
    sup = Sup(tap_active=True)
    a = Attribution(sup, ("SIGCHLD",))
    a.on_kernel_signal(kernel_signal(signal.SIGKILL, sender=gone_sender()))
    [(kind, event)] = sup.audited
    assert (kind, event["via"], event["signal"], event["action"], event["sender"]["pid"]) == \
        ("signal", "tracefs", "SIGKILL", "delivered", SH)
    detail, sender = attribute_exit(sup.redis.last_signal, signal.SIGKILL, traced=True)
    assert detail == f"from pid {SH} sh <- pid {SCRIPT} bash" and sender["pid"] == SH


def test_a_kernel_sigkill_and_the_oom_killer_are_not_a_human():
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    a.on_kernel_signal(kernel_signal(signal.SIGKILL, code=0x80))
    assert sup.audited[0][1]["sender"] is None and sup.audited[0][1]["code"] == "SI_KERNEL"
    assert attribute_exit(sup.redis.last_signal, signal.SIGKILL, True)[0] == "from the kernel (SI_KERNEL)"
    a.on_oom_victim(parse_oom(TraceLine("x", 1, None, 1.0, "mark_victim",
                                        "pid=812 comm=redis-server total-vm=9kB anon-rss=831488kB file-rss:0kB")))
    assert sup.audited[-1][0] == "oom_kill"
    assert attribute_exit(sup.redis.last_signal, signal.SIGKILL, True)[0] == \
        "from the kernel's OOM killer (anon-rss 812 MiB)"


def test_the_tap_names_a_gone_sender_from_the_trace():
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    a.on_kernel_signal(kernel_signal(signal.SIGTERM, sender=gone_sender()))
    assert sup.audited == []                        # left to the tap, which will stop at it
    decision = a.on_traced_signal(812, Siginfo(signo=signal.SIGTERM, errno=0, code=SI_USER, pid=SH, uid=0))
    assert decision.deliver is False                # the guard still blocks it
    assert sup.audited == []                        # recorded only once the tracee is resumed
    decision.then()
    [(kind, event)] = sup.audited
    assert (event["via"], event["action"], event["sender"]["comm"], event["sender"]["seen_by"]) == \
        ("ptrace", "blocked", "sh", "tracefs")
    assert not a.parked


def test_a_gone_senders_tap_record_waits_for_the_trace_to_be_read_up_to_its_stop():
    import os
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    position, asked = [0.0], []
    a.trace_position = lambda: position[0]
    a.read_trace_soon = lambda: asked.append(True)
    decision = a.on_traced_signal(812, Siginfo(signo=signal.SIGTERM, errno=0, code=SI_USER, pid=SH, uid=0))
    assert decision.deliver is False and asked == []    # answered before anything else
    decision.then()
    assert sup.audited == [] and asked == [True] and len(a.deferred) == 1   # waits for the witness
    a.trace_read()
    assert sup.audited == []                            # not read that far yet
    a.on_kernel_signal(kernel_signal(signal.SIGTERM, sender=gone_sender()))     # the witness reads its line
    position[0] = tracefs.time.clock_gettime(tracefs.time.CLOCK_BOOTTIME)
    a.trace_read()
    [(kind, event)] = sup.audited
    assert (event["via"], event["sender"]["seen_by"], event["sender"]["pid"]) == ("ptrace", "tracefs", SH)
    assert not a.deferred and not a.parked
    a.on_traced_signal(812, Siginfo(signo=signal.SIGUSR1, errno=0, code=SI_USER, pid=os.getppid(),
                                    uid=os.getuid())).then()
    assert len(asked) == 1 and sup.audited[-1][1]["sender"]["pid"] == os.getppid()   # alive: /proc, no wait


def test_a_deferred_tap_record_is_made_when_its_time_runs_out_or_at_shutdown(monkeypatch):
    from relayq_supervisor.witness import attribution
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    a.trace_position = lambda: 0.0
    a.on_traced_signal(812, Siginfo(signo=signal.SIGTERM, errno=0, code=SI_USER, pid=SH, uid=0)).then()
    monkeypatch.setattr(attribution, "DEFER_MAX_S", -1.0)
    a.on_traced_signal(812, Siginfo(signo=signal.SIGHUP, errno=0, code=SI_USER, pid=SH + 1, uid=0)).then()
    assert len(a.deferred) == 2 and sup.audited == []
    a.trace_read()                                      # the second's time is out: as the tap saw it
    assert [e["signal"] for _, e in sup.audited] == ["SIGHUP"] and sup.audited[0][1]["sender"]["alive"] is False
    a.close_bursts()
    assert [e["signal"] for _, e in sup.audited][:2] == ["SIGHUP", "SIGTERM"] and not a.deferred


def test_without_the_tap_every_signal_is_recorded_from_the_trace():
    sup = Sup(tap_active=False)
    a = Attribution(sup, ())
    a.on_kernel_signal(kernel_signal(signal.SIGTERM, sender=gone_sender(), result=1))
    assert sup.audited[0][1]["action"] == "ignored"
    assert sup.redis.last_signal is None            # ignored: it cannot explain an exit


def test_a_program_the_tap_did_not_seize_has_its_signals_recorded_from_the_trace():
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    seen = kernel_signal(signal.SIGTERM, sender=gone_sender())
    a.on_kernel_signal(KernelSignal(**{**seen.__dict__, "target_pid": 900}))
    [(kind, event)] = sup.audited
    assert (event["via"], event["target"], event["sender"]["pid"]) == ("tracefs", {"program": "worker", "pid": 900}, SH)
    assert not a.parked
    detail, sender = attribute_exit(sup.worker.last_signal, None, traced=False)
    assert detail == f"after SIGTERM from pid {SH} sh <- pid {SCRIPT} bash" and sender["pid"] == SH


def test_tracefs_helpers_read_format_fields(tmp_path):
    fmt = tmp_path / "events" / "signal" / "signal_generate"
    fmt.mkdir(parents=True)
    (fmt / "format").write_text("name: signal_generate\nformat:\n"
                                "\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;\n"
                                "\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;\n")
    assert tracefs_files.event_fields(str(tmp_path), "signal", "signal_generate") == {"sig", "comm"}
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("22 27 0:21 / /proc rw - proc proc rw\n"
                         "50 23 0:12 / /sys/kernel/debug/tracing rw - tracefs tracefs rw\n"
                         "51 23 0:12 / /sys/kernel/tracing rw - tracefs tracefs rw\n")
    assert tracefs_files.find_mount(str(mountinfo)) == "/sys/kernel/tracing"
    mountinfo.write_text("22 27 0:21 / /proc rw - proc proc rw\n")
    assert tracefs_files.find_mount(str(mountinfo)) is None


@pytest.mark.parametrize("status,expected", [("NSpid:\t812\n", True), ("NSpid:\t4012\t1\n", False)])
def test_pid_namespace_detection(tmp_path, monkeypatch, status, expected):
    real_open = open
    path = tmp_path / "status"
    path.write_text("Name:\tx\n" + status)
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: real_open(path if p == "/proc/self/status" else p, *a, **k))
    monkeypatch.setattr(trace_instance.os, "stat", lambda p: type("st", (), {"st_ino": trace_instance.INITIAL_PID_NS_INODE})())
    assert trace_instance.in_initial_pid_namespace() is expected


def test_a_pid_namespace_with_its_own_proc_is_detected_by_its_inode(monkeypatch):
    # with --mount-proc, NSpid shows only the inner pid: the namespace inode tells
    monkeypatch.setattr(trace_instance.os, "stat", lambda p: type("st", (), {"st_ino": 4026532500})())
    assert trace_instance.in_initial_pid_namespace() is False


# --- argv, uid and unit read when an exec is read ----------------------------------------------

def test_an_exec_read_while_the_process_lives_captures_its_argv_uid_and_unit():
    import os

    from relayq_supervisor.linux.procfs import proc_start_ticks
    from relayq_supervisor.witness.identity import CLOCK_TICKS
    c = Collect()
    w = witness(c)
    me, started = os.getpid(), proc_start_ticks(os.getpid()) / CLOCK_TICKS
    feed(w, line("bash", SCRIPT, started, "sched_process_fork",
                 f"comm=bash pid={SCRIPT} child_comm=bash child_pid={me}", tgid=SCRIPT),
         line("python3", me, started + 0.001, "sched_process_exec",
              f"filename=/usr/bin/python3 pid={me} old_pid={me}", tgid=me))
    w.history.capture_execs()
    r = w.history.get(me)
    with open(f"/proc/{me}/cmdline", "rb") as f:
        argv = tuple(a.decode() for a in f.read().rstrip(b"\0").split(b"\0"))
    assert (r.captured, r.cmdline, r.uid) == (True, argv, os.geteuid())
    assert w.history.captures == 1


def test_an_exec_whose_exit_was_already_read_is_not_captured_and_costs_no_proc_read():
    c = Collect()
    w = witness(c)
    feed(w, line("sh", SH, 1.0, "sched_process_fork", f"comm=sh pid={SCRIPT} child_comm=sh child_pid={SH}", tgid=SCRIPT),
         line("kill", SH, 1.1, "sched_process_exec", f"filename=/usr/bin/kill pid={SH} old_pid={SH}", tgid=SH),
         line("kill", SH, 1.2, "sched_process_exit", f"comm=kill pid={SH} prio=120 group_dead=true", tgid=SH))
    w.history.capture_execs()
    assert w.history.get(SH).captured is False and w.history.captures == 0


def test_a_pid_now_held_by_another_process_is_not_captured_as_the_traced_one():
    import os
    c = Collect()
    w = witness(c)
    me = os.getpid()        # the trace says it was forked at 1.0 s after boot: not this process
    feed(w, line("sh", SCRIPT, 1.0, "sched_process_fork", f"comm=sh pid={SCRIPT} child_comm=sh child_pid={me}",
                 tgid=SCRIPT),
         line("sh", me, 1.1, "sched_process_exec", f"filename=/bin/sh pid={me} old_pid={me}", tgid=me))
    w.history.capture_execs()
    assert w.history.get(me).captured is False and w.history.get(me).cmdline is None


def test_a_gone_sender_captured_at_exec_is_named_with_its_command_line_and_unit():
    c = Collect()
    w = witness(c)
    feed(w, line("bash", SCRIPT, 10.0, "sched_process_fork", f"comm=bash pid={SCRIPT} child_comm=bash child_pid={SH}",
                 tgid=SCRIPT),
         line("sh", SH, 10.1, "sched_process_exec", f"filename=/bin/sh pid={SH} old_pid={SH}", tgid=SH))
    r = w.history.get(SH)
    w.history.to_capture.clear()            # as if read from /proc while it lived:
    r.captured, r.cmdline, r.uid, r.unit = True, ("sh", "-c", "kill -9 812"), 0, "relayq-redis-monitor.service"
    feed(w, line("sh", SH, 10.3, "signal_generate", "sig=9 errno=0 code=0 comm=redis-server pid=812 grp=1 res=0",
                 tgid=SH))
    s = c.signals[0].sender
    assert (s["cmdline"], s["uid"], s["unit"], s["captured"], s["seen_by"]) == \
        (["sh", "-c", "kill -9 812"], 0, "relayq-redis-monitor.service", True, "tracefs")
    assert history.lineage_text(s).startswith(f"pid {SH} sh -c 'kill -9 812'")


def test_a_storm_to_an_untraced_program_folds_into_one_event_per_second():
    sup = Sup(tap_active=True)                      # pid 900 (worker) is not traced
    a = Attribution(sup, ())
    for i in range(50):
        seen = kernel_signal(signal.SIGUSR1, sender=gone_sender(), result=0 if i % 2 == 0 else 2)
        a.on_kernel_signal(KernelSignal(**{**seen.__dict__, "target_pid": 900}))
    assert len(sup.audited) == 1 and sup.audited[0][1]["via"] == "tracefs"     # the first, at once
    a.close_bursts()
    [(_, folded)] = sup.audited[1:]
    assert (folded["count"], folded["coalesced"], folded["sender"]["pid"]) == (24, 25, SH)
    assert sup.worker.last_signal["signal"] == "SIGUSR1"


# --- a storm's lines: the fast path and its folds ------------------------------------------------

def storm_line(sender: int, ts: float, res: int, sig: int = 15, code: int = 0, tgid: int | None | str = "same") -> str:
    return line("bash", sender, ts, "signal_generate",
                f"sig={sig} errno=0 code={code} comm=redis server pid=812 grp=1 res={res}",
                tgid=sender if tgid == "same" else tgid)


def test_a_signal_line_reads_the_same_on_the_fast_and_the_general_path():
    fast, general = Collect(), Collect()
    feed(witness(fast), storm_line(SH, 5.5, 0, sig=10, code=-6))        # with (TGID): one finditer pass
    feed(witness(general), storm_line(SH, 5.5, 0, sig=10, code=-6, tgid="none"))    # without: parse_line
    [a], [b] = fast.signals, general.signals
    assert a == b and (a.signo, a.code, a.target_pid, a.sender_pid, a.result) == (10, -6, 812, SH, 0)
    assert a.sender["comm"] == "bash" and a.count == 1


def test_a_storms_merges_are_folded_per_sender_and_handed_on_before_that_senders_next_signal():
    c = Collect()
    w = witness(c)
    lines = [storm_line(SH if i % 2 else SCRIPT, 1.0 + i * 1e-4, 2) for i in range(10)]
    lines.append(storm_line(SH, 2.0, 0))                      # SH's delivered one: its merges come first
    lines += [storm_line(SH, 2.1, 2), storm_line(SH, 2.2, 2, sig=10),
              line("sh", TIMER, 2.3, "sched_process_exit", f"comm=sh pid={TIMER} prio=120 group_dead=true", tgid=TIMER),
              storm_line(SCRIPT, 2.4, 2)]
    text = ("\n".join(lines) + "\n").encode()
    w.feed(text[:300], flush=False)              # split mid-line, across reads
    w.feed(text[300:], flush=False)
    assert [(s.sender_pid, s.result, s.count) for s in c.signals] == [(SH, 2, 5), (SH, 0, 1)]
    w.flush_merges()                              # drain()'s end
    assert [(s.sender_pid, s.signo, s.count) for s in c.signals[2:]] == [(SCRIPT, 15, 6), (SH, 15, 1), (SH, 10, 1)]
    assert w.signals == 14 and w.lines == 15 and w.history.get(TIMER).exit == 2.3
    first = c.signals[0]
    assert first.ts == 1.0001 and first.sender is None and first.sender_identity()["pid"] == SH


def test_folded_merges_count_in_full_on_the_burst():
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    w = KernelWitness(a.on_kernel_signal)
    feed(w, *[storm_line(SH, 1.0 + i * 1e-4, 2) for i in range(300)])
    a.close_bursts()
    [(kind, event)] = sup.audited
    assert (kind, event["coalesced"], event["count"], event["sender"]["pid"]) == ("signal", 300, 0, SH)


def test_lost_events_are_said_on_the_storm_window_they_hid_and_audited_once_a_minute():
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    w = KernelWitness(a.on_kernel_signal)
    w.on_lost = a.on_trace_lost
    feed(w, storm_line(SH, 1.0, 2), "CPU:1 [LOST 700 EVENTS]", storm_line(SH, 1.1, 2), "CPU:0 [LOST 5 EVENTS]")
    assert [kind for kind, _ in sup.audited] == ["kernel_trace_lost"]      # the second within the minute: counted
    assert sup.audited[0][1]["lost"] == 700 and w.stats()["lost"] == 705
    a.close_bursts()
    burst = sup.audited[-1][1]
    assert (burst["coalesced"], burst["trace_lost"]) == (2, 705)
    assert "lineage incomplete (trace buffer overrun)" in burst["trace_lost_note"]


def test_the_trace_buffer_is_sized_for_a_storm_within_a_node_wide_bound():
    assert trace_instance.buffer_kb_per_cpu(2) == 2048                 # 4 MiB on this 2-CPU machine
    assert trace_instance.buffer_kb_per_cpu(8) == 1024
    assert trace_instance.buffer_kb_per_cpu(64) == 512                 # the floor: 32 MiB on 64 CPUs


def test_exec_captures_past_their_time_budget_wait_for_the_next_pass():
    import os
    c = Collect()
    w = witness(c)
    me = os.getpid()
    feed(w, *[line("sh", SH + i, 1.0, "sched_process_exec", f"filename=/bin/sh pid={SH + i} old_pid={SH + i}",
                   tgid=SH + i) for i in range(3)],
         line("python3", me, 1.1, "sched_process_exec", f"filename=/usr/bin/python3 pid={me} old_pid={me}", tgid=me))
    w.history.capture_execs(budget_s=-1.0)          # spent before the first read
    assert w.history.captures == 0 and len(w.history.to_capture) == 4
    assert w.history.get(me).captured is None
    w.history.capture_execs()
    assert w.history.captures == 4 and w.history.to_capture == []
    assert w.history.get(me).captured is True and w.history.get(SH).captured is False


def test_the_read_position_is_the_last_lines_time_or_the_start_of_a_read_that_emptied_the_pipe():
    import os
    c = Collect()
    w = witness(c)
    r, wr = os.pipe()
    os.set_blocking(r, False)
    w.fd = r
    try:
        os.write(wr, (storm_line(SH, 7.25, 2) + "\nCPU:0 [LOST 1 EVENTS]\n").encode())
        w.feed(b"", flush=True)
        assert w.read_position() == 0.0
        before = tracefs.time.clock_gettime(tracefs.time.CLOCK_BOOTTIME)
        assert w.drain() is False                       # read to EAGAIN: caught up
        assert w.read_ts == 7.25 and w.read_position() >= before and c.signals[0].count == 1
    finally:
        w.fd = None
        os.close(r)
        os.close(wr)


def test_a_deferred_tap_record_opens_its_window_so_the_senders_next_signals_are_counted_on_it():
    sup = Sup(tap_active=True)
    a = Attribution(sup, ())
    position = [0.0]
    a.trace_position = lambda: position[0]
    term = Siginfo(signo=signal.SIGTERM, errno=0, code=SI_USER, pid=SH, uid=0)
    decisions = [a.on_traced_signal(812, term)]
    decisions[0].then()
    decisions += [a.on_traced_signal(812, term) for _ in range(2)]
    assert [d.then is None for d in decisions] == [False, True, True]   # the next two joined its window
    assert len(a.deferred) == 1 and sup.audited == []      # the first waits for the trace
    a.on_kernel_signal(kernel_signal(signal.SIGTERM, sender=gone_sender()))
    position[0] = float("inf")
    a.trace_read()
    a.close_bursts()
    first, folded = (e for _, e in sup.audited)
    assert first["sender"]["seen_by"] == "tracefs" and "count" not in first
    assert (folded["count"], folded["sender"]["seen_by"]) == (2, "tracefs")
