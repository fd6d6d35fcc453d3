"""Signals by pidfd: the pid is pinned when the pidfd is opened, so a pid that was reused
meanwhile is never signalled (kill(2) by pid number cannot promise that)."""
from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterable


def kill_pids(pids: Iterable[int], signo: int = signal.SIGKILL,
              still_ours: Callable[[int], bool] | None = None) -> int:
    """Send `signo` to each pid through a pidfd; `still_ours(pid)`, checked once the pidfd
    holds the process, skips one that is no longer what the caller meant. Answers how many
    were signalled; a process already gone is skipped."""
    sent = 0
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if still_ours is None or still_ours(pid):
                signal.pidfd_send_signal(fd, signo)
                sent += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return sent
