"""The /proc readers: stat start ticks, and which systemd unit /proc/PID/cgroup names (v1, hybrid, v2)."""
import os

import pytest

from relayq_supervisor.linux.procfs import (
    CgroupUnit,
    parse_cgroup_unit,
    proc_start_ticks,
    start_ticks_from_stat,
    supplementary_groups,
    unit_from_cgroup,
)

# /proc/self/cgroup of one redis-server.service process, as each layout shows it.
LEGACY_V1 = """\
11:cpuset:/
10:memory:/system.slice/redis-server.service
9:devices:/system.slice/redis-server.service
8:pids:/system.slice/redis-server.service
7:blkio:/system.slice/redis-server.service
6:freezer:/
5:net_cls,net_prio:/
4:perf_event:/
3:cpu,cpuacct:/system.slice/redis-server.service
2:hugetlb:/
1:name=systemd:/system.slice/redis-server.service
"""
HYBRID = LEGACY_V1 + "0::/system.slice/redis-server.service\n"
UNIFIED_V2 = "0::/system.slice/redis-server.service\n"
# A container on a hybrid host (this test machine's layout): systemd's trees are empty from inside.
HYBRID_CONTAINER = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/ad340c6788bbfcb42e000c4c2519fb21
1:cpu:/
0::/
"""


def test_start_ticks_from_stat_text():
    text = ("4412 (we) ird (x) S 1 4412 4412 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200 "
            "18446744073709551615")
    assert start_ticks_from_stat(text) == 987654
    assert start_ticks_from_stat("4412 (short) S 1") is None
    assert start_ticks_from_stat("garbage") is None
    assert proc_start_ticks(2**22 + 12345) is None


@pytest.mark.parametrize(
    "text, unit",
    [
        ("0::/system.slice/relayq-redis-monitor.service\n", "relayq-redis-monitor.service"),
        ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-term.scope\n", "app-term.scope"),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope"),
        ("0::/system.slice/docker.service/payload\n", "docker.service"),
        ("0::/system.slice/logrotate.timer\n", "logrotate.timer"),
        ("0::/\n", None),
        ("0::/init.scope\n", "init.scope"),
        # cgroup v1 (legacy): the name=systemd hierarchy carries the unit
        (
            "12:memory:/system.slice/redis-server.service\n"
            "4:cpu,cpuacct:/\n"
            "1:name=systemd:/system.slice/redis-server.service\n",
            "redis-server.service",
        ),
        # hybrid: unified line is empty, v1 systemd line knows the unit
        ("1:name=systemd:/system.slice/cron.service\n0::/\n", "cron.service"),
        # v1 without name=systemd, units only visible on a controller line
        ("5:pids:/system.slice/relayq.service\n", "relayq.service"),
        ("9:name=systemd:/\n4:memory:/process_api/05f679f2\n0::/\n", None),
        ("", None),
        ("not a cgroup line", None),
    ],
)
def test_unit_from_cgroup(text, unit):
    assert unit_from_cgroup(text) == unit


def test_unified_line_wins_over_v1():
    text = "1:name=systemd:/system.slice/old.service\n0::/system.slice/new.service\n"
    assert unit_from_cgroup(text) == "new.service"


@pytest.mark.parametrize("text, unit, uid", [
    ("0::/system.slice/redis-server.service\n", "redis-server.service", None),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope", None),
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/redis.service\n", "redis.service", 1000),
    ("12:pids:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n0::/\n", "cron.service", None),
])
def test_parse_cgroup_unit(text, unit, uid):
    parsed = parse_cgroup_unit(text)
    assert parsed.name == unit and parsed.user_uid == uid


def test_parse_cgroup_unit_outside_systemd():
    assert parse_cgroup_unit("0::/\n") is None


@pytest.mark.parametrize("text", [LEGACY_V1, HYBRID, UNIFIED_V2], ids=["v1", "hybrid", "v2"])
def test_every_layout_names_the_same_unit(text):
    assert parse_cgroup_unit(text) == CgroupUnit("redis-server.service", None)


def test_hybrid_prefers_the_unified_line_when_the_two_disagree():
    # systemd >= 233 tracks units in the unified tree on hybrid hosts; name=systemd is its copy.
    moved = HYBRID.replace("1:name=systemd:/system.slice/redis-server.service",
                           "1:name=systemd:/system.slice/relayq-redis-monitor.service")
    assert parse_cgroup_unit(moved) == CgroupUnit("redis-server.service", None)


def test_hybrid_falls_back_to_name_systemd_when_the_unified_line_is_empty():
    text = HYBRID.replace("0::/system.slice/redis-server.service", "0::/")
    assert parse_cgroup_unit(text) == CgroupUnit("redis-server.service", None)


def test_a_container_on_a_hybrid_host_has_no_unit():
    assert parse_cgroup_unit(HYBRID_CONTAINER) is None


@pytest.mark.parametrize("text", [
    "1:name=systemd:/user.slice/user-1000.slice/user@1000.service/app.slice/redis.service\n"
    "0::/user.slice/user-1000.slice/user@1000.service/app.slice/redis.service\n",
    "1:name=systemd:/user.slice/user-1000.slice/user@1000.service/app.slice/redis.service\n",
    "0::/user.slice/user-1000.slice/user@1000.service/app.slice/redis.service\n",
], ids=["hybrid", "v1", "v2"])
def test_a_users_own_service_names_its_user_in_every_layout(text):
    assert parse_cgroup_unit(text) == CgroupUnit("redis.service", 1000)


def test_the_user_manager_itself_is_a_system_unit():
    assert parse_cgroup_unit("0::/user.slice/user-1000.slice/user@1000.service\n") == CgroupUnit("user@1000.service")


def test_supplementary_groups_of_this_process():
    assert supplementary_groups(os.getpid()) == set(os.getgroups())
    assert supplementary_groups(2**22 + 12345) == set()
