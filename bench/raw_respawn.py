"""The raw baseline: spawn, wait on a pidfd, respawn at once. The practical limit of
any supervisor written in Python on this machine.

usage: python3 raw_respawn.py ARGV...   (runs until killed; the child shares its process group)
"""
import os
import select
import sys

argv = sys.argv[1:]
while True:
    pid = os.posix_spawn(argv[0], argv, os.environ)
    pidfd = os.pidfd_open(pid)
    select.select([pidfd], [], [])     # a pidfd turns readable when the process exits
    os.waitpid(pid, 0)
    os.close(pidfd)
