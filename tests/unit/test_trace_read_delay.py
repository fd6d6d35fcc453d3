"""`[supervisor] kernel_trace_read_delay`: how long after the first trace event of a burst
the kernel witness reads (node/witnessing.py). Parsed and bounded up front."""
from __future__ import annotations

import pytest

from relayq_supervisor.config.load import parse_config
from relayq_supervisor.errors import ConfigError

PATH = "/etc/relayq/test.toml"
PROGRAM = '[[program]]\nname = "a"\ncommand = ["sleep", "1"]\n'


def parsed(text: str):
    return parse_config(text.encode(), PATH).supervisor


def test_default_and_a_given_delay():
    assert parsed(PROGRAM).kernel_trace_read_delay == 0.05
    assert parsed("[supervisor]\nkernel_trace_read_delay = 0.2\n" + PROGRAM).kernel_trace_read_delay == 0.2
    assert parsed("[supervisor]\nkernel_trace_read_delay = 1\n" + PROGRAM).kernel_trace_read_delay == 1.0


@pytest.mark.parametrize("value", ["0", "0.001", "2", "-1"])
def test_a_delay_out_of_range_is_refused_with_its_line(value):
    with pytest.raises(ConfigError) as e:
        parse_config(f"[supervisor]\nkernel_trace_read_delay = {value}\n{PROGRAM}".encode(), PATH)
    assert str(e.value) == (f"{PATH}:2: 'kernel_trace_read_delay' must be between 0.01 and 1 (seconds), "
                            f"not {float(value) if '.' in value else int(value)!r}")


def test_a_delay_that_is_not_a_number_is_refused():
    with pytest.raises(ConfigError) as e:
        parse_config(f'[supervisor]\nkernel_trace_read_delay = "fast"\n{PROGRAM}'.encode(), PATH)
    assert str(e.value).startswith(f"{PATH}:2: ")
    assert "kernel_trace_read_delay" in str(e.value)
