"""A command of the table, and how its parser and its config come from its model.

Each command names its config model and one flag table: flag -> dotted field. Everything
argparse needs (type, choices, repeatable, help, default) is read from the field, so a flag
cannot drift from the field it sets. A positional is written in capitals (``"FILE"``).

Every command also takes ``--config FILE`` (YAML, keys as the model's fields) and
``key=value`` overrides; :func:`resolve` merges them (see :func:`chattune.config.load_config`)
and validates once, before the command runs, so nothing slow starts on a bad config.

Example:
    >>> from chattune.cli.data import DATA_CHECK
    >>> DATA_CHECK.flags["--format"]
    'format'
"""

from __future__ import annotations

import argparse
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from annotated_types import MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from chattune.config import load_config
from chattune.errors import ConfigError

#: ``key=value`` or ``section.key=value``; other words are the command's positional values.
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)*=")


@dataclass(frozen=True)
class Command:
    """One ``chattune`` command.

    Attributes:
        name: the words that call it, e.g. ``"kb search"``.
        config: the pydantic model its function receives, validated.
        flags: flag (``"--max-len"``, or a positional in capitals) -> dotted field.
        func: ``func(config) -> exit code``; its docstring is the command's help.
    """

    name: str
    config: type[BaseModel]
    flags: dict[str, str]
    func: Callable[[Any], int]

    @property
    def help(self) -> str:
        return inspect.getdoc(self.func) or ""

    @property
    def positional(self) -> tuple[str, str] | None:
        """(NAME, field) of the positional argument, if the command takes one."""
        found = [(f, field) for f, field in self.flags.items() if not f.startswith("-")]
        return found[0] if found else None


def field_info(model: type[BaseModel], dotted: str) -> FieldInfo:
    """The field ``dotted`` (``"train.lr"``) of ``model``; KeyError if there is none."""
    *sections, leaf = dotted.split(".")
    for name in sections:
        annotation = model.model_fields[name].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise KeyError(f"{dotted}: {name} is not a section")
        model = annotation
    return model.model_fields[leaf]


def add_parser(subparsers: Any, command: Command, word: str) -> argparse.ArgumentParser:
    """``command``'s parser, under ``word`` on ``subparsers``, with one argument per flag."""
    summary = command.help.split("\n\n")[0].replace("%", "%%")
    parser = subparsers.add_parser(
        word,
        help=summary,
        description=command.help.replace("%", "%%"),
        epilog="Each flag sets the field shown in [brackets]; any field can also be set in "
        f"--config FILE (YAML) or as key=value, e.g. {_example(command)}",
    )
    parser.set_defaults(_command=command)
    parser.add_argument("--config", dest="_config", metavar="FILE", help="YAML: fields as keys")
    for flag, dotted in command.flags.items():
        if flag.startswith("-"):
            kwargs = argument(field_info(command.config, dotted))
            kwargs["help"] = f"{kwargs['help']} [{dotted}]".strip()
            if kwargs.get("action", "append") == "append" and "choices" not in kwargs:
                kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
            parser.add_argument(flag, dest=dotted, default=argparse.SUPPRESS, **kwargs)
    positional = command.positional
    name, dotted = positional if positional else ("", "")
    description = field_info(command.config, dotted).description if positional else None
    parser.add_argument(
        "_words",
        nargs="*",
        metavar=f"{name} | key=value" if positional else "key=value",
        help=(f"{name}: {description}; " if description else "") + "key=value: set any field",
    )
    return parser


def _example(command: Command) -> str:
    """``field=VALUE`` for the command's last named flag (the epilog's example)."""
    named = [(f, d) for f, d in command.flags.items() if f.startswith("-")]
    flag, dotted = named[-1]
    return f"{dotted}={flag.lstrip('-').replace('-', '_').upper()}"


def argument(field: FieldInfo) -> dict[str, Any]:
    """argparse keywords for ``field``: type, choices, repeatable or a switch, and help.

    Example:
        >>> from chattune.config import DataConfig
        >>> argument(DataConfig.model_fields["mask"])["choices"]
        ['assistant', 'last', 'all']
    """
    kind, size = _plain(field.annotation), _fixed_length(field)
    kwargs: dict[str, Any] = {}
    if typing.get_origin(kind) is list:
        kind = _plain(typing.get_args(kind)[0])
        kwargs = {"nargs": size} if size else {"action": "append"}
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("nargs") == "+":  # one flag, several words: `--space A B`
            kwargs = {"nargs": "+", "action": "extend"}
    if kind is bool:
        return {"action": "store_const", "const": True, "help": _help(field)}
    if typing.get_origin(kind) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(kind))
        kind = type(kwargs["choices"][0])
    elif isinstance(kind, type) and issubclass(kind, enum.Enum):
        kwargs["choices"] = [m.value for m in kind]
        kind = str
    if kind in (int, float, str):
        kwargs["type"] = kind
    return {**kwargs, "help": _help(field)}


def _plain(annotation: Any) -> Any:
    """``int | None`` -> ``int``; ``Annotated[float, Gt(0)]`` -> ``float``."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _plain(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [_plain(a) for a in typing.get_args(annotation) if a is not type(None)]
        if all(typing.get_origin(k) is typing.Literal for k in kinds):  # Mode | Literal["all"]
            return typing.Literal[tuple(v for k in kinds for v in typing.get_args(k))]
        return kinds[0] if len(kinds) == 1 else str
    return annotation


def _fixed_length(field: FieldInfo) -> int | None:
    """N for a list field that must hold exactly N items (``--models A B``)."""
    low = [m.min_length for m in field.metadata if isinstance(m, MinLen)]
    high = [m.max_length for m in field.metadata if isinstance(m, MaxLen)]
    return low[0] if low and low == high else None


def _help(field: FieldInfo) -> str:
    """The field's description and default, escaped for argparse (which formats with %)."""
    text = field.description or ""
    default = field.get_default(call_default_factory=False)
    if field.is_required() or field.default_factory or default is None or default is False:
        return text.replace("%", "%%")
    shown = default.value if isinstance(default, enum.Enum) else default
    return f"{text} (default: {shown})".strip().replace("%", "%%")


def resolve(command: Command, args: argparse.Namespace) -> BaseModel:
    """The validated config of ``command`` from parsed ``args`` (every problem at once)."""
    given = {d: getattr(args, d) for d in command.flags.values() if hasattr(args, d)}
    values, overrides = split_words(command, args._words)
    if values:
        name, dotted = command.positional  # type: ignore[misc]
        is_list = typing.get_origin(_plain(field_info(command.config, dotted).annotation))
        if is_list is not list and len(values) > 1:
            raise ConfigError(f"{name}: one expected, got {values} (quote it)")
        given[dotted] = values if is_list is list else values[0]
    return load_config(command.config, args._config, given, overrides, command.flags)


def split_words(command: Command, words: list[str]) -> tuple[list[str], list[str]]:
    """(positional values, ``key=value`` overrides) from the command's loose words.

    A word is an override when it looks like one and its key starts with a field of the
    command (so a file called ``notes=v2.md`` stays a file, unless the command has a field
    ``notes``). Without a positional argument, every word is an override.
    """
    if command.positional is None:
        return [], list(words)
    top = set(command.config.model_fields)
    values, overrides = [], []
    for word in words:
        is_override = _OVERRIDE.match(word) and word.split("=")[0].split(".")[0] in top
        (overrides if is_override else values).append(word)
    return values, overrides
