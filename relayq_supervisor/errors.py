"""One exception root for everything relayq-supervisor refuses on purpose.

Every message is already worded for the person who will read it (`PATH:LINE: what is
wrong`, `port 6379 is held by pid 812 (...)`). Lower layers raise these; only the
boundaries turn them into something else: control/ into reply codes, the command
lines into exit statuses (control.protocol.exit_status_of is the one table).
"""
from __future__ import annotations


class RelayqError(Exception):
    """Root of every deliberate refusal; str(e) is the message for people."""


class ConfigError(RelayqError):
    """The configuration is invalid; nothing was changed or started."""


class ConfigSyntaxError(ConfigError):
    """The config file is not UTF-8 TOML at all (not merely a bad value in it)."""


class StartupError(RelayqError):
    """The supervisor must not start (a lock is held, a port is taken, ...)."""


class LockHeld(RelayqError):
    """Another process holds an ownership lock; `owner` is its JSON record ({} if none)."""

    def __init__(self, path: str, owner: dict | None, message: str | None = None):
        self.path = path
        self.owner = owner or {}
        super().__init__(message or f"{path} is locked by another process")


class UnknownProgram(RelayqError):
    """A name that matches no program or instance."""


class ReloadRefused(RelayqError):
    """A reload that cannot be applied while running; nothing was changed."""


class ShuttingDown(RelayqError):
    """The supervisor is shutting down and takes no more commands that start or stop."""


class BadRequest(RelayqError):
    """A control request that is malformed or incomplete."""


class AclSetupError(RelayqError):
    """The Redis ACL or password file could not be prepared."""
