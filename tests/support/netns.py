"""Two network namespaces joined by a veth pair: two "hosts" on one kernel for the
cross-node tests. Addresses exist only inside the namespaces (10.254.0.1/24 and
10.254.0.2/24, fd00:254::1/64 and fd00:254::2/64), so concurrent runs cannot collide.

A process is run inside one with `nsenter --net=/run/netns/NAME` (setns(2) on the
network namespace only, then exec): unlike `ip netns exec`, it leaves the mount namespace
and /sys alone, so tracefs stays where the supervisor's witness looks for it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

IP = shutil.which("ip") or "/usr/sbin/ip"
NSENTER = shutil.which("nsenter") or "/usr/bin/nsenter"
NETNS_DIR = "/run/netns"


class NetnsRefused(Exception):
    """The kernel (or the tools) refused a namespace: the tests skip with this reason."""


def _ip(*args: str) -> None:
    r = subprocess.run([IP, *args], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise NetnsRefused(f"`ip {' '.join(args)}` failed: {(r.stderr or r.stdout).strip()}")


@dataclass
class Host:
    """One namespace: its name and its addresses on the veth link."""
    netns: str
    ipv4: str
    ipv6: str
    link: str

    def argv(self, argv: list[str]) -> list[str]:
        """`argv` run inside this namespace (the pid is argv's own: nsenter execs it)."""
        return [NSENTER, f"--net={NETNS_DIR}/{self.netns}", "--", *argv]

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv), **kw)

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("timeout", 30)
        return subprocess.run(self.argv(argv), **kw)


@dataclass
class HostPair:
    a: Host
    b: Host
    created: list[str] = field(default_factory=list)
    outsider: Host | None = None    # a third host on a link of its own to `a` (10.254.1.2)

    def remove(self) -> None:
        """Delete the namespaces (the veth pair goes with them); never raises."""
        for name in reversed(self.created):
            subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=20)
        self.created.clear()


def create_pair(tag: str | None = None, outsider: bool = False) -> HostPair:
    """Two namespaces `rq<tag>a`, `rq<tag>b` with a veth pair between them, loopback up;
    with `outsider`, a third, `rq<tag>c` (10.254.1.2), on a second link to `a`, routed to
    a's addresses through it. Raises NetnsRefused (after removing what was made) where the
    kernel says no."""
    if os.geteuid() != 0:
        raise NetnsRefused("network namespaces need root")
    tag = tag or str(os.getpid())
    a = Host(f"rq{tag}a", "10.254.0.1", "fd00:254::1", f"rq{tag}a"[:15])
    b = Host(f"rq{tag}b", "10.254.0.2", "fd00:254::2", f"rq{tag}b"[:15])
    pair = HostPair(a, b)
    try:
        for h in (a, b):
            _ip("netns", "add", h.netns)
            pair.created.append(h.netns)
        _ip("link", "add", a.link, "netns", a.netns, "type", "veth", "peer", "name", b.link, "netns", b.netns)
        for h in (a, b):
            _ip("-n", h.netns, "link", "set", "lo", "up")
            _ip("-n", h.netns, "addr", "add", f"{h.ipv4}/24", "dev", h.link)
            # nodad: the address is usable at once, not after duplicate detection (~1 s)
            _ip("-n", h.netns, "addr", "add", f"{h.ipv6}/64", "dev", h.link, "nodad")
            _ip("-n", h.netns, "link", "set", h.link, "up")
        if outsider:
            c = pair.outsider = Host(f"rq{tag}c", "10.254.1.2", "fd00:254:1::2", f"rq{tag}c"[:15])
            _ip("netns", "add", c.netns)
            pair.created.append(c.netns)
            a_side = f"rq{tag}ac"[:15]
            _ip("link", "add", a_side, "netns", a.netns, "type", "veth", "peer", "name", c.link, "netns", c.netns)
            _ip("-n", a.netns, "addr", "add", "10.254.1.1/24", "dev", a_side)
            _ip("-n", a.netns, "link", "set", a_side, "up")
            _ip("-n", c.netns, "link", "set", "lo", "up")
            _ip("-n", c.netns, "addr", "add", f"{c.ipv4}/24", "dev", c.link)
            _ip("-n", c.netns, "link", "set", c.link, "up")
            _ip("-n", c.netns, "route", "add", "default", "via", "10.254.1.1")
    except BaseException:
        pair.remove()
        raise
    return pair
