"""Who did what, written down: process identities, the audit log, and reading it back.

Modules: ``identity`` (ProcessIdentity, pinned with a pidfd), ``log`` (AuditLog,
make_event), ``held`` (a failing disk's bounded queue), and the review: ``reading`` (iter_events,
follow), ``filtering`` (EventFilter, parse_when), ``timeline_text`` (format_event),
``late_answers`` (a denial with another node's late answer); ``review`` re-exports them.
Nothing is re-exported here so importing one part never drags in the others.
"""
