"""Who did what, written down: process identities, the audit log, and reading it back.

Modules: ``identity`` (ProcessIdentity, pinned with a pidfd), ``log`` (AuditLog,
make_event), ``review`` (iter_events, EventFilter, format_event, follow).
Nothing is re-exported here so importing one part never drags in the others.
"""
