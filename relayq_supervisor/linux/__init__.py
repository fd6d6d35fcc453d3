"""Thin ctypes wrappers over Linux facilities: signalfd, ptrace, prctl, siginfo.

This layer knows no policy: no logging, no configuration. Every call is a
documented syscall (through its glibc wrapper) that raises OSError(errno, msg).
Supported: 64-bit x86_64 and aarch64.
"""
