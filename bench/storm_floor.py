"""The floor under the signal storm: what the same kill loops cost processes that have
nothing to do with them. An unsupervised Redis and a trivial asyncio server answering the
control protocol (`status` over a unix socket, an empty result) are sampled exactly as the
supervised ones are, while the loops send their SIGTERMs to a process that ignores them.
Whatever latency these show is the CPU scheduler's, and no supervisor can answer faster."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from .processes import free_port, poll_until
from .redis_recovery import wait_pong

ECHO = """
import asyncio, sys
from relayq_supervisor.control import protocol
async def serve(reader, writer):
    await reader.readuntil(b"\\n")
    writer.write(protocol.reply_ok({}))
    await writer.drain()
    writer.close()
async def main():
    await asyncio.start_unix_server(serve, path=sys.argv[1])
    await asyncio.Event().wait()
asyncio.run(main())
"""


class TrivialServer:
    """`status(timeout)` as RelayqSupervisor has it, against the trivial server."""

    def __init__(self, path: Path):
        self.path = path

    def status(self, timeout: float = 5.0) -> dict:
        from relayq_supervisor.ctl.client import call
        return call(str(self.path), "status", timeout)


class Floor:
    """The trivial server, an unsupervised Redis, and a target that ignores SIGTERM."""

    def __init__(self, workdir: Path, redis_binary: str):
        workdir.mkdir(parents=True, exist_ok=True)
        self.sock = workdir / "trivial.sock"
        self.port = free_port()
        self.procs = [
            subprocess.Popen([redis_binary, "--port", str(self.port), "--save", "", "--appendonly", "no",
                              "--dir", str(workdir)], stdout=subprocess.DEVNULL),
            subprocess.Popen([sys.executable, "-c", ECHO, str(self.sock)], cwd=str(Path(__file__).parent.parent)),
            subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); time.sleep(1e6)"]),
        ]
        self.target_pid = self.procs[2].pid
        wait_pong(self.port, 10)
        poll_until(lambda: self.sock.exists(), 10, "the trivial server's socket", 0.01)
        time.sleep(0.2)         # the target has set SIG_IGN (a SIGTERM before that would end it)
        self.server = TrivialServer(self.sock)
        self.client = redis.Redis(port=self.port, socket_timeout=30)

    def close(self) -> None:
        self.client.close()
        for p in self.procs:
            p.kill()
            p.wait()
        if self.sock.exists():
            os.unlink(self.sock)
