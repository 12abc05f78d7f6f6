"""Settings from environment variables and CLI flags, declared once per component.

A component declares a frozen dataclass whose fields are made with
`setting()`; `load()` fills it from defaults, then the environment, then the
command line (each overriding the last), and rejects bad values at start-up
with a message naming the variable. `markdown_table()` renders the same
declarations for docs/configuration.md, so the docs cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from shared.errors import ContractError

T = TypeVar("T")

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


class ConfigError(ContractError):
    """A setting has a value that cannot be used."""


def setting(default: Any, env: str, help: str, *, flag: str | None = None) -> Any:  # noqa: A002
    """Declare one setting: its default, its environment variable and what it is for."""
    metadata = {"env": env, "help": help, "flag": flag or "--" + env.lower().split("_", 1)[1].replace("_", "-")}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _parser_for(hint: Any) -> Callable[[str], Any]:
    """Turn a field's type hint into a function that parses its text form."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = _parser_for(next(a for a in args if a is not type(None)))
        return lambda text: None if text.strip() == "" else inner(text)
    if origin is list:
        item = _parser_for(args[0])
        return lambda text: [item(part.strip()) for part in text.split(",") if part.strip()]
    if hint is bool:
        return _parse_bool
    if hint in (int, float, str):
        return typing.cast(Callable[[str], Any], hint)
    if isinstance(hint, type):
        return typing.cast(Callable[[str], Any], hint)
    raise TypeError(f"unsupported setting type {hint!r}")


def load(
    cls: type[T], argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, *, prog: str | None = None
) -> T:
    """Build `cls` from defaults, then `env`, then `argv`; raise ConfigError on bad input."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip())
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        meta = field.metadata
        parser.add_argument(meta["flag"], dest=field.name, default=None, help=f"{meta['help']} (env {meta['env']})")
    namespace = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        text = getattr(namespace, field.name)
        source = field.metadata["flag"]
        if text is None and field.metadata["env"] in env:
            text, source = env[field.metadata["env"]], field.metadata["env"]
        if text is None:
            continue
        try:
            values[field.name] = _parser_for(hints[field.name])(text)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def load_or_exit(cls: type[T], argv: Sequence[str] | None = None, *, prog: str) -> T:
    """`load()` for an entry point: a bad setting prints ``prog: message`` and exits with status 2."""
    try:
        return load(cls, argv, prog=prog)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def markdown_table(cls: type[Any]) -> str:
    """The settings of `cls` as a Markdown table (variable, flag, default, meaning)."""
    rows = ["| variable | flag | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        has_default = field.default is not dataclasses.MISSING
        default = field.default if has_default else field.default_factory()  # type: ignore[operator]
        if isinstance(default, bool):
            shown = str(default).lower()
        elif isinstance(default, list):
            shown = ",".join(str(item) for item in default)
        else:
            shown = "" if default is None else str(default)
        meta = field.metadata
        shown = f"`{shown}`" if shown else "(empty)"
        rows.append(f"| `{meta['env']}` | `{meta['flag']}` | {shown} | {meta['help']} |")
    return "\n".join(rows)
