"""Config the supervisor must refuse up front (issue 13): each case is the exact
`PATH:LINE: what is wrong` message, from the parser alone (parse_config) or, for what
depends on the machine (directories, the Redis binary), from load_config on a real file.
The fuzz test at the end throws a few hundred mutated configs at the parser."""
from __future__ import annotations

import math
import os
import stat
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import REDIS_SERVER

from relayq_supervisor.config import paths as config_paths
from relayq_supervisor.config.load import load_config, parse_config
from relayq_supervisor.config.model import Config
from relayq_supervisor.config.supervisor import load_supervisor_section, salvage_supervisor_section
from relayq_supervisor.config.values import _MAXIMA
from relayq_supervisor.errors import ConfigError, ConfigSyntaxError

PATH = "/etc/relayq/test.toml"
PROGRAM = '[[program]]\nname = "a"\ncommand = ["sleep", "1"]\n'
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server")


def refused(text: str, path: str = PATH) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(text.encode(), path)
    return str(e.value)


def refused_on_disk(tmp_path, text: str) -> str:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    return str(e.value).replace(str(tmp_path), "TMP")


# --- numbers: NaN, infinity, upper bounds ------------------------------------------

@pytest.mark.parametrize("key, where, line", [
    ("backoff_initial", "[program.restart]", 5), ("backoff_max", "[program.restart]", 5),
    ("backoff_factor", "[program.restart]", 5), ("jitter", "[program.restart]", 5),
    ("stable_after", "[program.restart]", 5), ("start_limit_interval", "[program.restart]", 5),
    ("stop_timeout", "", 4), ("ready_after", "", 4),
])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_infinity_are_refused_for_every_float(key, where, line, value):
    text = PROGRAM + (f"{where}\n" if where else "") + f"{key} = {value}\n"
    if "nan" in value:
        assert refused(text) == f"{PATH}:{line}: '{key}' must be a number, not nan"
    else:
        bound = f" (at most {_MAXIMA[key]})" if key in _MAXIMA else ""
        assert refused(text) == f"{PATH}:{line}: '{key}' must be a finite number, not {value}{bound}"


def test_nan_health_interval_is_refused():
    assert refused("[supervisor]\nhealth_interval = nan\n" + PROGRAM) == \
        f"{PATH}:2: 'health_interval' must be a number, not nan"


def test_a_tiny_health_interval_would_spin_and_is_refused():
    assert refused("[supervisor]\nhealth_interval = 1e-9\n" + PROGRAM) == \
        f"{PATH}:2: 'health_interval' must be at least 0.1 (seconds)"


@pytest.mark.parametrize("table, key, value, line", [
    ("program", "numprocs", 1000000000, 4),
    ("program", "stop_timeout", 86401, 4),
    ("program", "ready_after", 3601, 4),
    ("restart", "backoff_factor", 101, 5),
    ("restart", "backoff_initial", 3601, 5),
    ("restart", "backoff_max", 1e12, 5),
    ("restart", "stable_after", 86401, 5),
    ("restart", "start_limit_burst", 10001, 5),
    ("restart", "start_limit_interval", 1e300, 5),
    ("supervisor", "audit_backups", 3000000, 2),
    ("supervisor", "log_backups", 1001, 2),
    ("supervisor", "audit_max_bytes", 1 << 31, 2),
    ("supervisor", "log_max_bytes", 10 ** 30, 2),
    ("supervisor", "health_interval", 3601, 2),
    ("program", "watchdog_sec", 86401, 4),
])
def test_upper_bounds(table, key, value, line):
    if table == "supervisor":
        text = f"[supervisor]\n{key} = {value}\n" + PROGRAM
    elif table == "restart":
        text = PROGRAM + f"[program.restart]\n{key} = {value}\n"
    else:
        text = PROGRAM + f"{key} = {value}\n"
    assert refused(text) == f"{PATH}:{line}: '{key}' must be at most {_MAXIMA[key]}, not {value}"


def test_the_bounds_themselves_are_accepted():
    text = textwrap.dedent(f"""\
        [supervisor]
        audit_backups = 1000
        log_max_bytes = {1 << 30}
        health_interval = 0.1
        [[program]]
        name = "a"
        command = ["sleep", "1"]
        numprocs = 1000
        stop_timeout = 86400
        [program.restart]
        backoff_factor = 100
        start_limit_burst = 10000
        """)
    config = parse_config(text.encode(), PATH)
    assert config.programs[0].numprocs == 1000 and config.supervisor.audit_backups == 1000


@needs_redis
def test_redis_stop_timeout_nan_would_sigkill_redis_at_once_and_is_refused():
    text = f'[redis]\nbinary = "{REDIS_SERVER}"\nstop_timeout = nan\n'
    assert refused(text) == f"{PATH}:3: 'stop_timeout' must be a number, not nan"


# --- NUL bytes -----------------------------------------------------------------------

NUL_TAIL = "contains a NUL byte (\\0), which no path, argument or environment entry can hold"


@pytest.mark.parametrize("text, line, what", [
    ('[supervisor]\nrun_dir = "run\\u0000x"\n' + PROGRAM, 2, "'run_dir'"),
    ('[supervisor]\ncontrol_group = "g\\u0000"\n' + PROGRAM, 2, "'control_group'"),
    (PROGRAM + 'directory = "/tmp\\u0000"\n', 4, "'directory'"),
    ('[[program]]\nname = "a"\ncommand = ["sleep", "1\\u0000"]\n', 3, "'command' item 2"),
    (PROGRAM + 'environment = {A = "x\\u0000y"}\n', 4, "'A'"),
    (PROGRAM + 'environment = {"A\\u0000" = "1"}\n', 4, "'A\\0'"),
])
def test_nul_bytes_are_refused(text, line, what):
    assert refused(text) == f"{PATH}:{line}: {what} {NUL_TAIL}"


@needs_redis
@pytest.mark.parametrize("key, value, what", [
    ("args", '["--maxmemory", "1mb\\u0000"]', "'args' item 2"),
    ("bind", '["127.0.0.1\\u0000"]', "'bind' item 1"),
    ("dir", '"data\\u0000"', "'dir'"),
])
def test_nul_bytes_in_redis_settings_are_refused(key, value, what):
    text = f'[redis]\nbinary = "{REDIS_SERVER}"\n{key} = {value}\n'
    assert refused(text) == f"{PATH}:3: {what} {NUL_TAIL}"


# --- names -------------------------------------------------------------------------------

def test_a_name_whose_log_file_would_not_fit_name_max_is_refused():
    # the longest: its log's oldest rotation, a*300 + ".log.5" (5 backups by default)
    name = "a" * 300
    assert refused(f'[[program]]\nname = "{name}"\ncommand = ["sleep", "1"]\n') == (
        f"{PATH}:2: program name is too long: its file {'a' * 24}... would be 306 bytes, "
        "more than a file name may have (255, NAME_MAX)")


def test_the_longest_name_counts_its_instances_rotated_logs():
    # with 1000 instances and 1000 backups the longest is NAME + ":999.log.1000": 242 + 13 = 255 fits
    ok = (f'[supervisor]\nlog_backups = 1000\n[[program]]\nname = "{"b" * 242}"\n'
          'command = ["sleep", "1"]\nnumprocs = 1000\n')
    assert parse_config(ok.encode(), PATH).programs[0].numprocs == 1000
    bad = ok.replace("b" * 242, "b" * 243)
    assert refused(bad) == (f"{PATH}:4: program name is too long: its file {'b' * 24}... would be 256 bytes, "
                            "more than a file name may have (255, NAME_MAX)")


def test_supervisor_is_a_reserved_name():
    assert refused('[[program]]\nname = "supervisor"\ncommand = ["sleep", "1"]\n') == \
        f"{PATH}:2: the name 'supervisor' is reserved for the supervisor's own lock file"


def test_redis_stays_reserved():
    assert refused('[[program]]\nname = "redis"\ncommand = ["sleep", "1"]\n') == \
        f"{PATH}:2: the name 'redis' is reserved for the [redis] table"


# --- environment ---------------------------------------------------------------------------

@pytest.mark.parametrize("entry, message", [
    ('{"" = "1"}', "environment key must not be empty"),
    ('{"A=B" = "1"}', "environment key 'A=B' must not contain '='"),
    ('{A = 1}', "environment value for 'A' must be a string"),
])
def test_environment_keys_exec_cannot_take(entry, message):
    assert refused(PROGRAM + f"environment = {entry}\n") == f"{PATH}:4: {message}"


@needs_redis
def test_redis_environment_is_checked_like_a_programs():
    text = f'[redis]\nbinary = "{REDIS_SERVER}"\nenvironment = {{"X=Y" = "1"}}\n'
    assert refused(text) == f"{PATH}:3: environment key 'X=Y' must not contain '='"


# --- stop signals ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, name, why", [
    ('"SIGSTOP"', "SIGSTOP", "it only suspends a program"),
    ('"TSTP"', "SIGTSTP", "it only suspends a program"),
    ('"SIGCHLD"', "SIGCHLD", "a program that does not catch it ignores it"),
    ("18", "SIGCONT", "a program that does not catch it ignores it"),
    ('"winch"', "SIGWINCH", "a program that does not catch it ignores it"),
    ('"SIGKILL"', "SIGKILL", "it cannot be caught, so the program gets no chance to stop cleanly "
                             "(the supervisor sends SIGKILL by itself after stop_timeout)"),
])
def test_stop_signals_that_cannot_stop_a_program(value, name, why):
    assert refused(PROGRAM + f"stop_signal = {value}\n") == \
        f"{PATH}:4: 'stop_signal' {name} cannot stop a program: {why}"


@pytest.mark.parametrize("value", ['"SIGINT"', '"QUIT"', '"SIGUSR1"', "1"])
def test_stop_signals_that_end_a_program_are_accepted(value):
    assert parse_config((PROGRAM + f"stop_signal = {value}\n").encode(), PATH).programs[0].stop_signal > 0


# --- Redis bind -------------------------------------------------------------------------------

@needs_redis
@pytest.mark.parametrize("address", ["not an ip", "localhost", "127.0.0.256", "", "-"])
def test_bind_must_be_an_ip_address(address):
    text = f'[redis]\nbinary = "{REDIS_SERVER}"\nbind = ["127.0.0.1", "{address}"]\n'
    assert refused(text) == (f"{PATH}:3: bind: {address!r} is not an IP address "
                             "(like 127.0.0.1 or ::1; '-' before it makes it optional, '*' is any)")


@needs_redis
def test_bind_forms_redis_takes_are_accepted():
    text = f'[redis]\nbinary = "{REDIS_SERVER}"\nbind = ["127.0.0.1", "-::1", "*", "::*", "fe80::1%lo"]\n'
    assert parse_config(text.encode(), PATH).redis.redis.bind[1] == "-::1"


# --- non-UTF-8 ---------------------------------------------------------------------------------

def test_non_utf8_bytes_are_reported_by_line_and_column():
    raw = b'[[program]]\nname = "a"\ncommand = ["sleep", "\xff1"]\n'
    with pytest.raises(ConfigError) as e:
        parse_config(raw, PATH)
    assert str(e.value) == f"{PATH}:3: not UTF-8 text: byte 0xff at column 22"


# --- the machine: directories, files, the Redis binary (load_config) ---------------------------

def test_run_dir_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("")
    assert refused_on_disk(tmp_path, '[supervisor]\nrun_dir = "run"\n' + PROGRAM) == \
        "TMP/config.toml:2: run_dir TMP/run is not a directory"


def test_log_dir_below_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    assert refused_on_disk(tmp_path, '[supervisor]\nlog_dir = "file/log"\n' + PROGRAM) == \
        "TMP/config.toml:2: log_dir TMP/file/log cannot be created: TMP/file is not a directory"


def test_an_unwritable_run_dir(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(stat.S_IRUSR | stat.S_IXUSR)
    real_access = os.access
    if os.geteuid() == 0:       # root passes every permission check: make run_dir read-only to the check
        monkeypatch.setattr(config_paths.os, "access",
                            lambda p, mode: not (os.fspath(p) == str(run) and mode & os.W_OK) and real_access(p, mode))
    assert refused_on_disk(tmp_path, '[supervisor]\nrun_dir = "run"\n' + PROGRAM) == \
        f"TMP/config.toml:2: run_dir TMP/run is not writable by uid {os.geteuid()}"


def test_an_audit_log_that_is_a_directory(tmp_path):
    (tmp_path / "audit").mkdir()
    assert refused_on_disk(tmp_path, '[supervisor]\naudit_log = "audit"\n' + PROGRAM) == \
        "TMP/config.toml:2: audit_log TMP/audit is a directory, not a file"


def test_a_too_long_log_dir_component(tmp_path):
    long = "r" * 256
    message = refused_on_disk(tmp_path, f'[supervisor]\nlog_dir = "{long}"\n' + PROGRAM)
    assert message == (f"TMP/config.toml:2: log_dir TMP/{long} has a component of 256 bytes "
                       f"({'r' * 20}...), more than a file name may have (255, NAME_MAX)")


def test_a_missing_directory_is_named_as_such(tmp_path):
    assert refused_on_disk(tmp_path, PROGRAM + 'directory = "nope"\n') == \
        "TMP/config.toml:4: program 'a': directory TMP/nope does not exist"


def test_a_missing_directory_of_a_relative_command_is_named_not_the_command(tmp_path):
    text = '[[program]]\nname = "a"\ncommand = ["./run.sh"]\ndirectory = "nope"\n'
    assert refused_on_disk(tmp_path, text) == "TMP/config.toml:4: program 'a': directory TMP/nope does not exist"


def test_defaults_on_a_usable_machine_are_accepted(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(PROGRAM)
    config = load_config(cfg)
    assert isinstance(config, Config) and config.supervisor.run_dir == str(tmp_path / "var/run")
    assert not (tmp_path / "var").exists()      # checking creates nothing


@needs_redis
def test_redis_dir_that_is_a_file(tmp_path):
    (tmp_path / "data").write_text("")
    text = f'[redis]\nbinary = "{REDIS_SERVER}"\ndir = "data"\n'
    assert refused_on_disk(tmp_path, text) == "TMP/config.toml:3: Redis dir TMP/data is not a directory"


# --- fuzz: a few hundred mutated configs ---------------------------------------------------------

BASE = {
    "supervisor": {"health_interval": 5.0, "log_backups": 5, "audit_max_bytes": 1 << 20},
    "program": [{"name": "w", "command": ["sleep", "1"], "numprocs": 2, "stop_timeout": 10.0,
                 "ready_after": 1.0, "stop_signal": "SIGTERM", "environment": {"A": "1"},
                 "restart": {"backoff_initial": 0.5, "backoff_factor": 2.0, "backoff_max": 60.0,
                             "jitter": 0.1, "stable_after": 10.0, "start_limit_burst": 5,
                             "start_limit_interval": 60.0}}],
}
# (where in BASE, key): every number and a few strings the fuzzer replaces
SLOTS = [(("supervisor",), k) for k in BASE["supervisor"]] + \
        [(("program", 0), k) for k in ("name", "numprocs", "stop_timeout", "ready_after", "stop_signal")] + \
        [(("program", 0, "restart"), k) for k in BASE["program"][0]["restart"]] + \
        [(("program", 0, "environment"), "A"), (("supervisor",), "run_dir")]


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}" for c in v) + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_value(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def render(data: dict) -> str:
    out = ["[supervisor]", *(f"{k} = {toml_value(v)}" for k, v in data["supervisor"].items())]
    for prog in data["program"]:
        out.append("[[program]]")
        out += [f"{k} = {toml_value(v)}" for k, v in prog.items() if k != "restart"]
        out.append("[program.restart]")
        out += [f"{k} = {toml_value(v)}" for k, v in prog["restart"].items()]
    return "\n".join(out) + "\n"


# every character UTF-8 can encode (st.text()'s own default): named by category, since the default
# is worked out by encoding each code point, ~1.5 s on a fresh checkout before the first example
TEXT = st.characters(exclude_categories=("Cs",))
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(10 ** 20), max_value=10 ** 20),
    st.sampled_from([0, 1, -1, 1000, 1001, 10 ** 9, 0.1, 1e-9, 86400.5, 2 ** 63]),
    st.text(TEXT, max_size=300), st.sampled_from(["SIGSTOP", "SIGKILL", "x" * 300, "a\0b", "", "=", "supervisor"]),
    st.booleans(),
)


def assert_sane(config: Config) -> None:
    """An accepted config holds only finite numbers within their bounds."""
    sup = config.supervisor
    for key in ("log_max_bytes", "log_backups", "audit_max_bytes", "audit_backups", "health_interval"):
        v = getattr(sup, key)
        assert math.isfinite(v) and 0 <= v <= _MAXIMA[key], (key, v)
    for p in config.programs:
        for key in ("numprocs", "stop_timeout", "ready_after"):
            v = getattr(p, key)
            assert math.isfinite(v) and 0 <= v <= _MAXIMA[key], (key, v)
        for key in ("backoff_initial", "backoff_factor", "backoff_max", "jitter", "stable_after",
                    "start_limit_burst", "start_limit_interval"):
            v = getattr(p.restart, key)
            assert math.isfinite(v) and 0 <= v <= _MAXIMA.get(key, 1), (key, v)


@settings(max_examples=200, deadline=2000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(slots=st.lists(st.tuples(st.sampled_from(SLOTS), values), min_size=1, max_size=4),
       flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), max_size=2))
def test_fuzzed_configs_are_refused_cleanly_or_sane(slots, flips):
    import copy
    data = copy.deepcopy(BASE)
    for (where, key), value in slots:
        table = data
        for part in where:
            table = table[part]
        table[key] = value
    raw = bytearray(render(data).encode())
    for pos, byte in flips:     # raw byte damage: syntax errors, invalid UTF-8
        raw[pos % len(raw)] = byte
    try:
        config = parse_config(bytes(raw), PATH)
    except ConfigError as e:
        message = str(e)
        assert message.startswith(PATH) and "\n" not in message and "Traceback" not in message
        return
    assert_sane(config)


# --- relayqctl's best-effort read of a broken file ------------------------------------------------

def test_salvage_reads_the_supervisor_table_of_a_file_that_is_not_toml(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_bytes(b'[supervisor]\nrun_dir = "r"\ncontrol_socket = "s/ctl.sock"\nlog_dir = [broken\n'
                    b'[[program]\nname = "\xff"\n')
    with pytest.raises(ConfigSyntaxError):
        load_supervisor_section(cfg)
    sup = salvage_supervisor_section(cfg)
    assert (sup.run_dir, sup.control_socket) == (str(tmp_path / "r"), str(tmp_path / "s/ctl.sock"))
    assert sup.log_dir == str(tmp_path / "var/log")        # its line is broken: the default


def test_watchdog_signal_must_end_a_program():
    from relayq_supervisor.config.load import parse_config
    from relayq_supervisor.errors import ConfigError
    text = b'[[program]]\nname = "a"\ncommand = ["sleep", "1"]\nwatchdog_signal = "SIGSTOP"\n'
    with pytest.raises(ConfigError, match=r"/x.toml:4: 'watchdog_signal' SIGSTOP cannot stop a program: it only suspends"):
        parse_config(text, "/x.toml")
