"""core.spawn's decisions that need no child: the PATH search and when the gate keeps the environment."""
from __future__ import annotations

import errno
import os

import pytest

from relayq_supervisor.core.spawn import find_executable, gate_is_exact


def make(path, mode=0o755, text="#!/bin/sh\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_first_executable_on_the_environments_path_wins(tmp_path):
    make(tmp_path / "a" / "prog", 0o644)        # not executable: skipped, as execvp does
    make(tmp_path / "b" / "prog")
    make(tmp_path / "c" / "prog")
    env = {"PATH": os.pathsep.join(str(tmp_path / d) for d in ("missing", "a", "b", "c"))}
    assert find_executable("prog", env, "/") == str(tmp_path / "b" / "prog")


def test_nothing_found_is_enoent_and_only_non_executables_is_eacces(tmp_path):
    with pytest.raises(OSError) as nothing:
        find_executable("prog", {"PATH": str(tmp_path)}, "/")
    assert nothing.value.errno == errno.ENOENT
    make(tmp_path / "prog", 0o644)
    (tmp_path / "d" / "prog").mkdir(parents=True)   # a directory is not executable either
    with pytest.raises(OSError) as refused:
        find_executable("prog", {"PATH": f"{tmp_path / 'd'}:{tmp_path}"}, "/")
    assert refused.value.errno == errno.EACCES


def test_a_name_with_a_slash_is_taken_from_the_programs_directory(tmp_path):
    make(tmp_path / "bin" / "prog")
    assert find_executable("bin/prog", {"PATH": "/nowhere"}, str(tmp_path)) == str(tmp_path / "bin" / "prog")
    assert find_executable(str(tmp_path / "bin" / "prog"), {}, "/") == str(tmp_path / "bin" / "prog")
    # relative PATH entries count from the program's directory too, and the result is absolute
    assert find_executable("prog", {"PATH": "bin"}, str(tmp_path)) == str(tmp_path / "bin" / "prog")


def test_without_path_in_the_environment_the_default_path_is_searched():
    # os.execvpe's rule (os.defpath); the gate is not used then, as dash would search its own
    found = find_executable("sh", {}, "/")
    assert os.path.dirname(found) in os.defpath.split(os.pathsep)
    assert gate_is_exact({}, "sh") is False
    assert gate_is_exact({}, "/bin/sh") is True


@pytest.mark.parametrize("name", ["NOT-VALID", "a.b", "1ABC", "", "IFS", "OPTIND", "PPID", "relayq_gate"])
def test_names_dash_would_drop_or_rewrite_keep_the_gate_out(name):
    assert gate_is_exact({"PATH": "/bin", name: "x"}, "sleep") is False


def test_a_program_name_like_an_option_keeps_the_gate_out():
    assert gate_is_exact({"PATH": "/bin"}, "-weird") is False


def test_ordinary_names_keep_the_gate(tmp_path):
    env = {"PATH": "/bin", "HOME": "/root", "_": "/usr/bin/x", "PWD": "/", "LANG": "C.UTF-8", "lower_9": ""}
    assert gate_is_exact(env, "sleep") is True
