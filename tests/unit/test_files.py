"""FileIdentity (is the name still our file) and rotation by rename."""
import os

from relayq_supervisor.linux.files import FileIdentity, rotate_by_rename


def test_an_open_file_is_still_at_its_name(tmp_path):
    path = tmp_path / "supervisor.lock"
    path.write_text("x")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert FileIdentity.of_fd(fd) == FileIdentity.of_path(str(path))
        assert FileIdentity.of_fd(fd).still_at(str(path))
    finally:
        os.close(fd)


def test_deleted_renamed_or_replaced_is_no_longer_ours(tmp_path):
    path = str(tmp_path / "audit.log")
    open(path, "w").close()
    ours = FileIdentity.of_path(path)

    os.rename(path, path + ".1")
    assert not ours.still_at(path)
    assert ours.still_at(path + ".1")        # the identity follows the file, not the name

    open(path, "w").close()                  # a new file under the old name
    assert not ours.still_at(path)

    os.unlink(path + ".1")
    assert not ours.still_at(path + ".1")


def test_a_directory_in_the_way_is_no_longer_ours(tmp_path):
    path = str(tmp_path / "control.sock")
    open(path, "w").close()
    ours = FileIdentity.of_path(path)
    assert not ours.still_at(path + "/child")    # ENOTDIR, not an exception


def _names(directory):
    return sorted(os.listdir(directory))


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _read(path):
    with open(path) as f:
        return f.read()


def _files(directory, *names):
    """Files holding their own names, so each one's content says where it came from."""
    for name in names:
        _write(directory / name, name)
    return str(directory / names[0])


def test_rotation_shifts_every_file_by_one_and_drops_the_oldest(tmp_path):
    path = _files(tmp_path, "worker.log", "worker.log.1", "worker.log.2")
    rotate_by_rename(path, keep=2)
    assert _names(tmp_path) == ["worker.log.1", "worker.log.2"]
    assert _read(path + ".1") == "worker.log" and _read(path + ".2") == "worker.log.1"


def test_rotation_skips_gaps_and_a_missing_current_file(tmp_path):
    path = str(tmp_path / "worker.log")
    _write(path + ".1", "one")
    rotate_by_rename(path, keep=3)
    assert _names(tmp_path) == ["worker.log.2"]
    rotate_by_rename(path, keep=3)
    assert _names(tmp_path) == ["worker.log.3"]


def test_rotation_deletes_what_a_larger_keep_left(tmp_path):
    path = _files(tmp_path, "audit.log", "audit.log.1", "audit.log.2", "audit.log.3", "audit.log.4")
    rotate_by_rename(path, keep=2)
    assert _names(tmp_path) == ["audit.log.1", "audit.log.2"]
    assert _read(path + ".1") == "audit.log" and _read(path + ".2") == "audit.log.1"


def test_rotation_without_backups_deletes_the_file(tmp_path):
    path = str(tmp_path / "audit.log")
    _write(path, "x")
    rotate_by_rename(path, keep=0)
    assert _names(tmp_path) == []
    rotate_by_rename(path, keep=0)              # nothing there: nothing to do
