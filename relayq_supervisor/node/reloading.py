"""Reload (SIGHUP, `relayqctl reload`): re-read the config; a broken one changes nothing,
otherwise only what changed is stopped, started or restarted (core/reload.py says what
changed, the arbiter applies it). The program locks of added programs are taken first, so
a program another supervisor owns changes nothing either."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from relayq_supervisor import kinds
from relayq_supervisor.config import Config, load_config
from relayq_supervisor.core import reload as reload_diff
from relayq_supervisor.core.arbiter import Arbiter
from relayq_supervisor.core.locks import OwnerLocks, program_key
from relayq_supervisor.errors import RelayqError, ReloadRefused, StartupError
from relayq_supervisor.kinds import KindContext, ProgramKind
from relayq_supervisor.systemd import ServiceLink

log = logging.getLogger(__package__)     # "relayq_supervisor.node": its lines read "node: ..." as before the split


class Reloader:
    """`loaded(new)`: the node's own config is the new one (called once the arbiter applied it)."""

    def __init__(self, arbiter: Arbiter, locks: OwnerLocks, service: ServiceLink, kind_context: KindContext,
                 loaded: Callable[[Config], None]):
        self.arbiter = arbiter
        self.locks = locks
        self.service = service
        self.kind_context = kind_context
        self.loaded = loaded

    async def reload_logged(self, who: str) -> None:
        try:
            await self.reload(who)
        except RelayqError as e:
            log.error("reload rejected, nothing changed: %s", e)

    async def reload(self, who: str) -> dict[str, Any]:
        """ConfigError or ReloadRefused when nothing changed."""
        old = self.arbiter.config
        new = load_config(old.path)
        refusal = kinds.refuse_reload(old, new) or (
            "a changed [cluster] needs a restart of the supervisor" if new.cluster != old.cluster else None)
        if refusal:
            raise ReloadRefused(f"{new.path}: {refusal}; nothing changed")
        changes = reload_diff.diff(old, new)
        taken = []
        try:        # locks first: a program owned elsewhere changes nothing
            for name in changes.added:
                self.locks.take_program(name, old.supervisor.run_dir)
                taken.append(name)
        except StartupError as e:
            for name in taken:
                self.locks.release(program_key(name))
            raise ReloadRefused(f"{e}; nothing changed") from None
        log.info("reloading %s (%s)", new.path, who)
        self.service.reloading()
        try:
            await self.arbiter.apply(new, changes, self.reloaded_kinds(new))
        finally:
            self.service.reloaded()
        for name in changes.removed:
            self.locks.release(program_key(name))
        self.loaded(self.arbiter.config)
        summary = changes.to_dict()
        log.info("reloaded: %s", ", ".join(f"{k} {v}" for k, v in summary.items() if v) or "nothing changed")
        return {"changes": summary}

    def reloaded_kinds(self, new: Config) -> dict[str, ProgramKind]:
        old = self.arbiter.kinds
        out = {}
        for spec in new.programs:
            kind = old.get(spec.name)
            if kind is None:
                kind = kinds.make_kind(spec, self.kind_context)
            elif kind.spec != spec:
                kind = kind.with_spec(spec)
            out[spec.name] = kind
        return out
