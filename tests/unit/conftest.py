"""Unit tests run in the pytest process only. Starting a child (subprocess, fork, posix_spawn,
multiprocessing) fails the test at once: a test that needs a real process belongs in
tests/integration, and the unit layer stays fast and leaves nothing behind."""
from __future__ import annotations

import _posixsubprocess
import ctypes.util
import functools
import os
import subprocess
import sys

import pytest
from _pytest.assertion.rewrite import AssertionRewritingHook

# pyinotify (watch.py) finds libc with ctypes.util.find_library, which runs `ldconfig -p` on every
# call: the answer is looked up once, here, before any test runs, and served from a cache.
find_library = functools.cache(ctypes.util.find_library)
find_library("c")

# pytest rewrites the asserts of every module in a plugin's distribution, and hypothesis ships a
# plugin: its ~80 modules were rewritten on every run (PYTHONDONTWRITEBYTECODE: no cached pyc),
# ~0.7 s of CPU, a tenth of the unit layer. Its asserts are its own: import it unrewritten.
_rewriters = [hook for hook in sys.meta_path if isinstance(hook, AssertionRewritingHook)]
for hook in _rewriters:
    sys.meta_path.remove(hook)
try:
    import hypothesis.strategies  # noqa: F401
finally:
    sys.meta_path[:0] = _rewriters


def refuse_process(*args, **kwargs):
    raise AssertionError("a unit test tried to start a process: it belongs in tests/integration")


@pytest.fixture(autouse=True)
def no_child_processes(monkeypatch):
    monkeypatch.setattr(ctypes.util, "find_library", find_library)
    # subprocess keeps its own reference to fork_exec; multiprocessing looks it up in the module
    monkeypatch.setattr(subprocess, "_fork_exec", refuse_process)
    monkeypatch.setattr(_posixsubprocess, "fork_exec", refuse_process)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system"):
        monkeypatch.setattr(os, name, refuse_process)
