"""The one check of a denied Redis command name, shared by config validation and the ACL writer."""
import pytest

from relayq_supervisor.config.redis import is_command_name


@pytest.mark.parametrize("text", ["shutdown", "config|set", "cluster|reset", "client|no-evict", "module"])
def test_command_names(text):
    assert is_command_name(text)


@pytest.mark.parametrize("text", ["shutdown +@all", "config|", "+flushall", "-shutdown", "a\nuser x on",
                                  "shutdown\n", "Shutdown", "", "|set"])
def test_anything_that_would_add_acl_rules_is_refused(text):
    assert not is_command_name(text)
