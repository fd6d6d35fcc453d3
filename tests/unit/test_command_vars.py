"""$VAR / ${VAR} in `command`, by systemd's ExecStart= rules, and the config check that
refuses a variable nothing sets."""
from __future__ import annotations

import pytest

from relayq_supervisor.command_vars import UndefinedVariable, expand_command, referenced
from relayq_supervisor.config.load import parse_config
from relayq_supervisor.errors import ConfigError

PATH = "/etc/relayq/config.toml"


def parse(text: str):
    return parse_config(text.encode(), PATH)


def error(text: str) -> str:
    with pytest.raises(ConfigError) as failed:
        parse(text)
    return str(failed.value)


ENV = {"URL": "redis://u:p@127.0.0.1:6379/0", "ARGS": "--fast  -v 'two words'", "EMPTY": "", "SPACED": " a b "}


@pytest.mark.parametrize("argv, expected", [
    (["w", "${URL}"], ["w", "redis://u:p@127.0.0.1:6379/0"]),
    (["w", "--url=${URL}/x"], ["w", "--url=redis://u:p@127.0.0.1:6379/0/x"]),
    (["w", "${SPACED}"], ["w", " a b "]),                 # ${VAR}: one word, whitespace kept
    (["w", "$ARGS"], ["w", "--fast", "-v", "two words"]),  # $VAR alone: split, quotes respected
    (["w", "$EMPTY", "x"], ["w", "x"]),                    # zero words
    (["w", "${EMPTY}"], ["w", ""]),
    (["w", "--x=$URL"], ["w", "--x=$URL"]),                # $VAR inside a word: as written
    (["w", "a$$b", "$$URL", "$$"], ["w", "a$b", "$URL", "$"]),
    (["w", "$1", "$", "${", "$!"], ["w", "$1", "$", "${", "$!"]),
    (["$URL", "x"], ["$URL", "x"]),                        # the program itself is never expanded
])
def test_expansion_follows_systemd(argv, expected):
    assert expand_command(argv, ENV) == expected


def test_an_undefined_variable_is_named():
    with pytest.raises(UndefinedVariable) as e:
        expand_command(["w", "ok", "--a=${NOPE}"], ENV)
    assert e.value.name == "NOPE" and str(e.value) == "${NOPE} is not set"
    assert referenced(["w", "$A", "${B}x${A}", "$$C", "--d=$D"]) == ["A", "B"]


def test_config_refuses_a_variable_nothing_sets(monkeypatch):
    monkeypatch.delenv("RELAYQ_TEST_UNSET", raising=False)
    text = "[[program]]\nname = 'a'\ncommand = ['true', '${RELAYQ_TEST_UNSET}']\n"
    assert error(text) == (f"{PATH}:3: program 'a': command uses ${{RELAYQ_TEST_UNSET}}, which is not set: "
                           "add it to its `environment`, or to the supervisor's (write $$ for a literal $)")
    # set by the program's environment, by the supervisor's environment, or by the supervisor itself
    assert parse(text + "environment = { RELAYQ_TEST_UNSET = 'x' }\n")
    monkeypatch.setenv("RELAYQ_TEST_UNSET", "y")
    assert parse(text)
    assert parse("[[program]]\nname = 'a'\ncommand = ['true', '$RELAYQ_PROGRAM', '$$NOPE']\n")
    assert "${WATCHDOG_USEC}, which is not set" in error(
        "[[program]]\nname = 'a'\ncommand = ['true', '${WATCHDOG_USEC}']\n")
    assert parse("[[program]]\nname = 'a'\ncommand = ['true', '${WATCHDOG_USEC}']\nwatchdog_sec = 5\n")
    assert "${RELAYQ_REDIS_URL}, which is not set" in error(
        "[[program]]\nname = 'a'\ncommand = ['true', '--url=${RELAYQ_REDIS_URL}']\n")


def test_the_program_to_run_is_not_expanded():
    assert error("[[program]]\nname = 'a'\ncommand = ['${HOME}/bin/w']\n") == (
        f"{PATH}:3: program 'a': the program to run ('${{HOME}}/bin/w') is not expanded: write its path; "
        "$VAR and ${VAR} work in the arguments after it")
