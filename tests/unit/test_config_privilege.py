"""[redis] and [[program]] user, group, supplementary_groups, umask, nice, limits and
no_new_privileges (issue 17): what they parse to, and every refusal as `PATH:LINE: ...`."""
from __future__ import annotations

import os
import pwd
import resource
import textwrap
from pathlib import Path

import pytest

from relayq_supervisor import config
from relayq_supervisor.config import ground as config_ground
from relayq_supervisor.config import privileges as config_privileges
from relayq_supervisor.config.load import parse_config
from relayq_supervisor.config.model import RLIM_INFINITY, Privileges
from relayq_supervisor.config.redis import DATA_DIR_MARK
from relayq_supervisor.errors import ConfigError

PATH = "/etc/relayq/config.toml"
NOBODY = pwd.getpwnam("nobody")


def program(extra: str = "", *, directory: str = "") -> str:
    where = f"directory = '{directory}'\n" if directory else ""
    return f"[[program]]\nname = 'w'\ncommand = ['true']\n{where}{textwrap.dedent(extra)}"


def privileges(extra: str) -> Privileges:
    return parse_config(program(extra).encode(), PATH).programs[0].privileges


def error(text: str, path: str = PATH, ground: bool = False) -> str:
    with pytest.raises(ConfigError) as failed:
        parse_config(text.encode(), path, ground=ground)
    return str(failed.value)


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        pytest.skip(f"these cases are about a supervisor running as root (the tests run as uid {os.geteuid()})")


def test_no_keys_change_nothing():
    priv = privileges("")
    assert priv == Privileges() and not priv.in_child


def test_user_resolves_its_ids_groups_and_home(as_root):
    priv = privileges("user = 'nobody'\n")
    assert (priv.user, priv.uid, priv.gid) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert NOBODY.pw_gid not in priv.groups
    assert (priv.home, priv.shell) == (NOBODY.pw_dir, NOBODY.pw_shell)
    assert priv.no_new_privileges and priv.in_child


def test_group_supplementary_groups_and_no_new_privileges_as_written(as_root):
    priv = privileges("user = 'nobody'\ngroup = 'root'\nsupplementary_groups = []\nno_new_privileges = false\n")
    assert (priv.gid, priv.groups, priv.no_new_privileges) == (0, (), False)


def test_umask_nice_and_limits():
    priv = privileges("umask = '027'\nnice = 5\nlimits = { nofile = 1024, as = '1GiB', core = 0 }\n")
    assert (priv.umask, priv.nice) == (0o027, 5)
    assert priv.limits == (("nofile", 1024, 1024), ("as", 1 << 30, 1 << 30), ("core", 0, 0))
    assert not priv.no_new_privileges and priv.in_child


def test_unlimited_where_the_supervisor_has_no_hard_limit():
    if resource.getrlimit(resource.RLIMIT_CORE)[1] != resource.RLIM_INFINITY:
        pytest.skip("the hard RLIMIT_CORE of this test run is finite")
    assert privileges("[program.limits]\ncore = 'unlimited'\n").limits == (("core", RLIM_INFINITY, RLIM_INFINITY),)


@pytest.mark.parametrize("extra, line, message", [
    ("user = 'no-such-user-rq'\n", 4, "user 'no-such-user-rq' is not a user on this machine (create it: "
                                      "useradd --system no-such-user-rq, or fix the name)"),
    ("group = 'root'\n", 4, "'group' needs 'user' too (the group of a program's user)"),
    ("umask = '0999'\n", 4, "'umask' must be octal digits like \"0027\" (at most 0777), not '0999'"),
    ("umask = 27\n", 4, "'umask' must be a string, not 27"),
    ("nice = 20\n", 4, "'nice' must be between -20 and 19, not 20"),
    ("limits = { files = 10 }\n", 4, "unknown limit 'files' (known limits: nofile, nproc, core, memlock, as)"),
    ("limits = { nofile = 'unlimited' }\n", 4, "limits.nofile cannot be \"unlimited\": the kernel caps it at "
                                               "fs.nr_open; write a number like 65535"),
    ("[program.limits]\nnproc = '10k'\n", 5, "limits.nproc: '10k' is not a number: write a number or \"unlimited\""),
    ("[program.limits]\nas = -1\n", 5, "limits.as: -1 is negative: write a number of bytes (or \"64MiB\") "
                                       "or \"unlimited\""),
])
def test_refusals(extra, line, message):
    assert error(program(extra)) == f"{PATH}:{line}: {message}"


def test_user_groups_are_checked(as_root):
    assert error(program("user = 'nobody'\ngroup = 'no-such-group-rq'\n")) == (
        f"{PATH}:5: group 'no-such-group-rq' is not a group on this machine")
    assert error(program("user = 'nobody'\nsupplementary_groups = ['root', 'no-such-group-rq']\n")) == (
        f"{PATH}:5: group 'no-such-group-rq' is not a group on this machine")


def test_a_limit_above_the_supervisors_hard_limit_is_refused_unless_it_may_raise_it(monkeypatch):
    monkeypatch.setattr(config_privileges, "_can_raise_limits", lambda: False)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert error(program(f"limits = {{ nofile = {hard + 1} }}\n")) == (
        f"{PATH}:4: limits.nofile = {hard + 1} is above the supervisor's own hard limit ({hard}), which only "
        "root (CAP_SYS_RESOURCE) may exceed: raise it where the supervisor is started (e.g. LimitNOFILE= in "
        "its systemd unit) or ask for less")
    monkeypatch.setattr(config_privileges, "_can_raise_limits", lambda: True)
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    if hard < nr_open:      # with CAP_SYS_RESOURCE a program may get more than the supervisor has
        assert privileges(f"limits = {{ nofile = {hard + 1} }}\n").limits == (("nofile", hard + 1, hard + 1),)


def test_nofile_is_capped_by_the_kernel(monkeypatch):
    monkeypatch.setattr(config_privileges, "_can_raise_limits", lambda: True)
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    assert error(program(f"limits = {{ nofile = {nr_open + 1} }}\n")) == (
        f"{PATH}:4: limits.nofile = {nr_open + 1} is above the kernel's cap on open files (fs.nr_open = {nr_open})")


def test_another_user_needs_a_root_supervisor(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 4242)
    text = error(program("user = 'nobody'\n"))
    assert text == (f"{PATH}:4: user = 'nobody' needs the supervisor to run as root (it runs as uid 4242): "
                    "start it as root (the shipped unit does) or remove 'user'")


def test_its_own_user_is_fine_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: NOBODY.pw_uid)
    monkeypatch.setattr(os, "getegid", lambda: NOBODY.pw_gid)
    priv = privileges("user = 'nobody'\n")
    assert priv.user == "nobody" and priv.uid is None       # nothing to change: no setuid in the child
    assert config.run_as_name(priv) == "nobody"


def test_a_directory_the_user_cannot_search_is_refused_at_check(as_root, open_tmp: Path):
    tmp_path = open_tmp
    private = tmp_path / "private"
    (private / "work").mkdir(parents=True)
    private.chmod(0o700)
    conf = tmp_path / "config.toml"
    text = "[supervisor]\nrun_dir = 'run'\nlog_dir = 'log'\n" + program("user = 'nobody'\n",
                                                                         directory=str(private / "work"))
    assert error(text, str(conf), ground=True) == (
        f"{conf}:7: program 'w': directory {private / 'work'} is not usable by user nobody: {private} "
        "(owner root, mode 0700) is not searchable by it")
    private.chmod(0o755)
    assert parse_config(text.encode(), str(conf), ground=True).programs[0].privileges.user == "nobody"


def test_a_redis_dir_of_another_owner_is_refused_at_check(as_root, open_tmp: Path, monkeypatch):
    tmp_path = open_tmp
    monkeypatch.setattr(config_ground, "redis_server_version", lambda binary: "7.0.0")
    binary = tmp_path / "redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (tmp_path / "data").mkdir()
    conf = tmp_path / "config.toml"
    text = f"[redis]\nbinary = '{binary}'\ndir = 'data'\nuser = 'nobody'\n"
    assert error(text, str(conf), ground=True) == (
        f"{conf}:3: Redis dir {tmp_path / 'data'} is owned by root, not by Redis' user nobody, and the "
        f"supervisor did not make it: it does not take it over; `chown -R nobody: {tmp_path / 'data'}` or set "
        "another dir")
    # made by the supervisor for its owner (its mark, trusted.*: only root writes it): given to nobody at start
    try:
        os.setxattr(tmp_path / "data", DATA_DIR_MARK, b"0")
    except OSError as e:
        print(f"no trusted.* extended attributes here ({e.strerror}): that half not checked")
    else:
        assert parse_config(text.encode(), str(conf), ground=True).redis.privileges.uid == NOBODY.pw_uid
    (tmp_path / "data").rmdir()         # missing: the supervisor will make it for nobody
    assert parse_config(text.encode(), str(conf), ground=True).redis.privileges.uid == NOBODY.pw_uid


def test_only_programs_with_a_setting_leave_the_fast_spawn_path():
    from relayq_supervisor.linux import credentials
    assert credentials.child_setup(Privileges()) is None
    assert credentials.child_setup(privileges("umask = '0027'\n")) is not None


def test_doctor_warns_about_jobs_run_as_root(as_root, monkeypatch):
    from relayq_supervisor.doctor.privilege import root_program_warnings
    text = program("") + "[[program]]\nname = 'safe'\ncommand = ['true']\nuser = 'nobody'\n" + \
        "[[program]]\nname = 'root'\ncommand = ['true']\nuser = 'root'\n"
    conf = parse_config(text.encode(), PATH)
    assert root_program_warnings(conf, supervisor_uid=0) == [
        "program 'w' runs jobs as root (with no 'user' set, as the supervisor): a job can read the supervisor's "
        "secrets, kill Redis and rewrite its data; set user = \"relayq\" (or another unprivileged user) in its "
        "[[program]] table (README: Least privilege)",
        "program 'root' runs jobs as root (as user root): a job can read the supervisor's secrets, kill Redis and "
        "rewrite its data; set user = \"relayq\" (or another unprivileged user) in its [[program]] table "
        "(README: Least privilege)"]
    assert [w.split("'")[1] for w in root_program_warnings(conf, supervisor_uid=1000)] == ["root"]
