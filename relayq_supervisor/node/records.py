"""The supervisor's own records: log_dir/supervisor.log (for `relayqctl logs`) and the
audit log, whose events of one loop pass are written and fsynced together at its end."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from relayq_supervisor.audit.log import RETRY_S as AUDIT_RETRY_S
from relayq_supervisor.audit.log import AuditLog, make_event
from relayq_supervisor.config import SupervisorSpec
from relayq_supervisor.core.output import SupervisorLogFile
from relayq_supervisor.metrics import SupervisorMetrics

log = logging.getLogger(__package__)     # "relayq_supervisor.node": its lines read "node: ..." as before the split
PACKAGE_LOGGER = __name__.partition(".")[0]        # relayq_supervisor: every module's lines


class Records:
    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: SupervisorMetrics | None):
        self.loop = loop
        self.metrics = metrics              # counts each event, and each failed write
        self.audit_log: AuditLog | None = None
        self.log_file: SupervisorLogFile | None = None
        self._flush_scheduled = False

    def open(self, spec: SupervisorSpec, listener: Callable[[dict[str, Any], bytes], None] | None) -> None:
        """Once this supervisor holds its locks: a second supervisor refused before that must
        not write into our logs. `listener` sees each queued event (the cluster publisher)."""
        self.log_file = SupervisorLogFile(spec.log_dir, spec.log_max_bytes, spec.log_backups, PACKAGE_LOGGER)
        logging.getLogger(PACKAGE_LOGGER).addHandler(self.log_file)
        self.audit_log = AuditLog(spec.audit_log, max_bytes=spec.audit_max_bytes, keep=spec.audit_backups,
                                  on_error=lambda msg: log.error("audit: %s", msg))
        if listener is not None:
            self.audit_log.add_listener(listener)

    def audit(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Queue one audit event; the events of one loop pass are written and fsynced
        together at its end, after the work (a respawn) that produced them."""
        event = make_event(kind, **fields)
        if self.metrics is not None:
            self.metrics.count_event(event)
        if self.audit_log is not None:
            self.audit_log.queue(event)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.loop.call_soon(self._flush_audit)
        return event

    def _flush_audit(self) -> None:
        self._flush_scheduled = False
        if self.audit_log is None or self.audit_log.flush():
            return
        if self.metrics is not None:
            self.metrics.count_audit_write_error()
        # the disk refuses: one retry per AUDIT_RETRY_S (new events wait with the held ones),
        # not one failing write per loop pass
        self._flush_scheduled = True
        self.loop.call_later(AUDIT_RETRY_S, self._flush_audit)

    def close(self) -> None:
        if self.audit_log is not None:
            self.audit_log.close()
        if self.log_file is not None:
            logging.getLogger(PACKAGE_LOGGER).removeHandler(self.log_file)
            self.log_file.close()
            self.log_file = None
