"""The search space of ``chattune tune``: ``--space`` entries parsed and checked.

Each entry is one dimension, a dotted field of :class:`~chattune.config.RunConfig` and its
values::

    train.lr=1e-5:1e-3:log      a float range, sampled on a log scale
    train.warmup_ratio=0:0.1    a float range
    adapter.r=8:64              an int range (both bounds whole, or an int field)
    adapter.r=8,16,32           a choice; values read as ``key=value`` overrides read them
    adapter.target_modules=all-linear,[q_proj,v_proj]   commas inside brackets stay

Every value is validated against the base run before any training, so a trial can never
fail on its config; every problem is reported at once, naming its entry.

Example:
    >>> space = parse_space(["train.lr=1e-5:1e-3:log", "adapter.r=8,16,32"], RunConfig())
    >>> [(p.name, p.kind, p.log) for p in space]
    [('train.lr', 'float', True), ('adapter.r', 'categorical', False)]
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from chattune.config import RunConfig, build_config, parse_override
from chattune.errors import ConfigError

if typing.TYPE_CHECKING:
    import optuna

#: Fields the search sets itself: a space over them would break the study.
RESERVED = {
    "train.output": "each trial writes to OUTPUT/trials/trial-NNNN",
    "train.resume": "each trial starts fresh",
    "train.resume_force": "each trial starts fresh",
    "train.eval_every": "trials are compared at the same evaluation steps; set it in the "
    "base config (or tune.evals_per_trial)",
}


@dataclass(frozen=True)
class Param:
    """One dimension of the search space, as one ``--space`` entry wrote it.

    Attributes:
        name: the dotted config field (``"train.lr"``), also the Optuna parameter's name.
        kind: ``float`` or ``int`` (a range, ``low:high``) or ``categorical`` (``a,b,c``).
        entry: the ``--space`` entry, for messages.
        low: the lower bound of a range.
        high: the upper bound of a range.
        log: sample the range on a log scale (``low:high:log``).
        choices: the categorical values as Optuna stores them: numbers, strings, booleans
            or None; a value YAML reads as a list (``[q_proj,v_proj]``) stays text.
    """

    name: str
    kind: Literal["float", "int", "categorical"]
    entry: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """This trial's value, drawn by the study's sampler (or fixed by an enqueued trial)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def decode(self, value: Any) -> Any:
        """The config value of an Optuna value: text is read as a ``key=value`` override."""
        return parse_override(f"{self.name}={value}")[1] if isinstance(value, str) else value


_RANGE = re.compile(r"^(?P<low>[^:,]+):(?P<high>[^:,]+)(?P<log>:log)?$")


def parse_space(entries: list[str], base: RunConfig) -> list[Param]:
    """Every ``--space`` entry as a :class:`Param`, each value checked against ``base``.

    Syntax: ``key=low:high`` (a float range, or an int range when both bounds are whole
    numbers or the field is an integer), ``key=low:high:log`` (sampled on a log scale),
    ``key=a,b,c`` (a choice; each value read as a ``key=value`` override reads it).

    Raises:
        ConfigError: naming each bad entry and how to fix it, all at once.

    Example:
        >>> parse_space(["adapter.r=8:64:log"], RunConfig())[0].kind
        'int'
    """
    params, problems = [], []
    for entry in entries:
        try:
            param = _parse_entry(entry)
            problems += _check_values(param, base)
            if param.name in {p.name for p in params}:
                problems.append(f"--space {entry}: {param.name} is given twice")
            params.append(param)
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("invalid search space:\n  " + "\n  ".join(problems))
    return params


def _parse_entry(entry: str) -> Param:
    """One entry's key and kind; its values are checked by :func:`_check_values`."""
    key, sep, text = entry.partition("=")
    key = key.strip()
    if not sep or not key or not text.strip():
        raise ConfigError(
            f"--space {entry}: expected key=low:high[:log] or key=a,b,c, "
            "e.g. train.lr=1e-5:1e-3:log or adapter.r=8,16,32"
        )
    field = _field(key, entry)
    if key in RESERVED:
        raise ConfigError(f"--space {entry}: {key} is set by the search ({RESERVED[key]})")
    values = _split_choices(text)
    if len(values) > 1:
        return Param(key, "categorical", entry, choices=tuple(_choice(key, v) for v in values))
    match = _RANGE.match(text.strip())
    if not match:
        raise ConfigError(
            f"--space {entry}: one value is no search; give a range "
            f"({key}=LOW:HIGH, or LOW:HIGH:log) or choices ({key}=A,B)"
        )
    low, high = (parse_override(f"{key}={match[b]}")[1] for b in ("low", "high"))
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in (low, high)):
        raise ConfigError(f"--space {entry}: a range needs numbers, e.g. {key}=1e-5:1e-3")
    is_int = _is_int(field.annotation) or all(isinstance(v, int) for v in (low, high))
    if is_int and not all(float(v).is_integer() for v in (low, high)):
        raise ConfigError(f"--space {entry}: {key} is a whole number; give whole bounds")
    kind: Literal["float", "int"] = "int" if is_int else "float"
    return Param(key, kind, entry, low, high, log=bool(match["log"]))


def _field(key: str, entry: str) -> Any:
    """The :class:`RunConfig` field ``key`` (``"train.lr"``) names, or a ConfigError."""
    model: type[BaseModel] = RunConfig
    *sections, leaf = key.split(".")
    for name in sections:
        kind = model.model_fields[name].annotation if name in model.model_fields else None
        if not _is_section(kind):
            break
        model = kind
    else:
        found = model.model_fields.get(leaf) if sections else None
        if found is not None and not _is_section(found.annotation):
            return found
    raise ConfigError(
        f"--space {entry}: {key} is not a setting of chattune train; a key is "
        f"SECTION.FIELD, SECTION one of {', '.join(RunConfig.model_fields)} "
        "(e.g. train.lr, adapter.r; `chattune train --help` lists them)"
    )


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_int(annotation: Any) -> bool:
    """True for ``int`` and ``int | None``: a field a float range would break."""
    kinds = set(typing.get_args(annotation)) - {type(None)}
    return (kinds or {annotation}) == {int}


def _split_choices(text: str) -> list[str]:
    """``"8,16,32"`` -> ``["8", "16", "32"]``; commas inside ``[...]`` or ``{...}`` stay."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _choice(key: str, text: str) -> Any:
    """One categorical value as Optuna can store it: a scalar, or the text of a list."""
    value = parse_override(f"{key}={text}")[1]
    return value if value is None or isinstance(value, str | int | float | bool) else text


def _check_values(param: Param, base: RunConfig) -> list[str]:
    """Problems of ``param``'s values: bounds out of order, or values the config rejects."""
    problems = []
    if param.kind != "categorical":
        if param.low >= param.high:
            problems.append(f"--space {param.entry}: low must be below high")
        if param.log and param.low <= 0:
            problems.append(f"--space {param.entry}: a log range needs low > 0")
    values = param.choices if param.kind == "categorical" else (param.low, param.high)
    for value in values:
        try:
            with_values(base, {param.name: param.decode(value)})
        except ConfigError as e:
            why = "; ".join(line.strip() for line in str(e).splitlines()[1:]) or str(e)
            problems.append(f"--space {param.entry}: {value!r} is rejected: {why}")
    return problems


def with_values(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """``base`` with the dotted fields of ``values`` replaced, validated again.

    Example:
        >>> with_values(RunConfig(), {"train.lr": 1e-3}).train.lr
        0.001
    """
    return build_config(flags={**base.model_dump(mode="json"), **values})
