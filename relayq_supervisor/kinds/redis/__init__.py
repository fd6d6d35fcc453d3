"""Redis as a kind of program: its data-dir lock and port check, its ACL (the command
guard) and admin user, its config file and argv, readiness by PONG and the persistence
settings it took, its stop with a final save, and its health checks.

Modules: `kind` (`RedisKind`, the ProgramKind), `server` (argv, port holder, clients),
`conf` (the generated redis.conf and the check of what Redis took), `credentials`,
`acl`, `acl_log` (the command guard and who was denied: witness/socket_holder.py names the client), `health`
(the periodic check that records denied commands), `liveness`, `data_dir`, `log_lines`.
This file imports nothing: relayqctl's cluster commands import `server` and
`credentials` alone, without the kind and what it needs.
"""
