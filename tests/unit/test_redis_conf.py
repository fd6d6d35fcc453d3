"""[redis] args, [redis.config] and include -> the redis.conf the supervisor writes, and the
check of what Redis took. Pure: parsing and text, no Redis runs here."""
from __future__ import annotations

import os
import re

import pytest
from support import REDIS_SERVER

from relayq_supervisor.config.load import parse_config
from relayq_supervisor.errors import ConfigError
from relayq_supervisor.kinds.redis import conf

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="[redis] needs a redis-server binary to parse")


def redis_spec(body: str, tmp_path=None):
    path = str(tmp_path / "c.toml") if tmp_path else "/etc/relayq/c.toml"
    text = f'[redis]\nbinary = "{REDIS_SERVER}"\ndir = "/var/lib/r"\n{body}'
    return parse_config(text.encode(), path).redis


def error_of(body: str) -> str:
    with pytest.raises(ConfigError) as e:
        redis_spec(body)
    return str(e.value)


def test_config_table_becomes_directives_with_one_save_pair_a_line():
    spec = redis_spec('[redis.config]\nappendonly = true\nappendfsync = "always"\n'
                      'save = ["3600 1", "300 100 60 10000"]\nclient-output-buffer-limit = "normal 0 0 0"\n')
    assert spec.redis.directives == (
        ("appendonly", ("yes",)), ("appendfsync", ("always",)),
        ("save", ("3600", "1")), ("save", ("300", "100")), ("save", ("60", "10000")),
        ("client-output-buffer-limit", ("normal", "0", "0", "0")))
    text = conf.conf_text(spec.redis)
    assert 'save "3600" "1"\nsave "300" "100"\nsave "60" "10000"\n' in text


def test_args_are_translated_and_what_argv_owns_is_left_out():
    # "60 1000" as one argv word: 6.2 took it as one value and saved nothing; here it is a pair
    spec = redis_spec('args = ["--appendonly", "yes", "--save", "60 1000", "--save", "", "--port", "1", '
                      '"--daemonize", "yes", "--supervised", "no", "--maxmemory", "100mb"]\n')
    assert spec.redis.directives == (("appendonly", ("yes",)), ("maxmemory", ("100mb",)), ("save", ("60", "1000")))
    assert spec.redis.supervised == "no"


def test_save_nothing_and_the_include_comes_last(tmp_path):
    (tmp_path / "local.conf").write_text("maxmemory 1mb\n")
    spec = redis_spec('include = "local.conf"\n[redis.config]\nsave = ""\n', tmp_path)
    assert spec.redis.include == (str(tmp_path / "local.conf"),)
    assert conf.conf_text(spec.redis).endswith(f'save ""\ninclude "{tmp_path}/local.conf"\n')
    assert conf.expected_persistence(spec.redis) == {"dir": os.path.realpath("/var/lib/r"), "save": ""}


@pytest.mark.parametrize("body, message", [
    ('[redis.config]\nport = 1\n', r"c\.toml:5: \[redis.config\] may not set 'port': set \[redis\] port"),
    ('[redis.config]\nrequirepass = "x"\n', r":5: .*'requirepass': secrets stay out of the config"),
    ('config = { save = ["60"] }\n', r":4: redis directive 'save': '60' must be pairs"),
    ('[redis.config]\nappendfsync = "every\\"sec"\n', r":5: redis directive 'appendfsync': .* holds '\"'"),
    ('[redis.config]\nAppendOnly = "yes"\n', r":5: 'AppendOnly' is not a redis.conf directive name"),
    ('[redis.config]\nrename-command = [["a"]]\n', r":5: redis directive 'rename-command': each value must be"),
    ('args = ["--appendonly", "yes"]\n[redis.config]\nappendonly = "no"\n', r":6: .*'appendonly' is set both"),
    ('args = ["--requirepass", "hunter2"]\n', r":4: \[redis\] args may not set 'requirepass'"),
    ('args = ["--save", "1", "2", "x"]\n', r":4: .*must be pairs"),
    ('include = "/nonexistent/redis.conf"\n', r":4: redis config file /nonexistent/redis.conf to include does not"),
])
def test_bad_redis_settings_name_their_line(body, message):
    assert re.search(message, error_of(body)), error_of(body)


def test_redis_has_no_start_limit_by_default():
    assert redis_spec("").restart.start_limit_burst == 0
    assert redis_spec("[redis.restart]\nstart_limit_burst = 4\n").restart.start_limit_burst == 4


def test_persistence_mismatch_names_the_key_and_both_values():
    want = {"appendonly": "yes", "save": "3600 1", "dir": "/data"}
    assert conf.persistence_mismatch(want, {"appendonly": "YES", "save": "3600 1", "dir": "/data"}) is None
    text = conf.persistence_mismatch(want, {"appendonly": "yes", "save": b"", "dir": "/data"})
    assert text.startswith("persistence setting 'save' is '' in Redis but the config asks '3600 1'")
