"""The contenders: relayq-supervisor, supervisord, circus and a raw respawn loop.

supervisord and circus come from PyPI into their own venv (bench/.venv-contenders), so
they never mix with the project's dependencies. Each contender writes its own config for
the same programs (`Supervised`) and is started in its own session by the Launcher.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .processes import BenchError, Launcher

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_DIR = BENCH_DIR / ".venv-contenders"
CHILD = str(BENCH_DIR / "child.py")
RAW_RESPAWN = str(BENCH_DIR / "raw_respawn.py")
PYTHON = sys.executable

# Lets relayq restart at once after every kill (the runs between kills last longer
# than stable_after) and never give up however many kills a benchmark makes: no start
# limit (0; the config now refuses a burst over 10000, which failed every section using this).
FAST_RESTART = {"stable_after": 0.5, "start_limit_burst": 0, "start_limit_interval": 1.0}


def child_argv(record_file: Path) -> tuple[str, ...]:
    return (PYTHON, "-S", CHILD, str(record_file))


@dataclass(frozen=True)
class Tool:
    """A contender's executable from the contenders' venv, or why there is none."""
    name: str
    path: str | None
    version: str | None = None
    problem: str | None = None

    @property
    def usable(self) -> bool:
        return self.path is not None and self.problem is None


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout:g}s"
    except OSError as e:
        return 127, e.strerror or str(e)
    return done.returncode, (done.stdout + done.stderr).strip()


def install_contenders(say) -> dict[str, Tool]:
    """supervisord and circusd from the contenders' venv, installing what is missing."""
    python = VENV_DIR / "bin" / "python"
    venv_problem = None
    if not python.exists():
        say(f"creating {VENV_DIR} for supervisord and circus")
        code, out = _run([PYTHON, "-m", "venv", str(VENV_DIR)], timeout=300)
        if code != 0:
            venv_problem = f"cannot create {VENV_DIR}: {out.splitlines()[-1] if out else code}"
    tools = {}
    for package, exe in (("supervisor", "supervisord"), ("circus", "circusd")):
        path = VENV_DIR / "bin" / exe
        if venv_problem:
            tools[exe] = Tool(exe, None, problem=venv_problem)
            continue
        if not path.exists():
            say(f"installing {package} from PyPI into {VENV_DIR}")
            code, out = _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", package],
                             timeout=600)
            if code != 0 or not path.exists():
                last = [line for line in out.splitlines() if line.strip()][-1:] or [f"exit {code}"]
                tools[exe] = Tool(exe, None, problem=f"pip install {package} failed: {last[0]}")
                continue
        code, out = _run([str(path), "--version"], timeout=60)
        if code != 0:
            tools[exe] = Tool(exe, str(path), problem=f"`{exe} --version` failed: {out[-200:]}")
        else:
            tools[exe] = Tool(exe, str(path), version=out.splitlines()[-1].strip())
    return tools


@dataclass(frozen=True)
class Supervised:
    """One program as every contender is told to run it."""
    name: str
    argv: tuple[str, ...]
    numprocs: int = 1


@dataclass(frozen=True)
class RedisSetup:
    binary: str
    port: int
    args: tuple[str, ...] = ("--save", "", "--appendonly", "no")


class Contender:
    """A supervisor under test: writes its config, starts, and is stopped by SIGTERM."""
    label = "?"
    # Period of the contender's polling loop, if it notices deaths only on a tick (None:
    # event-driven). Kills are then made at a random phase of the tick, so its latency is
    # sampled over the whole period rather than at whatever phase the rounds settle into.
    tick_s: float | None = None

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def argv(self, programs: list[Supervised]) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def launch(self, launcher: Launcher, programs: list[Supervised]) -> subprocess.Popen:
        self.proc = launcher.start(self.argv(programs), self.log_name, env=self.env(), cwd=self.workdir)
        return self.proc

    def stop(self, launcher: Launcher, timeout: float = 30.0) -> float | None:
        return launcher.stop(self.proc, timeout=timeout)

    def ensure_running(self) -> None:
        """Fail a wait at once, rather than at its deadline, when the contender has died."""
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited with status {self.proc.returncode}")

    @property
    def log_name(self) -> str:
        return f"{self.workdir.name}-{self.workdir.parent.name}"


class RelayqSupervisor(Contender):
    def __init__(self, workdir: Path, signal_tap: bool | None = None, redis: RedisSetup | None = None,
                 restart: dict | None = None, program_extra: dict | None = None,
                 kernel_trace: bool | None = None, cgroups: bool | None = None):
        super().__init__(workdir)
        self.signal_tap = signal_tap
        self.kernel_trace = kernel_trace
        self.cgroups = cgroups
        self.redis = redis
        self.restart = FAST_RESTART if restart is None else restart
        self.program_extra = program_extra or {}
        settings = [f"{key} = {'true' if value else 'false'}"
                    for key, value in (("signal_tap", signal_tap), ("kernel_trace", kernel_trace),
                                       ("cgroups", cgroups))
                    if value is not None]
        settings += [f"{key} = {json.dumps(value)}" for key, value in self.program_extra.items() if key == "user"]
        self.label = "relayq-supervisor" + (f" ({', '.join(settings)})" if settings else "")

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def control_socket(self) -> str:
        return str(self.workdir / "run" / "relayq.sock")

    def config_text(self, programs: list[Supervised]) -> str:
        lines = ["[supervisor]", 'run_dir = "run"', 'log_dir = "log"', 'audit_log = "log/audit.jsonl"',
                 'control_socket = "run/relayq.sock"']
        if self.signal_tap is not None:
            lines.append(f"signal_tap = {'true' if self.signal_tap else 'false'}")
        if self.kernel_trace is not None:
            lines.append(f"kernel_trace = {'true' if self.kernel_trace else 'false'}")
        if self.cgroups is not None:
            lines.append(f"cgroups = {'true' if self.cgroups else 'false'}")
        if self.redis is not None:
            lines += ["", "[redis]", f"binary = {json.dumps(self.redis.binary)}", f"port = {self.redis.port}",
                      'bind = ["127.0.0.1"]', 'dir = "redis"', f"args = {json.dumps(list(self.redis.args))}",
                      "", "[redis.restart]", *_toml_pairs(self.restart)]
        for p in programs:
            lines += ["", "[[program]]", f"name = {json.dumps(p.name)}", f"command = {json.dumps(list(p.argv))}",
                      f"numprocs = {p.numprocs}", *_toml_pairs(self.program_extra),
                      "", "[program.restart]", *_toml_pairs(self.restart)]
        return "\n".join(lines) + "\n"

    def write_config(self, programs: list[Supervised]) -> Path:
        self.config_path.write_text(self.config_text(programs))
        return self.config_path

    def argv(self, programs: list[Supervised]) -> list[str]:
        self.write_config(programs)
        return [PYTHON, "-m", "relayq_supervisor", "-c", str(self.config_path)]

    def env(self) -> dict[str, str]:
        return supervisor_env()

    def status(self, timeout: float = 5.0) -> dict:
        from relayq_supervisor.ctl.client import call
        reply = call(self.control_socket, "status", timeout)
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error", "status refused"))
        return reply["result"]

    def check(self, programs: list[Supervised]) -> tuple[int, str]:
        """`relayq-supervisor --check` on the config this contender would run."""
        self.write_config(programs)
        return _run_env([PYTHON, "-m", "relayq_supervisor", "-c", str(self.config_path), "--check"], self.env())


def supervisor_env() -> dict[str, str]:
    """The environment for relayq-supervisor (and bench scripts that import it)."""
    env = dict(os.environ)
    # the tree under test, whether or not it is pip-installed in this interpreter
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH")]))
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "RELAYQ_CONFIG"):
        env.pop(var, None)
    return env


def _run_env(argv: list[str], env: dict) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    except (subprocess.TimeoutExpired, OSError) as e:
        return 1, str(e)
    return done.returncode, (done.stdout + done.stderr).strip()


def _toml_pairs(values: dict) -> list[str]:
    out = []
    for k, v in values.items():
        if isinstance(v, bool):
            out.append(f"{k} = {'true' if v else 'false'}")
        else:
            out.append(f"{k} = {json.dumps(v)}")
    return out


class Supervisord(Contender):
    """supervisord with startsecs=0 and autorestart=true: restart as soon as it notices."""

    def __init__(self, workdir: Path, tool: Tool):
        super().__init__(workdir)
        self.tool = tool
        self.label = f"supervisord {tool.version or ''}".strip()
        self.tick_s = 1.0       # its main loop's poll() timeout

    def argv(self, programs: list[Supervised]) -> list[str]:
        d = self.workdir
        lines = ["[supervisord]", "nodaemon=true", f"logfile={d}/supervisord.log", f"pidfile={d}/supervisord.pid",
                 f"childlogdir={d}", "loglevel=warn", "",
                 "[unix_http_server]", f"file={d}/supervisor.sock", "",
                 "[rpcinterface:supervisor]",
                 "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
                 "[supervisorctl]", f"serverurl=unix://{d}/supervisor.sock"]
        for p in programs:
            lines += ["", f"[program:{p.name}]", f"command={shlex.join(p.argv)}", f"numprocs={p.numprocs}",
                      "process_name=%(program_name)s_%(process_num)02d" if p.numprocs > 1 else
                      "process_name=%(program_name)s",
                      "startsecs=0", "autorestart=true", "startretries=1000000",
                      "stdout_logfile=NONE", "stderr_logfile=NONE", "stopasgroup=true", "killasgroup=true"]
        conf = d / "supervisord.conf"
        conf.write_text("\n".join(lines) + "\n")
        return [self.tool.path, "-c", str(conf)]


class Circus(Contender):
    """circusd; `check_delay` None = its defaults (5 s between `manage_watchers` calls
    when started from a config file)."""

    def __init__(self, workdir: Path, tool: Tool, check_delay: float | None = None):
        super().__init__(workdir)
        self.tool = tool
        self.check_delay = check_delay
        self.tick_s = 5.0 if check_delay is None else check_delay
        version = tool.version or ""
        self.label = (f"circus {version} (defaults)" if check_delay is None
                      else f"circus {version} (tuned: check_delay={check_delay:g})")

    def argv(self, programs: list[Supervised]) -> list[str]:
        d = self.workdir
        lines = ["[circus]", f"endpoint = ipc://{d}/circus-ctl.sock", f"pubsub_endpoint = ipc://{d}/circus-pub.sock",
                 f"stats_endpoint = ipc://{d}/circus-stats.sock", f"logoutput = {d}/circusd.log",
                 "loglevel = warning"]
        if self.check_delay is not None:
            lines.append(f"check_delay = {self.check_delay:g}")
        for p in programs:
            lines += ["", f"[watcher:{p.name}]", f"cmd = {shlex.join(p.argv)}", f"numprocesses = {p.numprocs}"]
            if self.check_delay is not None:
                # the circus docs' knobs for fast respawn: no delay between spawns, respawn on
                lines += ["warmup_delay = 0", "respawn = true"]
        conf = d / "circus.ini"
        conf.write_text("\n".join(lines) + "\n")
        return [self.tool.path, str(conf)]


class RawRespawn(Contender):
    """A few lines that wait on a pidfd and respawn at once (one program, one instance)."""
    label = "raw pidfd respawn loop"

    def argv(self, programs: list[Supervised]) -> list[str]:
        if len(programs) != 1 or programs[0].numprocs != 1:
            raise ValueError("the raw respawn loop runs exactly one child")
        return [PYTHON, "-S", RAW_RESPAWN, *programs[0].argv]

    def stop(self, launcher: Launcher, timeout: float = 30.0) -> float | None:
        # the loop and its child share one process group; the loop does not pass SIGTERM on
        return launcher.stop(self.proc, timeout=timeout, group=True)
