"""Child output: size-rotated log files and the `[name]` prefixed stream."""
from __future__ import annotations

import io
import os

from relayq_supervisor.core.output import PrefixedStream, RotatingFile, line_stamp


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


def stamped(tmp_path, name="w.log", **kw):
    times = iter(range(1_700_000_000, 1_800_000_000))
    return RotatingFile(str(tmp_path / name), stamp_lines=True, clock=lambda: next(times) + 0.25, **kw)


def test_every_line_is_stamped_once_even_when_it_arrives_in_pieces(tmp_path):
    log = stamped(tmp_path, max_bytes=10_000, backups=1)
    log.write(b"one\ntw")
    log.write(b"o\nthree\n")
    log.write(b"\n")
    log.close()
    assert (tmp_path / "w.log").read_bytes() == (
        b"2023-11-14T22:13:20.250Z one\n2023-11-14T22:13:20.250Z two\n"
        b"2023-11-14T22:13:21.250Z three\n2023-11-14T22:13:22.250Z \n")
    assert line_stamp(0.5) == b"1970-01-01T00:00:00.500Z "


def test_stamped_rotation_happens_between_lines(tmp_path):
    log = stamped(tmp_path, max_bytes=100, backups=3)
    for i in range(12):
        log.write(b"line %02d\n" % i)          # 33 bytes stamped: three lines per file
    log.close()
    files = [tmp_path / n for n in ("w.log.3", "w.log.2", "w.log.1", "w.log")]
    lines = [line for f in files for line in f.read_bytes().splitlines()]
    assert [line[25:] for line in lines] == [b"line %02d" % i for i in range(12)]
    assert all(line[:25].endswith(b"Z ") for line in lines)
    assert all(f.stat().st_size <= 100 for f in files)


def test_an_endless_line_is_cut_at_the_size_limit_and_its_rest_stamped(tmp_path):
    log = stamped(tmp_path, max_bytes=1024, backups=2)
    for _ in range(30):
        log.write(b"x" * 100)                  # never a newline
    log.close()
    newest, older = (tmp_path / "w.log").read_bytes(), (tmp_path / "w.log.1").read_bytes()
    assert older.endswith(b"x\n") and len(older) < 1024 + 100
    assert newest.startswith(b"20") and newest[25:26] == b"x"
