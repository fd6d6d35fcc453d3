"""`$VAR` and `${VAR}` in a program's `command`, from the environment it starts with, by
systemd's rules for ExecStart= (systemd.service(5), "Command lines"):

- `${VAR}` anywhere in a word is replaced by the variable's exact value, whitespace and
  all: the word stays one argument;
- `$VAR` as a whole word is replaced by the value split at whitespace (quotes respected,
  then removed): zero or more arguments;
- `$$` is a literal `$`; any other `$` (`$1`, `--x=$VAR`, a lone `$`) stays as written.

Unlike systemd, an undefined variable is an error, not an empty string: `config/program.py`
refuses it at load (and `--check`) when it can know the environment, and a start that
meets one gives up with its name. The program to run (argv[0]) is never expanded, so the
config check can find it.

Imports nothing of ours: config/program.py (the check) and core/launching.py (the start) use it.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_WHOLE_WORD = re.compile(rf"\$({_NAME})")
_IN_WORD = re.compile(rf"\$\$|\$\{{({_NAME})\}}")


class UndefinedVariable(ValueError):
    def __init__(self, name: str):
        super().__init__(f"${{{name}}} is not set")
        self.name = name


def referenced(argv: Sequence[str]) -> list[str]:
    """The variables argv[1:] uses, in order of first use."""
    names: list[str] = []
    for word in argv[1:]:
        whole = _WHOLE_WORD.fullmatch(word)
        for name in [whole.group(1)] if whole else [m.group(1) for m in _IN_WORD.finditer(word) if m.group(1)]:
            if name not in names:
                names.append(name)
    return names


def _split(value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError:          # an unbalanced quote: plain whitespace splitting, as systemd's relaxed mode
        return value.split()


def expand_command(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """argv with its variables replaced; UndefinedVariable names the first one env lacks."""
    def value(name: str) -> str:
        if name not in env:
            raise UndefinedVariable(name)
        return env[name]

    out = list(argv[:1])
    for word in argv[1:]:
        whole = _WHOLE_WORD.fullmatch(word)
        if whole:
            out += _split(value(whole.group(1)))
        else:
            out.append(_IN_WORD.sub(lambda m: "$" if m.group(0) == "$$" else value(m.group(1)), word))
    return out
