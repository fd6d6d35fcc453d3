"""The machine a config will run on, as start-up will meet it: directories, files, the Redis
binary, and what a program's user must be able to reach. Refused at load (with `ground`),
so that --check never calls valid what start-up then cannot do."""
from __future__ import annotations

import os
import shutil
import stat

from relayq_supervisor.config.model import Config, Privileges, SupervisorSpec
from relayq_supervisor.config.paths import _check_directory, _check_file_slot, children_path
from relayq_supervisor.config.privileges import _user_name
from relayq_supervisor.config.redis import data_dir_made_for, redis_server_version
from relayq_supervisor.config.source import _Locator


def _check_ground(loc: _Locator, config: Config, where_of: dict[str, tuple]) -> None:
    """The machine the config will run on, as start-up will meet it: the directories
    and files it creates or opens, each program's working directory, the Redis binary.
    Refused here, so that --check never calls valid what start-up then cannot do."""
    _check_supervisor_ground(loc, config.supervisor)
    for spec in config.programs:
        where = where_of[spec.name]
        if spec.redis is not None:
            _check_directory(loc, where + ("dir",), "Redis dir", spec.redis.dir)
            try:
                redis_server_version(spec.redis.binary)
            except ValueError as e:
                raise loc.error(where + ("binary",), str(e)) from None
        else:
            # a missing directory must not read as `exec of python3 failed: No such file or directory`
            _check_directory(loc, where + ("directory",), f"program '{spec.name}': directory", spec.directory,
                             create=False)
    _check_privileged_ground(loc, config, where_of)


def _check_supervisor_ground(loc: _Locator, supervisor: SupervisorSpec) -> None:
    _check_directory(loc, ("supervisor", "run_dir"), "run_dir", supervisor.run_dir)
    _check_directory(loc, ("supervisor", "log_dir"), "log_dir", supervisor.log_dir)
    _check_file_slot(loc, ("supervisor", "audit_log"), "audit_log", supervisor.audit_log)
    _check_directory(loc, ("supervisor", "control_socket"), "control_socket's directory",
                     os.path.dirname(supervisor.control_socket))
    if os.path.isdir(supervisor.control_socket):
        raise loc.error(("supervisor", "control_socket"),
                        f"control_socket {supervisor.control_socket} is a directory")


def _mode_allows(st: os.stat_result, uid: int, gids: tuple[int, ...], want: int) -> bool:
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid in gids:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want == want


def _user_access_problem(path: str, priv: Privileges, want: int, what: str) -> str | None:
    """Why the program's user could not use `path` (`want`: os.R_OK, W_OK, X_OK bits) by
    the mode bits of it and of every directory above it, or None. A missing `path` (and
    missing parents) is judged by what exists above it. ACLs are not read."""
    if priv.uid is None or priv.uid == 0:
        return None
    gids = (priv.gid if priv.gid is not None else -1, *priv.groups)
    parts = os.path.normpath(path).split("/")[1:]
    current = "/"
    for i, part in enumerate(["", *parts]):
        current = os.path.join(current, part) if part else current
        try:
            st = os.stat(current)
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"{current}: {e.strerror}"
        last = i == len(parts)
        need = want if last else os.X_OK
        if not _mode_allows(st, priv.uid, gids, need):
            kind = "not " + {os.X_OK: "searchable", os.R_OK: "readable", os.W_OK: "writable",
                              os.W_OK | os.X_OK: "writable"}.get(need, "usable")
            return (f"{what} {path} is not usable by user {priv.user}: {current} (owner {_user_name(st.st_uid)}, "
                    f"mode {stat.S_IMODE(st.st_mode):04o}) is {kind} by it")
    return None


def _check_user_access(loc, keys: tuple, path: str, priv: Privileges, want: int, what: str) -> None:
    """The path as written and, when a symbolic link leads elsewhere, where it leads: the
    kernel searches both (a venv's python3 links to an interpreter that may sit under /root)."""
    real = os.path.realpath(path)
    for candidate in (path, real) if real != os.path.normpath(path) else (path,):
        problem = _user_access_problem(candidate, priv, want, what)
        if problem:
            raise loc.error(keys, problem if candidate == path else f"{problem} (where {path} leads)")


def _check_privileged_ground(loc: _Locator, config: Config, where_of: dict[str, tuple]) -> None:
    """What a program's user must reach: its executable and directory; for Redis its data
    dir (the supervisor creates a missing one for it, but never takes over one another
    user owns), run_dir (its config and ACL files) and any log file or included file."""
    for spec in config.programs:
        priv = spec.privileges
        if priv.uid is None or priv.uid == 0:
            continue
        where = where_of[spec.name]
        exe = shutil.which(spec.command[0], path=dict(spec.environment).get("PATH", children_path())) \
            if "/" not in spec.command[0] else os.path.join(spec.directory, spec.command[0])
        if exe:
            _check_user_access(loc, where + ("user",), exe, priv, os.X_OK, f"program '{spec.name}': command")
        if spec.redis is None:
            _check_user_access(loc, where + ("directory",), spec.directory, priv, os.X_OK,
                               f"program '{spec.name}': directory")
            continue
        r = spec.redis
        try:
            st = os.stat(r.dir)
        except OSError:
            st = None
        if st is not None and st.st_uid != priv.uid:
            if data_dir_made_for(r.dir) != st.st_uid:
                raise loc.error(where + ("dir",), f"Redis dir {r.dir} is owned by {_user_name(st.st_uid)}, not by "
                                                  f"Redis' user {priv.user}, and the supervisor did not make it: it "
                                                  f"does not take it over; `chown -R {priv.user}: {r.dir}` or set "
                                                  "another dir")
            # made by the supervisor for Redis' previous user: given to the new one at start
        else:
            _check_user_access(loc, where + ("dir",), r.dir, priv, os.W_OK | os.X_OK, "Redis dir")
        _check_user_access(loc, ("supervisor", "run_dir"), config.supervisor.run_dir, priv, os.X_OK,
                           "run_dir (Redis reads its config and ACL files there)")
        for path in r.include:
            _check_user_access(loc, where + ("include",), path, priv, os.R_OK, "included redis config file")
        for name, words in r.directives:
            if name == "logfile" and words and words[0]:
                logfile = words[0] if os.path.isabs(words[0]) else os.path.join(r.dir, words[0])
                target = logfile if os.path.exists(logfile) else os.path.dirname(logfile)
                _check_user_access(loc, where + ("config",), target, priv,
                                   os.W_OK if target == logfile else os.W_OK | os.X_OK, "Redis logfile")
