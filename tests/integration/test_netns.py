"""The two-host harness itself (support.netns): the namespaces reach each other over the
veth pair and nothing else, and are gone afterwards."""
from __future__ import annotations

import os
import subprocess

import psutil
from support import PYTHON
from support.netns import NETNS_DIR

PROBE = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family)
s.settimeout(5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print(s.getsockname()[0], s.recv(10).decode())
except OSError as e:
    print("refused", e.errno)
"""


def serve_once(host, port: int) -> subprocess.Popen:
    code = (f"import socket; s=socket.create_server(('::', {port}), family=socket.AF_INET6, dualstack_ipv6=True); "
            "print('up', flush=True); c,_=s.accept(); c.send(b'hello')")
    proc = host.popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc


def test_two_hosts_reach_each_other_over_ipv4_and_ipv6_only(hosts, procs):
    for target in (hosts.a.ipv4, hosts.a.ipv6):
        server = serve_once(hosts.a, 7000)
        procs.append(server)
        out = hosts.b.run([PYTHON, "-c", PROBE, target, "7000"], capture_output=True, text=True).stdout.split()
        assert out == [hosts.b.ipv4 if "." in target else hosts.b.ipv6, "hello"]
        server.wait(10)
    # the addresses exist only inside the namespaces
    ours = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    assert not ours & {hosts.a.ipv4, hosts.b.ipv4, hosts.a.ipv6, hosts.b.ipv6}


def test_the_namespaces_are_removed_afterwards(hosts):
    names = [hosts.a.netns, hosts.b.netns]
    assert all(os.path.exists(f"{NETNS_DIR}/{n}") for n in names)
    hosts.remove()
    assert not any(os.path.exists(f"{NETNS_DIR}/{n}") for n in names)
