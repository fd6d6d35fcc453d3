"""Child output: size-rotated log files and the `[name]` prefixed stream."""
from __future__ import annotations

import io
import os

from relayq_supervisor.core.output import PrefixedStream, RotatingFile


def test_rotation_keeps_the_configured_number_of_files(tmp_path):
    path = tmp_path / "worker.log"
    log = RotatingFile(str(path), max_bytes=100, backups=2)
    for i in range(10):
        log.write(f"line {i} ".encode() * 5 + b"\n")      # 36 bytes: two lines per file
    log.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["worker.log", "worker.log.1", "worker.log.2"]
    assert all(os.path.getsize(tmp_path / n) <= 100 for n in names)
    assert b"line 9" in path.read_bytes()
    assert b"line 7" in (tmp_path / "worker.log.1").read_bytes()
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"


def test_appends_to_an_existing_log(tmp_path):
    path = tmp_path / "redis.log"
    path.write_bytes(b"old\n")
    log = RotatingFile(str(path), max_bytes=1000, backups=1)
    log.write(b"new\n")
    log.close()
    assert path.read_bytes() == b"old\nnew\n"


def test_no_backups_truncates(tmp_path):
    path = tmp_path / "x.log"
    log = RotatingFile(str(path), max_bytes=10, backups=0)
    log.write(b"12345678\n")
    log.write(b"abcdefgh\n")
    log.close()
    assert path.read_bytes() == b"abcdefgh\n"
    assert os.listdir(tmp_path) == ["x.log"]


def test_prefixed_stream_prefixes_whole_lines_only():
    out = io.BytesIO()
    s = PrefixedStream("worker:0", out)
    s.write(b"hel")
    assert out.getvalue() == b""
    s.write(b"lo\nwor")
    s.write(b"ld\n")
    s.write(b"tail")
    s.close()
    assert out.getvalue() == b"[worker:0] hello\n[worker:0] world\n[worker:0] tail\n"
