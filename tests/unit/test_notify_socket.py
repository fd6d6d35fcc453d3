"""sd_notify sending (the supervisor to systemd, the worker to the supervisor) into the receiving socket."""
import os

import pytest

from relayq_supervisor.linux.notify_socket import (
    ChildNotifySocket,
    connect_notify_socket,
    format_notify_message,
    send_notify,
)


def test_a_datagram_arrives_with_its_fields_and_sender_pid():
    receiver = ChildNotifySocket()
    try:
        with connect_notify_socket(receiver.address, blocking=False) as sock:
            send_notify(sock, format_notify_message(READY=1, STATUS="redis running"))
        assert receiver.receive() == [(os.getpid(), {"READY": "1", "STATUS": "redis running"})]
    finally:
        receiver.close()


def test_an_unreachable_address_raises(tmp_path):
    with pytest.raises(OSError):
        connect_notify_socket(str(tmp_path / "nobody-listens"))
