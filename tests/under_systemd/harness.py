"""A real systemd as PID 1 of a private namespace, to test the unit under the service manager it
was written for.

`unshare --pid --fork --mount --net --uts --ipc --cgroup` runs boot.sh as the namespace's first
process: it puts an overlay of `/` on a tmpfs, a fresh proc (with /proc/sys read-only), a
read-only sysfs, cgroup2 from a cgroup directory made for this namespace, tmpfs /run, /tmp and
/dev, pivots into it and execs `/lib/systemd/systemd --system`. The tests drive it with
`nsenter -t PID -a systemctl ...`; `systemctl poweroff` ends only the namespace.

What it leaves behind: nothing. Mounts live in the namespace's own mount namespace and go with
it; the cgroup directory (and the slices systemd made below it) and the host directories are
removed by `close()`, which also kills the namespace's init by its pid when poweroff does not
end it in time.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import wait_for

SYSTEMD = "/lib/systemd/systemd"
BOOT_SCRIPT = Path(__file__).with_name("boot.sh")
CHECKOUT = Path(__file__).resolve().parents[2]
TOOLS = ("unshare", "nsenter", "pivot_root", "mount")
# What boot.sh prints just before it execs systemd: a failure before it is the host refusing a
# namespace or a mount; a failure after it is systemd's (a real failure, never a skip).
EXEC_MARK = "boot.sh: exec systemd"
REFUSALS = ("Operation not permitted", "Permission denied", "not supported", "No such device",
            "Invalid argument", "unknown filesystem type")
PR_SET_PDEATHSIG = 1
CGROUP_PREFIX = "relayq-systemd-"


# What a root shell inside would have: none of the test run's own variables (its venv, a pyenv
# PATH under /root, NOTIFY_SOCKET) leak into the machine.
INSIDE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
              "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", "TERM": "dumb"}


class Refused(Exception):
    """The kernel or the host refuses what the harness needs: the reason to skip with."""


def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """The first truthy value of predicate(), or AssertionError after `timeout` seconds."""
    return wait_for(predicate, timeout, interval, what)


def cgroup2_mount() -> str | None:
    """Where the host mounts cgroup2: /sys/fs/cgroup (unified) or /sys/fs/cgroup/unified (hybrid)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            after = fields[fields.index("-") + 1:]
            if after and after[0] == "cgroup2":
                return fields[4]
    return None


def own_cgroup2_path() -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return "/"


def host_refusal() -> str | None:
    """Why this host cannot run the harness at all, or None. Only what is missing for certain:
    whether the kernel allows each namespace and mount is learned by booting."""
    if sys.platform != "linux":
        return "a systemd namespace needs Linux"
    if os.geteuid() != 0:
        return "a systemd namespace needs root (unshare, mount, pivot_root, cgroups)"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is not installed (apt-get install systemd; .ci/setup test does)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (util-linux)"
    if cgroup2_mount() is None:
        return "no cgroup2 hierarchy is mounted on this host: systemd in the namespace needs one"
    return None


def install_python() -> str | None:
    """The interpreter the product's venv is made from: one outside /home and /root, which the
    unit hides (ProtectHome=yes): a venv made from a pyenv Python under /root fails with 203/EXEC."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        real = os.path.realpath(candidate)
        if os.access(real, os.X_OK) and not real.startswith(("/home/", "/root/")):
            return candidate
    return None


def prepare_venv(dest: Path, work: Path, timeout: float = 300) -> None:
    """README's install, at the path it runs from in every namespace: a venv at /opt/relayq with
    the checkout pip-installed into it (`[embedded]` included), `dest` bound at /opt/relayq in a
    throwaway mount namespace (the host's /opt gets an overlay there, so nothing is written to
    it). A venv cannot be moved (its scripts name their interpreter by path), hence the bind.
    For speed the venv is made --without-pip and this test run's own pip installs into it
    (`pip --python`): the result is the same, without unpacking a second pip."""
    python = install_python()
    if python is None:
        raise Refused("no python3 outside /home and /root to make /opt/relayq from (the unit has ProtectHome=yes)")
    source = work / "source"
    # A copy of what pip needs: pip's in-tree build would write build/ and *.egg-info into the checkout.
    shutil.copytree(CHECKOUT / "relayq_supervisor", source / "relayq_supervisor",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(CHECKOUT / name, source / name)
    for d in ("opt-upper", "opt-work"):
        (work / d).mkdir()
    dest.mkdir(exist_ok=True)
    script = r"""set -eu
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/opt,upperdir=$1/opt-upper,workdir=$1/opt-work" /opt
mkdir /opt/relayq
mount --bind "$2" /opt/relayq
"$5" -m venv --without-pip /opt/relayq
"$4" -m pip --python /opt/relayq/bin/python install -q --disable-pip-version-check "$3[embedded]"
/opt/relayq/bin/relayq-supervisor --help >/dev/null
"""
    result = subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", str(work), str(dest), str(source),
                             sys.executable, python], capture_output=True, text=True, timeout=timeout)
    noise = re.compile(r"^WARNING: Location .* is ignored.*$\n?", re.M)
    if result.returncode != 0:
        output = noise.sub("", result.stdout + result.stderr).strip()
        if "unshare" in output and any(r in output for r in REFUSALS):
            raise Refused(f"a mount namespace was refused: {output.splitlines()[-1]}")
        raise AssertionError(f"installing relayq into a venv failed ({result.returncode}):\n{output}")


class SystemdNamespace:
    """One booted systemd in its own pid, mount, net, uts, ipc and cgroup namespaces."""

    def __init__(self, work: Path, venv: Path, files: dict[str, str], target: str = "relayq-test.target"):
        self.work = work
        self.venv = venv
        self.files = files          # path inside -> text, or "->TARGET" for a symlink
        self.target = target
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid: int | None = None       # systemd, as the host sees it
        self.cgroup: Path | None = None
        self.boot_log = work / "boot.log"

    # --- boot -------------------------------------------------------------------------------

    def boot(self, timeout: float = 60.0) -> SystemdNamespace:
        refusal = host_refusal()
        if refusal:
            raise Refused(refusal)
        base, files = self.work / "base", self.work / "files"
        base.mkdir()
        self.write_tree(files)
        mount_point = cgroup2_mount()
        assert mount_point is not None
        parent = Path(mount_point + own_cgroup2_path())
        remove_stale_cgroups(parent)
        self.cgroup = parent / f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.cgroup.mkdir()
        except OSError as e:
            self.cgroup = None
            raise Refused(f"cannot create a cgroup for the namespace under {mount_point}: {e.strerror}") from None
        with open(self.boot_log, "wb") as log:
            # The shell moves itself into the new cgroup before unshare: `--cgroup` then makes that
            # directory the root of the namespace's cgroup tree. Should the test run itself be killed
            # (no teardown), nothing outlives it: unshare gets SIGKILL when this process dies, and
            # --kill-child passes that on to the namespace's init, which takes the namespace with it.
            self.proc = subprocess.Popen(
                ["sh", "-c", 'echo 0 > "$0" && exec "$@"', str(self.cgroup / "cgroup.procs"),
                 "unshare", "--pid", "--fork", "--kill-child", "--mount", "--net", "--uts", "--ipc", "--cgroup",
                 str(BOOT_SCRIPT), str(base), str(self.venv), str(files), self.target],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent)
        try:
            self.init_pid = poll(self.find_init, timeout, "systemd to start in the namespace")
            poll(self.booted, timeout, f"systemd to reach {self.target}", interval=0.05)
        except BaseException:
            self.close()
            raise
        return self

    def write_tree(self, root: Path) -> None:
        for inside, content in self.files.items():
            path = root / inside.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            if content.startswith("->"):
                os.symlink(content[2:], path)
            else:
                path.write_text(content)

    def find_init(self) -> int | None:
        """systemd's host pid once boot.sh has exec'd it; raises if the namespace ended first."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            self.boot_failed()
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                children = [int(x) for x in f.read().split()]
        except OSError:
            return None
        for pid in children:
            try:
                if os.readlink(f"/proc/{pid}/exe") == os.path.realpath(SYSTEMD):
                    return pid
            except OSError:
                pass
        return None

    def booted(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            self.boot_failed()
        r = self.run("systemctl", "is-active", self.target, check=False, timeout=10)
        return r.stdout.strip() == "active"

    def boot_failed(self) -> None:
        log = self.boot_log.read_text(errors="replace")
        if EXEC_MARK not in log and any(r in log for r in REFUSALS):
            lines = [line for line in log.splitlines() if line.strip()]
            raise Refused(f"the kernel refused the namespace: {lines[-1] if lines else log}")
        raise AssertionError(f"the namespace ended during boot ({self.proc.returncode if self.proc else '?'}):\n{log}")

    # --- driving it ---------------------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout: float = 60.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """argv inside every namespace of the machine (pids, paths, network as it sees them)."""
        assert self.init_pid is not None
        r = subprocess.run(["nsenter", "-t", str(self.init_pid), "-a", *argv], capture_output=True, text=True,
                           timeout=timeout, input=input, env=INSIDE_ENV)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {r.returncode} in the namespace:\n{r.stdout}{r.stderr}")
        return r

    def systemctl(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def path(self, inside: str) -> Path:
        """A path of the machine's root, reachable from the host (through systemd's /proc/PID/root)."""
        return Path(f"/proc/{self.init_pid}/root") / inside.lstrip("/")

    def write(self, inside: str, text: str) -> None:
        path = self.path(inside)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def unit_pids(self, unit: str) -> list[int]:
        """Pids (as the namespace numbers them) in the unit's cgroup, including its sub-cgroups."""
        group = self.show(unit, "ControlGroup")["ControlGroup"]
        if not group:
            return []
        r = self.run("sh", "-c", f'cat $(find "/sys/fs/cgroup{group}" -name cgroup.procs) 2>/dev/null', check=False)
        return sorted(int(x) for x in r.stdout.split())

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "short-monotonic", *args, check=False).stdout

    # --- the end --------------------------------------------------------------------------------

    def poweroff(self, timeout: float = 30.0) -> int | None:
        """`systemctl poweroff`: systemd stops every unit and the pid namespace ends. Returns
        unshare's exit status, None when it did not end in time."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.run("systemctl", "poweroff", check=False, timeout=timeout)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Idempotent and safe after any failure: end the namespace, remove its cgroups and dirs."""
        if self.proc is not None and self.proc.poll() is None:
            if self.init_pid is not None:
                try:
                    self.poweroff()
                except (subprocess.TimeoutExpired, AssertionError):
                    pass
            if self.proc.poll() is None:
                # SIGKILL to a pid namespace's init kills every process in the namespace
                target = self.init_pid if self.init_pid is not None else self.proc.pid
                try:
                    os.kill(target, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
        if self.cgroup is not None and self.cgroup.exists():
            remove_cgroup_tree(self.cgroup)
            self.cgroup = None
        base = self.work / "base"
        if base.exists():
            base.rmdir()        # the tmpfs on it belonged to the namespace's mounts: empty here
        shutil.rmtree(self.work / "files", ignore_errors=True)


def remove_stale_cgroups(parent: Path) -> None:
    """The empty cgroups of test runs that were killed before their teardown (named by the pid that
    made them, now gone). A live run's cgroup, or one with processes, is never touched."""
    for d in parent.glob(f"{CGROUP_PREFIX}*"):
        try:
            maker = int(d.name[len(CGROUP_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if os.path.exists(f"/proc/{maker}"):
            continue
        try:
            remove_cgroup_tree(d, timeout=0)
        except (AssertionError, OSError):
            pass            # still has processes, or another run is removing it: leave it


def die_with_parent() -> None:
    """In the child between fork and exec: SIGKILL when the test run dies (survives exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def remove_cgroup_tree(top: Path, timeout: float = 30.0) -> None:
    """rmdir the cgroups below `top`, deepest first, once their processes are gone (a process
    of a just-killed namespace can take a moment to leave)."""
    def empty() -> bool:
        for procs in top.rglob("cgroup.procs"):
            try:
                if procs.read_text().strip():
                    return False
            except OSError:
                pass
        return True
    poll(empty, timeout, f"the processes of {top} to exit")
    dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
    for d in [*dirs, top]:
        d.rmdir()
