"""config.toml -> frozen dataclasses. All validation and defaults live in this package.

Errors are `ConfigError`s whose text is `PATH:LINE: what is wrong` when a line can be
found in the file, else `PATH: key.path: what is wrong`. Nothing else in the package
validates configuration.

The modules, lowest first (each imports only from those above it):
  model       the dataclasses (Config, ProgramSpec, RedisSpec, ...) and shared constants
  source      TOML decoding and parsing, PATH:LINE errors (_Locator), NUL refusal
  values      the schema check of a table (types, NaN/inf, bounds), signals, sizes
  paths       path lengths, directories and files to create, password files, children's PATH
  privileges  user, groups, umask, nice, limits, no_new_privileges
  program     [[program]], restart policy, watchdog, dependency order, command variables
  redis       [redis]: binary and version, directives, includes, the command guard
  cluster     [cluster]
  supervisor  [supervisor], and reading it alone for relayqctl
  ground      the machine the config will run on (load_config with `ground`)
  load        load_config, parse_config

This module re-exports the public names (the modules' own homes are preferred in imports;
node.py, ctl.py, control/ and bench/ still import from here).
"""
from relayq_supervisor.config.cluster import cluster_url_problem
from relayq_supervisor.config.load import DEFAULT_CONFIG, default_config_path, load_config, parse_config
from relayq_supervisor.config.model import (
    KERNEL_TRACE_AUTO,
    REDIS_NAME,
    REDIS_WATCHDOG_SEC,
    RLIM_INFINITY,
    RLIMITS,
    SUPERVISOR_NAME,
    ClusterSpec,
    Config,
    ListenAddress,
    Privileges,
    ProgramSpec,
    RedisSpec,
    RestartPolicy,
    SupervisorSpec,
)
from relayq_supervisor.config.paths import NAME_MAX, PATH_MAX, children_path, read_secret
from relayq_supervisor.config.privileges import run_as_name
from relayq_supervisor.config.program import LOG_CHOICES, RESERVED_NAMES
from relayq_supervisor.config.redis import (
    REDIS_ON_ARGV,
    embedded_redis_tool,
    find_redis_server,
    find_redis_tool,
    is_command_name,
    redis_server_version,
    redis_version,
)
from relayq_supervisor.config.supervisor import (
    LOG_TARGETS,
    load_supervisor_section,
    parse_listen,
    salvage_supervisor_section,
)
from relayq_supervisor.config.values import parse_signal, parse_size
from relayq_supervisor.errors import ConfigError, ConfigSyntaxError

__all__ = [
    "DEFAULT_CONFIG", "KERNEL_TRACE_AUTO", "LOG_CHOICES", "LOG_TARGETS", "NAME_MAX", "PATH_MAX",
    "REDIS_NAME", "REDIS_ON_ARGV", "REDIS_WATCHDOG_SEC", "RESERVED_NAMES", "RLIMITS", "RLIM_INFINITY",
    "SUPERVISOR_NAME", "ClusterSpec", "Config", "ConfigError", "ConfigSyntaxError", "ListenAddress",
    "Privileges", "ProgramSpec", "RedisSpec", "RestartPolicy", "SupervisorSpec",
    "children_path", "cluster_url_problem", "default_config_path", "embedded_redis_tool",
    "find_redis_server", "find_redis_tool", "is_command_name", "load_config", "load_supervisor_section",
    "parse_config", "parse_listen", "parse_signal", "parse_size", "read_secret", "redis_server_version",
    "redis_version", "run_as_name", "salvage_supervisor_section",
]
