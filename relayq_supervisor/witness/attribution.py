"""Who did it: each signal the tap sees is judged (the guard), recorded with its sender,
and kept so that the program's exit can be attributed to whoever caused it."""
from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from relayq_supervisor.linux.siginfo import Siginfo, is_user_sent, sender_is_verified, signal_name
from relayq_supervisor.witness.bursts import Burst, Bursts, Key, wall_time
from relayq_supervisor.witness.guard import Verdict, judge
from relayq_supervisor.witness.history import lineage_text
from relayq_supervisor.witness.identity import Pin, ProcessIdentity, boottime_now
from relayq_supervisor.witness.tap import Decision
from relayq_supervisor.witness.trace_lines import RESULT_ALREADY_PENDING, RESULT_DELIVERED, KernelSignal, OomVictim

log = logging.getLogger(__name__)

# a tap record whose sender is gone waits at most this long for the witness to read the
# trace up to its stop (then it is recorded as the tap saw it)
DEFER_MAX_S = 2.0


@dataclass(eq=False)
class Deferred:
    """A tap record waiting for the kernel witness to read the trace up to `stopped_at`."""
    stopped_at: float           # boot clock, when the tap held the stop
    deadline: float             # monotonic
    program: Watched | None
    signo: int
    sender_pid: int
    finish: Callable[[KernelSignal | None], None]

# Signals that ask a program to stop: an exit after one of them is its sender's doing.
STOP_REQUESTS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP})
COALESCED_NOTE = "sent while one was already pending: the kernel merged them into it (signal(7))"
TRACE_LOST_NOTE = ("the kernel trace dropped events while this window was open (buffer overrun): "
                   "merges it did not report are not counted; lineage incomplete (trace buffer overrun)")
LOST_AUDIT_EVERY_S = 60.0
# a window's event waits this long past its end, so that windows opened close together (a
# storm's senders start within a fraction of a second) are recorded in one loop pass, one
# audit fsync, not one pass each (issue 13: an fsync took 5 ms on the wall, up to 43 ms)
BURST_CLOSE_SLACK_S = 0.1
WITNESSED_ALIVE_NOTE = "exited before the tap could inspect it; read from /proc when the kernel traced its signal"


class Watched(Protocol):
    """A supervised program as the witness sees it (core.program.Program is one)."""

    @property
    def name(self) -> str: ...

    @property
    def protected(self) -> bool: ...

    def signalled(self, record: dict[str, Any]) -> None:
        """A signal reached it: keep it to attribute its exit."""
        ...

    def remember(self, event: dict[str, Any]) -> None: ...


class Supervision(Protocol):
    """What attribution needs of the supervisor."""

    @property
    def shutting_down(self) -> bool: ...

    def traced(self, pid: int) -> bool:
        """Does the signal tap stop at this process' signals?"""
        ...

    def program_of_pid(self, pid: int | None) -> Watched | None: ...

    def request_shutdown(self, why: str) -> None: ...

    def audit(self, kind: str, **fields: Any) -> dict[str, Any]: ...

    def count_blocked(self) -> None: ...


class Attribution:
    def __init__(self, sup: Supervision, audit_ignore: frozenset[str] | tuple[str, ...],
                 schedule: Callable[[float, Callable[[], None]], object] | None = None):
        self.sup = sup
        self.audit_ignore = frozenset(audit_ignore)
        self.schedule = schedule            # loop.call_later: closes burst windows on time
        self.bursts = Bursts(self.burst_closed)
        # how far (boot clock) the kernel witness has read its trace (set when it runs): a
        # sender gone before the tap could look was traced before its signal stopped the
        # tracee, but the loop reads the trace in bounded stretches and may not have reached
        # that line yet; its record waits for it (`deferred`, completed by `trace_read`)
        self.trace_position: Callable[[], float] | None = None
        self.read_trace_soon: Callable[[], None] | None = None     # asks the witness for its next read now
        self.deferred: list[Deferred] = []
        self.burst_timer = False
        self.traced: Counter[str] = Counter()     # "program SIGNAL" -> deliveries the tap saw and recorded
        # signals the kernel witness saw that the tap will also stop at: its sender, for
        # the tap's record when the sender is gone by then (bounded: a stop may never come)
        self.parked: deque[KernelSignal] = deque(maxlen=64)
        self.lost_audited_at: float | None = None
        self.lost_unaudited = 0

    def name_sender(self, identity: ProcessIdentity | None) -> dict[str, Any] | None:
        """The identity as an audit field, naming the program when it is one of ours."""
        if identity is None:
            return None
        owner = self.sup.program_of_pid(identity.pid)
        if owner is not None:
            identity = identity.with_program(owner.name)
        return identity.to_dict()

    def name_traced(self, identity: dict[str, Any] | None) -> dict[str, Any] | None:
        """An identity from the kernel trace, naming our programs in it: only entries seen
        alive (their pid checked against their start time), so a reused pid is never ours."""
        if identity is None:
            return None
        for entry in [identity, *(identity.get("ancestry") or [])]:
            owner = self.sup.program_of_pid(entry.get("pid")) if entry.get("alive") else None
            if owner is not None:
                entry["program"] = owner.name
        return identity

    def name_process(self, pid: int) -> dict[str, Any] | None:
        return self.name_sender(ProcessIdentity.capture(pid))

    def record(self, p: Watched | None, pid: int, signo: int, *, code: str = "SI_USER",
               sender: dict[str, Any] | None = None, via: str = "supervisor", **fields: Any) -> dict[str, Any]:
        """One `signal` audit event (defaults: sent by the supervisor itself), kept as the
        program's evidence too."""
        if sender is None and via == "supervisor":
            sender = {"pid": os.getpid(), "program": "supervisor"}
        event = self.sup.audit("signal", signal=signal_name(signo), signo=signo, code=code,
                               target={"program": p.name if p else None, "pid": pid}, sender=sender, via=via,
                               **fields)
        if p is not None:
            p.remember(event)
        return event

    def received(self, info: Siginfo) -> None:
        """A signal to the supervisor itself (read from its signalfd)."""
        name = signal_name(info.signo)
        if name in self.audit_ignore:
            return
        sender = ProcessIdentity.capture(info.pid, uid_hint=info.uid, code_hint=info.code_name,
                                         seen_boottime=boottime_now()) if info.pid else None
        self.sup.audit("signal", signal=name, signo=info.signo, code=info.code_name,
                       target={"program": "supervisor", "pid": os.getpid()},
                       sender=self.name_sender(sender), action="delivered", via="signalfd")
        log.info("received %s from %s", name, sender.describe() if sender else "the kernel")

    def on_traced_signal(self, tid: int, info: Siginfo) -> bool | Decision:
        """A signal is about to reach a traced child (the tracee waits in its stop): say
        at once whether to deliver it; recording it, and reading its sender, come after the
        tracee is resumed (`Decision.then`), or not at all when a burst counts it."""
        p = self.sup.program_of_pid(tid)
        user_sent = is_user_sent(info.code) and info.pid > 0
        if user_sent and info.pid == os.getpid():
            return True                     # our own: recorded when sent
        verdict = judge(info.signo, protected=p is not None and p.protected, user_sent=user_sent,
                        from_program_itself=p is not None and user_sent and self.sup.program_of_pid(info.pid) is p,
                        from_service_manager=info.pid in (1, os.getppid()), shutting_down=self.sup.shutting_down)
        if verdict.shutdown and p is not None:
            self.sup.request_shutdown(f"SIGTERM to {p.name} from the service manager (pid {info.pid})")
        key: Key = (p.name if p is not None else tid, info.pid if user_sent else None, info.signo)
        recorded = signal_name(info.signo) not in self.audit_ignore or not verdict.deliver
        if recorded:
            self.traced[f"{p.name if p is not None else tid} {signal_name(info.signo)}"] += 1
        burst = self.bursts.join(key, verdict.action) if recorded else None
        if burst is not None and burst.record is not None:
            self.judged(p, info, verdict, burst.record["sender"], burst.record["who"], user_sent, quiet=True)
            return Decision(verdict.deliver)
        pin = Pin.open(info.pid) if user_sent else None     # before the resume: the sender is held
        return Decision(verdict.deliver,
                        then=lambda: self.record_traced(p, tid, info, verdict, pin, key, recorded, user_sent))

    def record_traced(self, p: Watched | None, tid: int, info: Siginfo, verdict: Verdict, pin: Pin | None,
                      key: Key, recorded: bool, user_sent: bool) -> None:
        """After the resume: who sent it (read through the pin), its record, its burst."""
        try:
            sender = pin.capture(uid_hint=info.uid, code_hint=info.code_name,
                                 seen_boottime=pin.seen_boottime) if pin is not None else None
        finally:
            if pin is not None:
                pin.close()
        witnessed = self.take_parked(p, info.signo, info.pid) if user_sent else None
        stopped_at = pin.seen_boottime if pin is not None else None
        if witnessed is None and sender is not None and sender.comm is None and stopped_at is not None \
                and info.signo != signal.SIGCHLD and self.trace_position is not None \
                and self.trace_position() < stopped_at:     # (the witness does not trace SIGCHLD)
            # gone, and the witness has not read the trace up to the stop yet: the record waits
            # for it (at most DEFER_MAX_S), the loop answering meanwhile
            self.deferred.append(Deferred(stopped_at, time.monotonic() + DEFER_MAX_S, p, info.signo, info.pid,
                                          lambda w: self.finish_traced(p, tid, info, verdict, sender, w, key,
                                                                       recorded, user_sent)))
            if recorded:    # its window opens now: the sender's next signals are counted on it
                fields = tap_fields(info, verdict, self.name_sender(sender), user_sent)
                self.bursts.opened(key, {**fields, "target_pid": tid, "who": sender.describe()})
            if self.read_trace_soon is not None:
                self.read_trace_soon()
            if self.schedule is not None:
                self.schedule(DEFER_MAX_S, self.trace_read)
            return
        self.finish_traced(p, tid, info, verdict, sender, witnessed, key, recorded, user_sent)

    def trace_read(self) -> None:
        """The kernel witness read on (or a deferred record's time ran out): each record that
        waited for its line completes, named from it when it was there."""
        if not self.deferred:
            return
        position = self.trace_position() if self.trace_position is not None else float("inf")
        now = time.monotonic()
        due = [d for d in self.deferred if position >= d.stopped_at or now >= d.deadline]
        self.deferred = [d for d in self.deferred if d not in due]
        for d in due:
            d.finish(self.take_parked(d.program, d.signo, d.sender_pid))

    def finish_traced(self, p: Watched | None, tid: int, info: Siginfo, verdict: Verdict,
                      sender: ProcessIdentity | None, witnessed: KernelSignal | None, key: Key, recorded: bool,
                      user_sent: bool) -> None:
        sender_dict = self.name_sender(sender)
        who = sender.describe() if sender else f"the kernel ({info.code_name})"
        if sender is not None and sender.comm is None and witnessed is not None and witnessed.sender:
            # gone before the tap could look: the kernel trace knew it and its parents
            sender_dict = {**self.name_witnessed(witnessed.sender), "alive": False}
            if sender_dict.get("note") is None:     # read from /proc while it sent the signal
                sender_dict["note"] = WITNESSED_ALIVE_NOTE
            who = lineage_text(sender_dict)
        if recorded:
            fields = tap_fields(info, verdict, sender_dict, user_sent)
            self.record(p, tid, info.signo, **fields)
            self.bursts.opened(key, {**fields, "target_pid": tid, "who": who})
            self.wake_bursts()
        self.judged(p, info, verdict, sender_dict, who, user_sent, quiet=False)

    def judged(self, p: Watched | None, info: Siginfo, verdict: Verdict, sender: dict[str, Any] | None,
               who: str, user_sent: bool, *, quiet: bool) -> None:
        """What a verdict means for the program: counted, logged (not for each of a burst), kept."""
        if p is None:
            return
        name = signal_name(info.signo)
        if not verdict.deliver:
            self.sup.count_blocked()
            if quiet:
                pass
            elif verdict.note is None:
                log.warning("%s: blocked %s from %s; to stop %s use `relayqctl stop %s`", p.name, name, who,
                            p.name, p.name)
            else:
                log.info("%s: blocked %s from %s (%s)", p.name, name, who, verdict.note)
            return
        if user_sent or info.signo not in (signal.SIGCHLD, signal.SIGWINCH):
            p.signalled({"signal": name, "signo": info.signo, "sender": sender, "describe": who})

    # --- bursts (witness/bursts.py) --------------------------------------------------------

    def burst_closed(self, b: Burst) -> None:
        """One event for a window's worth of one sender's signal to one target."""
        r = b.record if b.record is not None else b.extra["kernel_record"]()
        p = self.sup.program_of_pid(r["target_pid"])
        fields = {k: v for k, v in r.items() if k not in ("target_pid", "who")}
        fields.update(count=b.count, since=wall_time(b.since))
        if b.coalesced:
            fields.update(coalesced=b.coalesced, coalesced_note=COALESCED_NOTE)
        if b.extra.get("trace_lost"):
            fields.update(trace_lost=b.extra["trace_lost"], trace_lost_note=TRACE_LOST_NOTE)
        self.record(p, r["target_pid"], b.key[2], **fields)
        level = logging.WARNING if r.get("action") == "blocked" else logging.INFO
        log.log(level, "%s: %s %s from %s x %d since %s%s", p.name if p else f"pid {r['target_pid']}",
                r.get("action"), signal_name(b.key[2]), r["who"], b.count, fields["since"],
                f" (+{b.coalesced} coalesced by the kernel)" if b.coalesced else "")

    def wake_bursts(self) -> None:
        """A timer for the oldest open window (none without a scheduler: closed by the next signal)."""
        if self.schedule is None or self.burst_timer:
            return
        due = self.bursts.next_due
        if due is None:
            return
        self.burst_timer = True
        self.schedule(due + BURST_CLOSE_SLACK_S, self.burst_tick)

    def burst_tick(self) -> None:
        self.burst_timer = False
        self.bursts.close_due()
        self.wake_bursts()

    def close_bursts(self) -> None:
        """Record what open windows counted, and records still waiting for the trace (at shutdown)."""
        self.trace_position = None
        self.trace_read()
        self.bursts.close_all()

    # --- the kernel witness (witness/tracefs.py) -----------------------------------------

    def on_kernel_signal(self, seen: KernelSignal) -> None:
        """A signal to a supervised program, from the kernel's trace. The ones the tap will
        stop at are left to it (it records them, with this sender if its own is gone by
        then); the rest, SIGKILL above all, and every signal to a program the tap does not
        seize (only protected ones where the witness runs), are recorded here, so the
        program's exit names their sender."""
        traced = self.sup.traced(seen.target_pid)
        if traced and seen.signo != signal.SIGKILL and seen.result == RESULT_DELIVERED:
            self.parked.append(seen)
            return
        if seen.signal in self.audit_ignore:
            return
        p = self.sup.program_of_pid(seen.target_pid)
        key: Key = (p.name if p is not None else seen.target_pid, seen.sender_pid, seen.signo)
        if seen.result == RESULT_ALREADY_PENDING and seen.signo != signal.SIGKILL:
            # merged into one pending (that the tap will stop at, or that this path recorded):
            # counted on that sender's burst
            self.bursts.merged(key, lambda: self.kernel_record(seen), seen.count)
            self.wake_bursts()
            return
        sender = self.name_witnessed(seen.sender) if seen.sender else None
        who = lineage_text(sender) if sender else f"the kernel ({seen.code_name})"
        # a storm to an untraced program (where the witness runs, only protected ones are traced)
        # folds like the tap's: the first recorded alone, the rest counted per second
        burst = self.bursts.join(key, seen.result_name) if seen.signo != signal.SIGKILL else None
        if burst is None or burst.record is None:
            extra = {"kernel_context": seen.context} if seen.context else {}
            fields: dict[str, Any] = {"code": seen.code_name, "sender": sender, "action": seen.result_name,
                                      "via": "tracefs", **extra}
            self.record(p, seen.target_pid, seen.signo, **fields)
            if seen.signo != signal.SIGKILL:
                self.bursts.opened(key, {**fields, "target_pid": seen.target_pid, "who": who})
                self.wake_bursts()
        if p is not None and seen.result != 1:      # 1: ignored, it changed nothing
            p.signalled({"signal": seen.signal, "signo": seen.signo, "sender": sender, "describe": who})
        if burst is not None and burst.record is not None:
            return
        if sender is not None:
            log.info("%s: %s from %s (kernel trace: %s)", p.name if p else f"pid {seen.target_pid}", seen.signal,
                     lineage_text(sender), seen.result_name)

    def on_trace_lost(self, count: int) -> None:
        """The kernel dropped `count` trace events (a LOST line, read now): every open window
        may be missing merges, and says so; one `kernel_trace_lost` event a minute at most."""
        for b in self.bursts.open.values():
            b.extra["trace_lost"] = b.extra.get("trace_lost", 0) + count
        self.lost_unaudited += count
        now = time.monotonic()
        if self.lost_audited_at is None or now - self.lost_audited_at >= LOST_AUDIT_EVERY_S:
            self.sup.audit("kernel_trace_lost", lost=self.lost_unaudited, via="tracefs",
                           note="the kernel trace's buffer overran; lineage incomplete (trace buffer overrun)")
            self.lost_audited_at, self.lost_unaudited = now, 0

    def kernel_record(self, seen: KernelSignal) -> dict[str, Any]:
        """What a burst of merges the tap never saw says, if no tap record comes for it."""
        identity = seen.sender_identity()
        sender = self.name_witnessed(identity) if identity else None
        return {"code": seen.code_name, "sender": sender, "action": seen.result_name, "via": "tracefs",
                "target_pid": seen.target_pid,
                "who": lineage_text(sender) if sender else f"the kernel ({seen.code_name})"}

    def on_oom_victim(self, victim: OomVictim) -> None:
        """The OOM killer chose a supervised program: its SIGKILL (just recorded) is the kernel's
        answer to memory pressure, not anyone's kill -9."""
        p = self.sup.program_of_pid(victim.pid)
        if p is None:
            return
        self.sup.audit("oom_kill", program=p.name, pid=victim.pid, anon_rss_kb=victim.anon_rss_kb,
                       total_vm_kb=victim.total_vm_kb, via="tracefs")
        p.signalled({"signal": "SIGKILL", "signo": int(signal.SIGKILL), "sender": None, "describe": victim.describe()})
        log.warning("%s: chosen by %s", p.name, victim.describe())

    def take_parked(self, p: Watched | None, signo: int, sender_pid: int) -> KernelSignal | None:
        oldest = boottime_now() - 30.0
        for seen in list(self.parked):
            if seen.ts < oldest:
                self.parked.remove(seen)
            elif seen.signo == signo and seen.sender_pid == sender_pid \
                    and self.sup.program_of_pid(seen.target_pid) is p:
                self.parked.remove(seen)
                return seen
        return None

    def name_witnessed(self, sender: dict[str, Any]) -> dict[str, Any]:
        """A witness identity, naming our program only when it was seen alive (a gone pid
        may already be someone else's)."""
        if sender.get("seen_by") == "procfs":
            owner = self.sup.program_of_pid(sender["pid"])
            if owner is not None:
                return {**sender, "program": owner.name}
        return sender


def tap_fields(info: Siginfo, verdict: Verdict, sender: dict[str, Any] | None, user_sent: bool) -> dict[str, Any]:
    """A tap record's audit fields. SI_QUEUE and the like carry a pid the sender wrote
    itself; SI_USER/SI_TKILL the kernel's (`sender_verified`)."""
    return {"code": info.code_name, "sender": sender, "action": verdict.action, "via": "ptrace",
            "sender_verified": sender_is_verified(info.code) if user_sent else None,
            **({"note": verdict.note} if verdict.note else {})}


def attribute_exit(last_signal: dict[str, Any] | None, exit_signal: int | None,
                   traced: bool) -> tuple[str | None, dict[str, Any] | None]:
    """Who ended a run: (detail for its exit description, sender) from the last signal
    the tap saw reach it; (None, None) when nothing is known."""
    if last_signal is not None and last_signal["signo"] == exit_signal:
        return f"from {last_signal['describe']}", last_signal["sender"]
    if last_signal is not None and exit_signal is None and last_signal["signo"] in STOP_REQUESTS \
            and last_signal["sender"]:
        # it handled the signal and exited on its own: still that sender's doing
        return f"after {last_signal['signal']} from {last_signal['describe']}", last_signal["sender"]
    if exit_signal == signal.SIGKILL and traced:
        return "sender not visible to the tap", None
    return None, None
