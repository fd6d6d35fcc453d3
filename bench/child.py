"""The benchmark child: append "PID START_TIME" to a file, then sleep until killed.

Kept tiny and free of imports beyond os/sys/time so every contender starts the same
cheap program; run with `python3 -S` so site-packages scanning adds no noise.
"""
import os
import sys
import time

started = time.time()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
# One write(2) of a short line to an O_APPEND file: lines of concurrent instances never interleave.
os.write(fd, f"{os.getpid()} {started:.6f}\n".encode())
os.close(fd)
while True:
    time.sleep(3600)
