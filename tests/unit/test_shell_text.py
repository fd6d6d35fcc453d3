"""Commands as a shell would quote them, in every line relayqctl prints."""
from __future__ import annotations

import shlex

from relayq_supervisor.audit.review import format_event
from relayq_supervisor.shell_text import command_line, cut
from relayq_supervisor.witness.identity import ProcessIdentity

REDIS_ARGV = ["/usr/bin/redis-server", "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
              "--dir", "/var/lib/redis data"]


def test_command_line_round_trips_through_a_shell():
    text = command_line(REDIS_ARGV)
    assert text == "/usr/bin/redis-server --save '' --appendonly yes --appendfsync everysec " \
                   "--dir '/var/lib/redis data'"
    assert shlex.split(text) == REDIS_ARGV


def test_control_characters_cannot_forge_a_line():
    argv = ["sh", "-c", "echo hi\n2026 fake line\x1b[2J", "it's"]
    text = command_line(argv)
    assert "\n" not in text and "\x1b" not in text
    assert text == "sh -c $'echo hi\\n2026 fake line\\x1b[2J' 'it'\"'\"'s'"
    # that a real bash reads it back to the same argv: tests/integration/test_ctl_display.py


def test_cut_marks_the_cut_and_none_keeps_all():
    assert cut("abcdef", 5) == "ab..." and cut("abc", 5) == "abc" and cut("x" * 500, None) == "x" * 500


def test_spawn_events_show_the_whole_quoted_command_when_piped():
    line = format_event({"ts": "2026-11-25T23:21:26.721Z", "event": "spawn", "program": "redis", "pid": 7,
                         "argv": REDIS_ARGV})
    assert line.endswith("started: " + command_line(REDIS_ARGV))      # pytest's stdout is not a terminal


def test_senders_are_described_with_quoted_arguments():
    who = ProcessIdentity.from_dict({"pid": 4412, "comm": "python3", "alive": True,
                                     "cmdline": ["python3", "-c", "import os; os.kill(1, 15)"]})
    assert who.describe() == "pid 4412 python3 -c 'import os; os.kill(1, 15)'"
