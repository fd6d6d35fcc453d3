"""Which cgroup hierarchy the supervisor groups programs in, from mountinfo and /proc/self/cgroup text."""
from relayq_supervisor.linux.cgroups import Hierarchy, parse_hierarchy

HYBRID = """\
25 22 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
"""
HYBRID_CGROUP = "9:name=systemd:/system.slice/relayq.service\n8:pids:/system.slice/relayq.service\n" \
                "0::/system.slice/relayq.service\n"


def test_v2_preferred_on_a_hybrid_host():
    assert parse_hierarchy(HYBRID, HYBRID_CGROUP) == Hierarchy(
        2, "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/system.slice/relayq.service")


def test_v1_pids_without_a_v2_mount():
    v1_only = "\n".join(line for line in HYBRID.splitlines() if "cgroup2" not in line)
    assert parse_hierarchy(v1_only, HYBRID_CGROUP) == Hierarchy(
        1, "/sys/fs/cgroup/pids", "/sys/fs/cgroup/pids/system.slice/relayq.service", "/", "pids")


def test_v1_named_systemd_hierarchy_when_no_pids_controller():
    text = "\n".join(line for line in HYBRID.splitlines() if "cgroup2" not in line and "pids" not in line)
    assert parse_hierarchy(text, HYBRID_CGROUP).mount == "/sys/fs/cgroup/systemd"


def test_pure_v2_and_the_root_group():
    mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
    assert parse_hierarchy(mountinfo, "0::/\n") == Hierarchy(2, "/sys/fs/cgroup", "/sys/fs/cgroup")


def test_mount_of_a_subtree_outside_our_group_is_not_used():
    mountinfo = "30 23 0:26 /other /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert parse_hierarchy(mountinfo, "0::/system.slice/x.service\n") is None


def test_nothing_mounted():
    assert parse_hierarchy("22 1 0:21 / /proc rw - proc proc rw\n", "0::/\n") is None


def test_favordynmods_from_the_mount_options():
    fast = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,favordynmods\n"
    assert parse_hierarchy(fast, "0::/\n").favordynmods
    assert not parse_hierarchy(fast.replace(",favordynmods", ""), "0::/\n").favordynmods
