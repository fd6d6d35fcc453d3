"""python -m bench.journal_cost: what the journal costs the supervisor's loop per output line.

The same 200,000 lines of 80 bytes, in reads of 64 KiB as core/children.py reads a pipe,
go to a program's log file alone, then to the file and the journal (core/journal.ChildJournal
with its backlog on an asyncio loop) over a datagram socket that another process drains,
as journald would. Prints microseconds of the loop per line and what was dropped, the
median of five runs; run it on a quiet machine."""
from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from relayq_supervisor.core.journal import ChildJournal, JournalSink
from relayq_supervisor.core.output import RotatingFile

LINES = 200_000
LINE = b"x" * 79 + b"\n"
CHUNK = LINE * (65536 // len(LINE))
READER = ("import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\n"
          "print('ready', flush=True)\nwhile True:\n    s.recv(1 << 16)\n")


def run(journal: bool, where: Path) -> tuple[float, int]:
    loop = asyncio.new_event_loop()
    file = RotatingFile(str(where / "w.log"), 1 << 30, 0, stamp_lines=True)
    outputs: list = [file]
    reader = None
    sink = None
    if journal:
        path = where / "journal.sock"
        path.unlink(missing_ok=True)
        reader = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdout=subprocess.PIPE)
        assert reader.stdout is not None and reader.stdout.readline() == b"ready\n"
        sink = JournalSink(str(path), loop=loop)
        sink.warn = False
        outputs.append(ChildJournal(sink, "w", "w:0", lambda: 1234))
    sent = 0
    busy = 0.0
    try:
        while sent < LINES or (sink is not None and sink.backlog):
            started = time.perf_counter()
            if sent < LINES:
                for out in outputs:
                    out.write(CHUNK)
                sent += CHUNK.count(b"\n")
            busy += time.perf_counter() - started
            started = time.perf_counter()
            loop.run_until_complete(asyncio.sleep(0))      # the loop's other work: here, draining the backlog
            busy += time.perf_counter() - started
    finally:
        file.close()
        if reader is not None:
            reader.kill()
            reader.wait()
        loop.close()
    return busy / sent * 1e6, sink.dropped if sink else 0


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        where = Path(d)
        file_only = statistics.median(run(False, where)[0] for _ in range(5))
        runs = [run(True, where) for _ in range(5)]
    both = statistics.median(r[0] for r in runs)
    print(f"file only:      {file_only:.2f} us/line")
    print(f"file + journal: {both:.2f} us/line (journal: +{both - file_only:.2f} us/line); "
          f"dropped per run of {LINES}: {[r[1] for r in runs]}")


if __name__ == "__main__":
    main()
