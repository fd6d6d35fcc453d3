"""Fixtures for tests under a real systemd: the product installed once per session, one booted
namespace per module (see harness.py)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Refused, SystemdNamespace, host_refusal, prepare_venv
from .product import booted, installed_files


@pytest.fixture(scope="session")
def relayq_venv(tmp_path_factory) -> Path:
    refusal = host_refusal()
    if refusal:
        pytest.skip(refusal)
    work = tmp_path_factory.mktemp("relayq-venv")
    venv = work / "opt-relayq"
    try:
        prepare_venv(venv, work)
    except Refused as e:
        pytest.skip(str(e))
    return venv


@pytest.fixture(scope="module")
def machine(relayq_venv, tmp_path_factory) -> Iterator[SystemdNamespace]:
    with booted(tmp_path_factory.mktemp("machine"), relayq_venv, installed_files()) as m:
        yield m
