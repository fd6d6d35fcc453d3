"""The product as the README installs it under systemd, and a booted machine to test it in."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from .harness import CHECKOUT, Refused, SystemdNamespace

UNITS = CHECKOUT / "units"
CONFIG = "/etc/relayq/config.toml"
TARGET = "relayq-test.target"


def installed_files(*, wanted_by_target: tuple[str, ...] = ()) -> dict[str, str]:
    """README's "Under systemd" install, as files of the machine's root: the unit and the
    production config verbatim, the two commands linked into /usr/local/bin. `wanted_by_target`:
    units enabled for the boot (a .wants link, what `systemctl enable` makes)."""
    files = {
        "/etc/systemd/system/relayq-supervisor.service": (UNITS / "relayq-supervisor.service").read_text(),
        CONFIG: (UNITS / "config.production.toml").read_text(),
        "/usr/local/bin/relayq-supervisor": "->/opt/relayq/bin/relayq-supervisor",
        "/usr/local/bin/relayqctl": "->/opt/relayq/bin/relayqctl",
        # The smallest boot: journald, so the tests can read what systemd and the units said, and
        # none of the host's enabled units.
        f"/etc/systemd/system/{TARGET}": "[Unit]\nDescription=relayq-supervisor test machine\n"
                                          "Wants=systemd-journald.service\n",
    }
    for unit in wanted_by_target:
        files[f"/etc/systemd/system/{TARGET}.wants/{unit}"] = f"->/etc/systemd/system/{unit}"
    files.update(system_users(("redis", "relayq")))
    return files


def system_users(names: tuple[str, ...]) -> dict[str, str]:
    """README's `useradd --system` for the users the production config runs Redis and the
    workers as, where the host lacks them: /etc/passwd and /etc/group of the machine's root
    (an overlay: the host's own files stay untouched). {} when the host has them all."""
    passwd, group = Path("/etc/passwd").read_text(), Path("/etc/group").read_text()
    taken_uids = {int(line.split(":")[2]) for line in passwd.splitlines() if line.count(":") >= 6}
    taken_gids = {int(line.split(":")[2]) for line in group.splitlines() if line.count(":") >= 3}
    users = {line.split(":")[0] for line in passwd.splitlines()}
    added = False
    for name in names:
        if name in users:
            continue
        uid = next(i for i in range(999, 99, -1) if i not in taken_uids and i not in taken_gids)
        taken_uids.add(uid)
        taken_gids.add(uid)
        passwd += f"{name}:x:{uid}:{uid}::/nonexistent:/usr/sbin/nologin\n"
        group += f"{name}:x:{uid}:\n"
        added = True
    return {"/etc/passwd": passwd, "/etc/group": group} if added else {}


@contextlib.contextmanager
def booted(work: Path, venv: Path, files: dict[str, str]) -> Iterator[SystemdNamespace]:
    """A booted machine, closed (namespace, cgroups, directories) whatever happens inside; the
    test is skipped, with the reason, where the kernel refuses the namespace."""
    work.mkdir(parents=True, exist_ok=True)
    machine = SystemdNamespace(work, venv, files, target=TARGET)
    try:
        machine.boot()
    except Refused as e:
        import pytest  # here only: the benchmark (bench/systemd_order.py) uses this module without pytest
        pytest.skip(str(e))
    try:
        yield machine
    finally:
        machine.close()
