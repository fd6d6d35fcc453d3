"""How a start's process is made: its kind's pre-start check, the environment a child
gets, its command (a `command`'s $VAR expanded), the Spawner. No state change and no
audit: the arbiter's start() records the outcome."""
from __future__ import annotations

from typing import NamedTuple

from relayq_supervisor.command_vars import UndefinedVariable, expand_command
from relayq_supervisor.core.collaborators import Spawner
from relayq_supervisor.core.program import ChildHandle, Program
from relayq_supervisor.kinds import ProgramKind


class Launch(NamedTuple):
    """A start's outcome: its process, or why it could not start (the program goes FATAL)."""
    argv: list[str]
    proc: ChildHandle | None = None
    refusal: str | None = None


def environment(p: Program, base_env: dict[str, str], kinds: dict[str, ProgramKind]) -> dict[str, str]:
    """base_env: the supervisor's environment as children get it."""
    env = dict(base_env)
    for kind in kinds.values():
        env.update(kind.environment())
    env["RELAYQ_PROGRAM"] = p.name
    priv = p.spec.privileges
    if priv.user is not None:       # as login(1) and systemd's User= set them
        env.update(HOME=priv.home, USER=priv.user, LOGNAME=priv.user, SHELL=priv.shell)
    if p.spec.watchdog_sec > 0:     # as systemd does, so sd_notify libraries ping on their own
        env["WATCHDOG_USEC"] = str(int(p.spec.watchdog_sec * 1e6))
    env.update(dict(p.spec.environment))
    return env


def launch(p: Program, kinds: dict[str, ProgramKind], spawner: Spawner, base_env: dict[str, str]) -> Launch:
    kind = kinds[p.base]
    refusal = kind.preflight()
    if refusal:
        return Launch([], refusal=refusal)
    env = environment(p, base_env, kinds)
    argv = kind.argv(p)
    if p.spec.redis is None:        # `command` as written: its $VAR and ${VAR} (command_vars.py)
        try:
            argv = expand_command(argv, env)
        except UndefinedVariable as e:
            return Launch(argv, refusal=f"cannot start: its command uses {e}")
    try:
        proc = spawner.spawn(p, argv, env)
    except OSError as e:
        return Launch(argv, refusal=f"cannot start: {e.strerror or e}")
    return Launch(argv, proc)
