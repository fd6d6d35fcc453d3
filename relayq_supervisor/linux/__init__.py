"""Thin wrappers over Linux facilities: signalfd, ptrace, prctl, siginfo, posix_spawn (ctypes),
the /proc readers (procfs), file identity and rotation (files), the sd_notify socket (notify_socket).

This layer knows no policy: no logging, no configuration. Every ctypes call is a
documented syscall (through its glibc wrapper) that raises OSError(errno, msg).
Supported: 64-bit x86_64 and aarch64.
"""
