"""load_config and parse_config: the whole file, each table by its module, then the checks
across tables (dependency order, command variables, the ground)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from relayq_supervisor.config.cluster import _parse_cluster
from relayq_supervisor.config.ground import _check_ground
from relayq_supervisor.config.model import REDIS_NAME, Config, ProgramSpec
from relayq_supervisor.config.paths import children_path
from relayq_supervisor.config.program import _check_command_variables, _dependency_order, _parse_program
from relayq_supervisor.config.redis import _parse_redis
from relayq_supervisor.config.source import _Locator, _refuse_nul, _toml, read_config
from relayq_supervisor.config.supervisor import _parse_supervisor
from relayq_supervisor.config.values import _check_table
from relayq_supervisor.errors import ConfigError

DEFAULT_CONFIG = "config.toml"

_TOP_KEYS = {"supervisor": dict, "redis": dict, "program": list, "cluster": dict}


def load_config(path: str | os.PathLike, ground: bool = True) -> Config:
    """The config at `path`; with `ground`, checked against this machine too (start-up,
    --check, reload); relayqctl reading [cluster] does without (it runs as an operator)."""
    absolute, raw = read_config(path)
    return parse_config(raw, absolute, ground=ground)


def parse_config(raw: bytes, path: str, ground: bool = False) -> Config:
    """The config text at `path` -> Config, or ConfigError. With `ground` (load_config,
    hence start-up, --check and reload) also the machine it names: see _check_ground."""
    data, text = _toml(raw, path)
    loc = _Locator(path, text)
    base = Path(path).parent
    _refuse_nul(loc, data)
    _check_table(loc, (), data, _TOP_KEYS)

    supervisor = _parse_supervisor(loc, data.get("supervisor", {}), base)
    run_dir = supervisor.run_dir

    cluster = _parse_cluster(loc, data["cluster"], base, has_redis="redis" in data) if "cluster" in data else None
    programs: list[ProgramSpec] = []
    wheres: list[tuple] = []            # each program's key path, for errors
    if "redis" in data:
        redis = _parse_redis(loc, data["redis"], base, run_dir)
        if cluster is not None and redis.redis is not None:
            redis = dataclasses.replace(redis, redis=dataclasses.replace(redis.redis, cluster_nodes=cluster.nodes,
                                                                     cluster_node=cluster.node))
        programs.append(redis)
        wheres.append(("redis",))
    env_path = children_path()
    for i, table in enumerate(data.get("program", [])):
        if not isinstance(table, dict):
            raise loc.error(("program",), "'program' must be an array of tables ([[program]])")
        where = ("program", i)
        programs.append(_parse_program(loc, where, table, base, env_path, supervisor.log_backups))
        wheres.append(where)
    if not programs:
        raise ConfigError(f"{path}: nothing to supervise: add a [redis] table or a [[program]]")
    remote = (REDIS_NAME,) if cluster is not None and "redis" not in data else ()
    config = Config(path=path, supervisor=supervisor, programs=_dependency_order(loc, programs, wheres, remote),
                    cluster=cluster)
    _check_command_variables(loc, config, dict(zip((p.name for p in programs), wheres, strict=True)))
    if ground:      # names are unique by now: _dependency_order refused duplicates
        _check_ground(loc, config, {p.name: where for p, where in zip(programs, wheres, strict=True)})
    return config


def default_config_path() -> str:
    return os.environ.get("RELAYQ_CONFIG") or DEFAULT_CONFIG
