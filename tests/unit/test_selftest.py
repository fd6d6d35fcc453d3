"""The reference worker's small pure pieces: where it finds Redis, how it shows a URL, readiness
without systemd. Workers and jobs on a real Redis are in tests/integration/test_selftest.py."""
from __future__ import annotations

from relayq_supervisor import selftest


def test_redis_url_precedence(monkeypatch):
    monkeypatch.delenv("RELAYQ_REDIS_URL", raising=False)
    assert selftest.redis_url() == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("RELAYQ_REDIS_URL", "redis://127.0.0.1:6479/0")
    assert selftest.redis_url() == "redis://127.0.0.1:6479/0"
    assert selftest.redis_url("redis://h:1/2") == "redis://h:1/2"


def test_display_url_masks_passwords():
    assert selftest.display_url("redis://:s3cret@127.0.0.1:6479/0") == "redis://:***@127.0.0.1:6479/0"
    assert selftest.display_url("redis://relayq:s3cret@h:1/0") == "redis://relayq:***@h:1/0"
    assert selftest.display_url("redis://127.0.0.1:6479/0") == "redis://127.0.0.1:6479/0"


def test_notify_ready_without_socket_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert selftest.notify_ready() is False
