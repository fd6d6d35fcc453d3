"""The states of a supervised program and the only transitions between them.

Names are supervisord's (operators know them). Every change of state goes through
`check_transition`, so an edge missing from TRANSITIONS is a bug that shows up at once,
not a program stuck in a state nothing leaves.
"""
from __future__ import annotations

import enum


class State(enum.StrEnum):
    STOPPED = "STOPPED"     # not running, and not going to run until wanted again
    STARTING = "STARTING"   # its process runs; not ready yet (no READY=1/PONG, ready_after not reached)
    RUNNING = "RUNNING"     # ready
    BACKOFF = "BACKOFF"     # exited; the next start waits for its delay (or its dependencies)
    STOPPING = "STOPPING"   # the stop signal was sent; waiting for the exit
    EXITED = "EXITED"       # exited and its restart policy says not to restart
    FATAL = "FATAL"         # gave up (start limit, cannot start); an operator start revives it


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.STOPPED: frozenset({
        S.STARTING,     # reconcile: wanted, dependencies RUNNING
        S.FATAL,        # its pre-start check refused (port held, ACL file unwritable)
    }),
    S.STARTING: frozenset({
        S.RUNNING,      # READY=1, PONG, or alive for ready_after
        S.STOPPING,     # stopped before it was ready
        S.BACKOFF,      # died early; restart later
        S.EXITED,       # died; its policy says no restart
        S.FATAL,        # died; start limit reached
        S.STOPPED,      # died while no longer wanted (shutdown, operator stop)
    }),
    S.RUNNING: frozenset({
        S.STOPPING,     # operator, reload, shutdown, watchdog
        S.BACKOFF,      # died; restart (at once after a stable run, else after a delay)
        S.EXITED,       # died; its policy says no restart
        S.FATAL,        # died; start limit reached
        S.STOPPED,      # died while no longer wanted
    }),
    S.BACKOFF: frozenset({
        S.STARTING,     # delay over, dependencies RUNNING
        S.STOPPED,      # operator stop or shutdown during the delay
        S.FATAL,        # its pre-start check refused
    }),
    S.STOPPING: frozenset({
        S.STOPPED,      # it exited (on the stop signal or the SIGKILL after stop_timeout)
    }),
    S.EXITED: frozenset({
        S.STOPPED,      # an operator start (then STARTING) or stop
    }),
    S.FATAL: frozenset({
        S.STOPPED,      # an operator start (then STARTING) or stop
    }),
}


class IllegalTransition(AssertionError):
    """A transition the table does not allow: a bug in the supervisor, never user input."""


def check_transition(old: State, new: State, name: str) -> None:
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{name}: {old} -> {new} is not a transition of the state table")


# States in which the program's process exists.
ALIVE = frozenset({S.STARTING, S.RUNNING, S.STOPPING})
# States an operator start revives through STOPPED.
ENDED = frozenset({S.EXITED, S.FATAL})
