"""Watcher: real files, a real asyncio loop, events waited for (never slept for)."""
from __future__ import annotations

import asyncio
import fcntl
import os
import selectors
import time

import pytest

from relayq_supervisor.watch import Watcher

EVENT_TIMEOUT = 5.0


class Recorder:
    """A callback that records (path, what) and lets the test wait for a given call."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, path: str, what: str) -> None:
        self.calls.append((path, what))
        self._changed.set()

    async def wait_for(self, path: str, what: str) -> None:
        async def seen():
            while (path, what) not in self.calls:
                self._changed.clear()
                await self._changed.wait()
        try:
            await asyncio.wait_for(seen(), EVENT_TIMEOUT)
        except TimeoutError:
            raise AssertionError(f"no ({path!r}, {what!r}) within {EVENT_TIMEOUT}s; calls: {self.calls}") from None

    def clear(self) -> None:
        self.calls.clear()


def run(coroutine_function):
    """Run an async test body on a fresh loop with a Watcher, closing both afterwards."""
    loop = asyncio.new_event_loop()
    watcher = Watcher(loop)
    try:
        return loop.run_until_complete(coroutine_function(watcher))
    finally:
        watcher.close()
        loop.close()


async def drain_loop(iterations: int = 5) -> None:
    """Give the loop a few turns so anything already readable is handled."""
    for _ in range(iterations):
        await asyncio.sleep(0)


def write(path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# -- watch_file ------------------------------------------------------------------------------------

def test_file_modified_in_place(tmp_path):
    config = tmp_path / "relayq.toml"
    write(config, "a = 1\n")

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_file(str(config), seen)
        with open(config, "a") as f:
            f.write("b = 2\n")
        await seen.wait_for(str(config), "modified")
        assert {what for _, what in seen.calls} == {"modified"}
    run(body)


def test_file_replaced_by_rename_then_modified_is_still_reported(tmp_path):
    config = tmp_path / "relayq.toml"
    write(config, "a = 1\n")

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_file(str(config), seen)
        # what editors do on save: write a temp file, rename it over the original
        temp = tmp_path / ".relayq.toml.swp"
        write(temp, "a = 2\n")
        os.rename(temp, config)
        await seen.wait_for(str(config), "replaced")
        assert all(path == str(config) for path, _ in seen.calls), "the temp file must not be reported"
        seen.clear()
        # a watch on the old inode would be deaf now; the directory watch still sees the name
        with open(config, "a") as f:
            f.write("b = 3\n")
        await seen.wait_for(str(config), "modified")
    run(body)


def test_file_deleted(tmp_path):
    config = tmp_path / "relayq.toml"
    write(config, "a = 1\n")

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_file(str(config), seen)
        os.unlink(config)
        await seen.wait_for(str(config), "deleted")
        # and it comes back: still watched
        write(config, "a = 1\n")
        await seen.wait_for(str(config), "replaced")
    run(body)


def test_pathlib_touch_of_existing_file_is_reported(tmp_path):
    config = tmp_path / "relayq.toml"
    write(config, "a = 1\n")

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_file(str(config), seen)
        config.touch()      # utime() only: no write, no close-after-write
        await seen.wait_for(str(config), "modified")
    run(body)


def test_lock_file_deleted_in_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock_path = run_dir / "redis.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_file(str(lock_path), seen)
        os.unlink(lock_path)      # the lock is still held on an inode nobody can find any more
        await seen.wait_for(str(lock_path), "deleted")
    try:
        run(body)
    finally:
        os.close(fd)


def test_file_in_missing_directory_is_not_watched(tmp_path):
    async def body(watcher):
        assert watcher.watch_file(str(tmp_path / "nope" / "relayq.toml"), Recorder()) is False
    run(body)


# -- watch_dir -------------------------------------------------------------------------------------

def test_dir_sees_new_timer_within_a_second_then_modified_then_deleted(tmp_path):
    units = tmp_path / "system"
    units.mkdir()
    timer = units / "relayq-redis-monitor.timer"

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_dir(str(units), seen)
        started = time.monotonic()
        write(timer, "[Timer]\nOnCalendar=minutely\n")
        await seen.wait_for(str(timer), "created")
        assert time.monotonic() - started < 1.0
        await seen.wait_for(str(timer), "modified")     # the close after the write
        seen.clear()
        write(timer, "[Timer]\nOnCalendar=hourly\n")
        await seen.wait_for(str(timer), "modified")
        os.unlink(timer)
        await seen.wait_for(str(timer), "deleted")
    run(body)


def test_dir_reports_renames_in_and_out(tmp_path):
    units = tmp_path / "system"
    units.mkdir()
    outside = tmp_path / "staging.service"
    write(outside, "[Service]\n")

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_dir(str(units), seen)
        os.rename(outside, units / "rival.service")
        await seen.wait_for(str(units / "rival.service"), "created")
        os.rename(units / "rival.service", outside)
        await seen.wait_for(str(units / "rival.service"), "deleted")
    run(body)


def test_dir_name_filter_ignores_other_files(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_dir(str(etc), seen, names={"crontab"})
        write(etc / "hosts", "127.0.0.1 localhost\n")
        os.unlink(etc / "hosts")
        write(etc / "crontab", "* * * * * root true\n")
        # inotify keeps order: by the time crontab is reported, the hosts events have been read too
        await seen.wait_for(str(etc / "crontab"), "modified")
        assert {path for path, _ in seen.calls} == {str(etc / "crontab")}
    run(body)


def test_missing_dir_or_a_file_returns_false(tmp_path):
    a_file = tmp_path / "plain"
    write(a_file, "")

    async def body(watcher):
        assert watcher.watch_dir(str(tmp_path / "absent"), Recorder()) is False
        assert watcher.watch_dir(str(a_file), Recorder()) is False
    run(body)


def test_several_watches_on_one_directory(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    redis_lock, socket_path = run_dir / "redis.lock", run_dir / "control.sock"

    async def body(watcher):
        lock_seen, socket_seen, all_seen = Recorder(), Recorder(), Recorder()
        assert watcher.watch_file(str(redis_lock), lock_seen)
        assert watcher.watch_file(str(socket_path), socket_seen)
        assert watcher.watch_dir(str(run_dir), all_seen)
        write(redis_lock, "{}")
        await lock_seen.wait_for(str(redis_lock), "replaced")
        write(socket_path, "")
        await socket_seen.wait_for(str(socket_path), "replaced")
        await all_seen.wait_for(str(redis_lock), "created")
        await all_seen.wait_for(str(socket_path), "created")
        assert {path for path, _ in lock_seen.calls} == {str(redis_lock)}
        assert {path for path, _ in socket_seen.calls} == {str(socket_path)}
    run(body)


def test_two_paths_to_one_directory_each_get_their_own_path(tmp_path):
    real = tmp_path / "usr-lib-systemd"
    real.mkdir()
    alias = tmp_path / "lib-systemd"
    alias.symlink_to(real)          # like /lib -> /usr/lib on merged-usr systems

    async def body(watcher):
        via_real, via_alias = Recorder(), Recorder()
        assert watcher.watch_dir(str(real), via_real)
        assert watcher.watch_dir(str(alias), via_alias)
        write(real / "redis-server.service", "[Service]\n")
        await via_real.wait_for(str(real / "redis-server.service"), "created")
        await via_alias.wait_for(str(alias / "redis-server.service"), "created")
    run(body)


def test_removed_directory_reports_deleted_and_can_be_watched_again(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock_path = run_dir / "redis.lock"
    write(lock_path, "")

    async def body(watcher):
        lock_seen, dir_seen = Recorder(), Recorder()
        assert watcher.watch_file(str(lock_path), lock_seen)
        assert watcher.watch_dir(str(run_dir), dir_seen)
        os.unlink(lock_path)
        run_dir.rmdir()
        await dir_seen.wait_for(str(run_dir), "deleted")
        await lock_seen.wait_for(str(lock_path), "deleted")
        run_dir.mkdir()
        assert watcher.watch_dir(str(run_dir), dir_seen)
        write(lock_path, "")
        await dir_seen.wait_for(str(lock_path), "created")
    run(body)


def test_directory_renamed_away_is_reported_and_not_followed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_dir(str(run_dir), seen)
        moved = tmp_path / "run.old"
        os.rename(run_dir, moved)
        await seen.wait_for(str(run_dir), "deleted")
        seen.clear()
        # the inode lives on under another name; files there must not be reported as ours
        write(moved / "x.lock", "")
        marker = Recorder()
        assert watcher.watch_dir(str(tmp_path), marker)
        write(tmp_path / "marker", "")
        await marker.wait_for(str(tmp_path / "marker"), "modified")
        await drain_loop()
        assert seen.calls == []
    run(body)


def test_non_utf8_name_does_not_lose_the_watch(tmp_path):
    cron_d = tmp_path / "cron.d"
    cron_d.mkdir()

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_dir(str(cron_d), seen)
        fd = os.open(os.fsencode(str(cron_d)) + b"/redis-\xff", os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        # pyinotify cannot decode the name: the batch is rescanned, the file still reported
        reported = os.path.join(str(cron_d), os.fsdecode(b"redis-\xff"))
        await seen.wait_for(reported, "modified")
        write(cron_d / "relayq", "* * * * * root true\n")
        await seen.wait_for(str(cron_d / "relayq"), "created")
    run(body)


def test_queue_overflow_rescans(tmp_path):
    limit_path = "/proc/sys/fs/inotify/max_queued_events"
    limit = int(open(limit_path).read())
    if limit > 100_000:
        pytest.skip(f"{limit_path} is {limit}: too many events to overflow it quickly")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    a, b = run_dir / "a", run_dir / "b"
    write(a, "")
    write(b, "")
    config = tmp_path / "relayq.toml"

    async def body(watcher):
        dir_seen, file_seen = Recorder(), Recorder()
        assert watcher.watch_dir(str(run_dir), dir_seen, names={"a"})
        assert watcher.watch_file(str(config), file_seen)
        # the loop does not run while this fills the queue; alternating names defeats the kernel's
        # merging of identical consecutive events
        for i in range(limit // 2 + 10):
            os.utime(a, (i, i))
            os.utime(b, (i, i))
        await dir_seen.wait_for(str(a), "modified")
        await file_seen.wait_for(str(config), "deleted")      # it does not exist
        assert all(path == str(a) for path, _ in dir_seen.calls)
    run(body)


# -- callbacks, close, cost ------------------------------------------------------------------------

def test_failing_callback_does_not_starve_others(tmp_path, caplog):
    units = tmp_path / "system"
    units.mkdir()

    async def body(watcher):
        def broken(path, what):
            raise RuntimeError("subscriber bug")
        seen = Recorder()
        assert watcher.watch_dir(str(units), broken)
        assert watcher.watch_dir(str(units), seen)
        write(units / "a.timer", "")
        write(units / "b.timer", "")
        await seen.wait_for(str(units / "b.timer"), "modified")
        assert (str(units / "a.timer"), "created") in seen.calls
    run(body)
    assert "subscriber bug" in caplog.text


def test_close_stops_callbacks(tmp_path):
    config = tmp_path / "relayq.toml"
    write(config, "a = 1\n")

    async def body(watcher):
        seen = Recorder()
        assert watcher.watch_file(str(config), seen)
        fd = watcher._fd
        watcher.close()
        with pytest.raises(OSError):
            os.fstat(fd)
        # a second watcher proves the change happened and was delivered
        other = Watcher(asyncio.get_running_loop())
        try:
            witness = Recorder()
            assert other.watch_file(str(config), witness)
            write(config, "a = 2\n")
            await witness.wait_for(str(config), "modified")
            await drain_loop()
        finally:
            other.close()
        assert seen.calls == []
    run(body)


def test_close_inside_a_callback(tmp_path):
    units = tmp_path / "system"
    units.mkdir()

    async def body(watcher):
        calls = []
        def close_on_first(path, what):
            calls.append((path, what))
            watcher.close()
        assert watcher.watch_dir(str(units), close_on_first)
        for name in ("a.timer", "b.timer", "c.timer"):
            write(units / name, "")
        # the witness watcher sees the last file: the first watcher had all events readable by then
        other = Watcher(asyncio.get_running_loop())
        try:
            witness = Recorder()
            assert other.watch_dir(str(units), witness)
            write(units / "d.timer", "")
            await witness.wait_for(str(units / "d.timer"), "modified")
            await drain_loop()
        finally:
            other.close()
        assert calls == [(str(units / "a.timer"), "created")]
    run(body)


class CountingSelector(selectors.DefaultSelector):
    def __init__(self):
        super().__init__()
        self.selects = 0
        self.ready_fds: list[int] = []

    def select(self, timeout=None):
        ready = super().select(timeout)
        self.selects += 1
        self.ready_fds.extend(key.fd for key, _ in ready)
        return ready


def test_idle_watcher_causes_no_wakeups(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write(run_dir / "redis.lock", "")
    selector = CountingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    watcher = Watcher(loop)
    seen = Recorder()
    try:
        assert watcher.watch_file(str(run_dir / "redis.lock"), seen)
        assert watcher.watch_dir(str(run_dir), seen)
        selector.selects, selector.ready_fds = 0, []
        # the 0.3 s here is the observation window, not a synchronisation
        loop.run_until_complete(asyncio.sleep(0.3))
        assert watcher._fd not in selector.ready_fds
        assert seen.calls == []
        # a few selects to start, time out and finish the sleep; any polling would be dozens in 0.3 s
        assert selector.selects < 10, selector.selects
    finally:
        watcher.close()
        loop.close()
