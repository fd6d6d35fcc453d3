"""What a command line does to Redis or a program: one code path for unit Exec lines, cron
lines, scripts and supervisor configs."""
from __future__ import annotations

import fnmatch
import functools
import os
import re
import shlex
from dataclasses import dataclass

from relayq_supervisor.doctor.rootfs import in_root, read_script


@dataclass(frozen=True)
class DoctorTarget:
    """What this supervisor owns: the Redis port and dir, the programs' argv, its own pids and config."""
    redis_port: int | None = None
    redis_dir: str | None = None
    program_commands: tuple[tuple[str, ...], ...] = ()
    own_pids: frozenset[int] = frozenset()
    own_config: str | None = None


_REDIS_SERVER = re.compile(r"(?<![\w.-])redis-server(?![\w-])", re.I)
_REDIS_CLI = re.compile(r"(?<![\w.-])redis-cli(?![\w-])", re.I)
_SHUTDOWN = re.compile(r"\bshutdown\b", re.I)
_KILLER = re.compile(r"(?<![\w.-])(?:kill|pkill|killall|skill|fuser)(?![\w-])"
                     r"|\bsystemctl\b.*\b(?:stop|kill|restart|try-restart|reload-or-restart)\b"
                     r"|\bservice\s+\S+\s+(?:stop|restart)\b", re.I)
_REDIS_WORD = re.compile(r"redis", re.I)
_OTHER_SUPERVISOR = re.compile(r"(?<![\w.-])relayq-supervisor(?![\w-])")
_TOKEN_SPLIT = re.compile(r"[\s;|&()`'\"<>]+")
# Wrappers that run the real command given after them.
_WRAPPERS = frozenset({"env", "nice", "nohup", "setsid", "stdbuf", "ionice", "chrt", "taskset", "exec",
                       "sudo", "runuser", "timeout", "flock"})
_INTERPRETER = re.compile(r"^(?:python[\d.]*|pypy[\d.]*|node(?:js)?|sh|bash|dash|zsh|perl|ruby)$")


def program_markers(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The words that identify a configured program in other command lines: its executable's basename,
    or for an interpreter its `-m` module or script name (matching "python3" itself would flag everything)."""
    words = list(argv)
    if len(words) == 1 and " " in words[0]:
        try:
            words = shlex.split(words[0])
        except ValueError:      # unbalanced quotes: whitespace is good enough to find the executable
            words = words[0].split()
    while words and (os.path.basename(words[0]) in _WRAPPERS or "=" in words[0] or words[0].startswith("-")):
        words.pop(0)
    if not words:
        return ()
    exe = os.path.basename(words[0])
    if not _INTERPRETER.match(exe):
        return (exe,)
    rest = words[1:]
    for i, word in enumerate(rest):
        if word == "-m" and i + 1 < len(rest):
            return (rest[i + 1],)
        if word.startswith("-m") and len(word) > 2:
            return (word[2:],)
        if word == "-c":
            return ()           # inline code: nothing stable to recognise it by
        if not word.startswith("-"):
            return (os.path.basename(word),)
    return ()


def marker_patterns(target: DoctorTarget) -> tuple[tuple[str, re.Pattern], ...]:
    return _compile_markers(tuple(tuple(argv) for argv in target.program_commands))


@functools.lru_cache(maxsize=32)
def _compile_markers(commands: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, re.Pattern], ...]:
    found = []
    for argv in commands:
        for marker in program_markers(argv):
            if len(marker) >= 3 and marker not in ("redis-server", "redis-cli"):
                # A whole command word (/usr/local/bin/relayq, relayq.worker), not a path component
                # such as /etc/relayq/config.toml.
                pattern = r"(?<![\w.-])" + re.escape(marker) + r"""(?=$|[\s'";|&)])"""
                found.append((marker, re.compile(pattern)))
    return tuple(found)


def command_reason(text: str, target: DoctorTarget) -> str | None:
    """Why this command line could start, stop or kill Redis or a program; None when it cannot."""
    match = command_match(text, target)
    return match[1] if match else None


def command_match(text: str, target: DoctorTarget) -> tuple[int, str] | None:
    """(strength, reason): 0 is the strongest evidence (a shutdown), higher is weaker."""
    if _REDIS_CLI.search(text) and _SHUTDOWN.search(text):
        return 0, "shuts Redis down (redis-cli shutdown)"
    if _SHUTDOWN.search(text) and _REDIS_WORD.search(text):
        return 0, "shuts Redis down"        # a client library's shutdown(), e.g. in python3 -c
    if _KILLER.search(text):
        if _REDIS_WORD.search(text):
            return 1, "kills or stops Redis"
        if target.redis_port and re.search(rf"(?<!\d){target.redis_port}(?!\d)", text):
            return 1, f"kills or stops whatever holds port {target.redis_port}"
    if _REDIS_SERVER.search(text):
        return 2, "starts a redis-server"
    if _REDIS_CLI.search(text):
        return 3, "runs redis-cli (which can shut Redis down)"
    for marker, pattern in marker_patterns(target):
        if pattern.search(text):
            return 4, f"runs {marker}, a program relayq-supervisor owns"
    if _OTHER_SUPERVISOR.search(text):
        return 4, "runs another relayq-supervisor"
    for token in _TOKEN_SPLIT.split(text):
        if "=" in token or "://" in token:
            continue        # REDIS_URL=redis://... configures a client, it runs nothing
        base = os.path.basename(token)
        if _REDIS_WORD.search(base):
            return 5, f"runs {base}, a Redis-named command"
    return None


def name_matches_redis(name: str) -> bool:
    return fnmatch.fnmatch(name.lower(), "*redis*")


def script_evidence(text: str, target: DoctorTarget, root: str) -> list[tuple[int, str, str]]:
    """Follow absolute script paths named in `text` one level deep (a unit or cron line that only
    names /usr/local/bin/redis-monitor.sh): the script's matching lines are the real evidence.
    Returns (strength, `script:line: text`, why), the strongest evidence first."""
    found = []
    for token in _TOKEN_SPLIT.split(text):
        token = token.lstrip("@-:+!")
        if not token.startswith("/"):
            continue
        script = read_script(in_root(token, root))
        if script is None:
            continue        # binaries and unreadable files: their name is all we have
        for lineno, line in enumerate(script.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            match = command_match(stripped, target)
            if match:
                found.append((match[0], lineno, f"{token}:{lineno}: {stripped}", match[1]))
    found.sort(key=lambda f: (f[0], f[1]))
    return [(strength, where, why) for strength, _, where, why in found[:5]]
