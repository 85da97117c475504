"""Configuration: pydantic models mapped 1:1 to YAML, and the machinery every command uses.

A command is configured in four layers, later ones winning::

    defaults  <  --config run.yaml  <  named flags (--lr 1e-4)  <  dotted overrides (train.lr=1e-4)

:func:`load_config` merges the layers into one tree and validates it once against the
command's model: unknown keys are errors, and every problem is reported together, naming
the field and the flag that sets it (``train.lr (--lr): Input should be a valid number``).
This module knows no command: each one brings its model and its flag table (``cli/``).

The sections of ``chattune train`` (:class:`RunConfig`) live here because ``train/`` and
``model/`` read them. The resolved config is written as ``config.yaml`` beside every
checkpoint and output, so a run can always be reproduced.

We use pydantic models rather than plain dataclasses (as STYLE.md suggests): they give the
same declarative shape plus type coercion from YAML/CLI strings and error collection for
free, which is exactly the hand-written part litgpt's ``args.py`` has to carry itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chattune.data.render import MaskPolicy
from chattune.errors import ConfigError

Method = Literal["lora", "adalora", "ia3", "freeze", "full"]


DataFormat = Literal["auto", "messages", "sharegpt", "csv", "dailydialog", "text"]
M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """Base of every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FieldProblem(ValueError):
    """A cross-field check that blames one field: raise it from a ``model_validator``.

    Reported like a field error, with the field's flag (``data (--data): required``). The
    field is relative to the model that raises it.

    Example:
        >>> raise FieldProblem("data", "required unless --ratings is given")  # doctest: +SKIP
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ModelConfig(Section):
    """Which pretrained model to start from."""

    base: str = Field(
        "smollm2-135m-instruct",
        description="embedded model name, a local Hugging Face folder, or a .gguf file",
    )
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    trust_remote_code: bool = Field(False, description="run model code shipped with a folder")
    adapter: str | None = Field(
        None,
        min_length=1,
        description="continue training this adapter (a chattune output folder trained on "
        "model.base) instead of a new one; adapter.* then come from the folder",
    )


class DataConfig(Section):
    """Where the data is and how it becomes tokens."""

    train: list[str] = Field(default_factory=list)
    val: list[str] = Field(default_factory=list)
    val_split: float = Field(0.0, ge=0.0, lt=1.0, description="hold out this share of train")
    format: DataFormat = Field("auto", description="auto: from the extension and first record")
    objective: Literal["chat", "lm", "preference"] = Field(
        "chat",
        description="lm: continued pre-training; preference: DPO on prompt/chosen/rejected pairs",
    )
    max_len: int = Field(1024, ge=8, description="tokens per example; oldest turns are dropped")
    mask: MaskPolicy = Field(MaskPolicy.ASSISTANT, description="which turns carry the loss")
    block_size: int = Field(512, ge=16, description="packed block length for objective=lm")
    chat_template: str | None = Field(
        None,
        min_length=1,
        description="a Jinja chat template (inline, or the path of a .jinja file) to use "
        "instead of the tokenizer's: for models with none, or one that is not prefix-stable",
    )
    kb: str | None = Field(
        None,
        min_length=1,
        description="knowledge base folder (chattune kb add): train each assistant turn on "
        "the grounded prompt the chat engine builds with it (docs/training.md)",
    )
    kb_profile: str | None = Field(
        None,
        min_length=1,
        description="with data.kb: the bot profile YAML serving uses (system prompt, few-shot "
        "examples, knowledge settings); unset: the default profile",
    )
    kb_distractors: int | None = Field(
        None,
        ge=0,
        description="with data.kb: retrieved non-gold passages kept beside the gold one; "
        "unset: as many as the profile's knowledge.k leaves (k - 1)",
    )
    kb_no_gold_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="with data.kb: share of the turns with a known source trained with the "
        "gold passage removed and the profile's no_answer reply as the target",
    )
    kb_shuffle: bool = Field(
        False,
        description="with data.kb: show each turn's passages in a seeded random order, so "
        "the gold one is not mostly at [1] as retrieval ranks it",
    )
    kb_counterfactual: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="with data.kb: share of the turns whose reply repeats numbers of its gold "
        "passage trained with those numbers changed in both, so the model learns to copy "
        "them from the passage, not to recall them",
    )
    kb_cite: bool = Field(
        True,
        description="with data.kb: add the gold passage's citation [n] to replies that "
        "name their source and cite nothing",
    )

    @model_validator(mode="after")
    def _one_validation_source(self) -> DataConfig:
        if self.val and self.val_split:
            raise FieldProblem(
                "val_split", "give either data.val (--val-data) or data.val_split, not both"
            )
        return self

    @model_validator(mode="after")
    def _kb_options(self) -> DataConfig:
        # Values, not model_fields_set: a saved config.yaml spells out every default.
        fields = type(self).model_fields
        given = [f for f in fields if f.startswith("kb_") and getattr(self, f) != fields[f].default]
        if self.kb is None and given:
            raise FieldProblem(given[0], "needs data.kb (--kb DIR)")
        if self.kb is not None and self.objective != "chat":
            raise FieldProblem("kb", "grounded fine-tuning trains replies: data.objective=chat")
        if self.kb is not None and self.mask is MaskPolicy.ALL:
            raise FieldProblem("mask", "with data.kb the loss is on each reply: assistant or last")
        return self


class AdapterConfig(Section):
    """What is trained: an adapter (peft), the top layers, or everything."""

    method: Method = Field("lora", description="what is trained")
    r: int = Field(16, ge=1, description="LoRA rank (AdaLoRA: initial rank)")
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="adapter dropout")
    target_modules: str | list[str] = Field("all-linear", description="modules to adapt")
    adalora_target_r: int = Field(8, ge=1, description="AdaLoRA: average final rank")
    train_layers: int = Field(2, ge=0, description="freeze: how many top blocks to train")
    train_head: bool = Field(True, description="freeze: also train the output head")


class TrainConfig(Section):
    """The optimisation loop."""

    output: str = Field("runs/chattune", description="folder for the result and checkpoints")
    epochs: float | None = Field(
        None,
        gt=0,
        description="passes over the training data; unset: enough for about 100 optimizer "
        "steps, 1 to 3 (docs/training.md, Defaults)",
    )
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(8, ge=1, description="examples per step")
    grad_accum: int = Field(1, ge=1)
    lr: float | None = Field(
        None,
        gt=0,
        description="peak learning rate; unset: by method (lora/adalora 1e-3, ia3 3e-3, "
        "freeze 1e-4, full 2e-5)",
    )
    optimizer: Literal["adamw", "sgd", "lamb"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = Field(42, description="seeds shuffling, dropout and initialisation")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16 = bf16 autocast over fp32 weights; auto picks bf16 on CPUs "
        "with native bf16 support",
    )
    eval_every: int | None = Field(
        None,
        ge=0,
        description="steps between evaluations; 0: only at the end; unset: 8 in a run with "
        "validation data (the best weights are the result)",
    )
    save_every: int = Field(0, ge=0, description="steps between checkpoints; 0: only at the end")
    patience: int = Field(0, ge=0, description="early stopping after N evals without gain")
    eval_generate: int = Field(
        0,
        ge=0,
        description="at each evaluation, also generate replies for N validation turns "
        "and log BLEU/ROUGE/F1/distinct-n",
    )
    min_delta: float = Field(0.0, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(1, ge=1)
    resume: bool = Field(False, description="continue from the newest complete checkpoint")
    resume_force: bool = Field(
        False,
        description="resume even if the saved run's batches differ (batch size, number of "
        "processes, data)",
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="trackers that receive the metrics besides metrics.jsonl (wandb runs "
        "offline unless WANDB_MODE says otherwise; mlflow writes to MLFLOW_TRACKING_URI or "
        "sqlite:///OUTPUT/mlflow.db)",
    )
    progress: bool = True
    gradient_checkpointing: bool = False
    compile: bool = Field(
        False,
        description="compile each decoder layer with torch.compile (inductor; needs a C++ "
        "compiler on CPUs): about a minute up front, then faster steps (docs/training.md)",
    )
    anchor: Literal["none", "l2sp", "ewc"] = Field(
        "none",
        description="pull the trained weights toward where training started: l2sp (plain "
        "squared distance) or ewc (weighted by a Fisher estimate from train.anchor_data)",
    )
    anchor_weight: float = Field(1.0, ge=0, description="strength of train.anchor")
    dpo_beta: float = Field(
        0.1,
        gt=0,
        le=10,
        description="data.objective=preference: DPO's beta (how far from "
        "the starting model the preferences may pull)",
    )
    anchor_data: list[str] = Field(
        default_factory=list,
        description="ewc: conversations whose Fisher information weights the anchor "
        "(default: the training data)",
    )
    anchor_batches: int = Field(16, ge=1, description="ewc: batches for the Fisher estimate")


class RunConfig(Section):
    """Everything ``chattune train`` needs."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``train.lr=2e-4`` into a dotted key and a YAML-parsed value.

    Example:
        >>> parse_override("train.lr=2e-4")
        ('train.lr', 0.0002)
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.lr=2e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML reads 2e-4 as a string; numbers should stay numbers
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value for c in ".eE") else int(value)
    return key.strip(), value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} is a value, not a section")
        node = child
    node[leaf] = value


def load_yaml(path: str | Path, flag: str = "--config") -> dict[str, Any]:
    """A YAML mapping from ``path``; every failure is a :class:`ConfigError` naming ``flag``."""
    p = Path(path)
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{flag} {p}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{flag} {p}: a folder, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{flag} {p}: cannot read it as UTF-8 text: {e}") from None
    except OSError as e:  # permissions, a device, ...
        raise ConfigError(f"{flag} {p}: cannot read it: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{flag} {p}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{flag} {p}: expected a mapping of keys to values")
    return tree


def merge_layers(
    yaml_path: str | Path | None = None,
    given: Mapping[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """One tree from the layers above the defaults: YAML, then named flags, then overrides.

    Example:
        >>> merge_layers(given={"train.lr": 1e-3}, overrides=["train.lr=2e-4", "data.mask=last"])
        {'train': {'lr': 0.0002}, 'data': {'mask': 'last'}}
    """
    tree = load_yaml(yaml_path) if yaml_path else {}
    for key, value in (given or {}).items():
        _set_dotted(tree, key, value)
    for text in overrides or []:
        _set_dotted(tree, *parse_override(text))
    return tree


def load_config(
    model: type[M],
    yaml_path: str | Path | None = None,
    given: Mapping[str, Any] | None = None,
    overrides: list[str] | None = None,
    flag_table: Mapping[str, str] | None = None,
) -> M:
    """Merge the layers and validate once against ``model``, reporting every problem together.

    Args:
        model: the command's config model (sections are nested models).
        yaml_path: a YAML file whose keys are ``model``'s fields.
        given: dotted field -> value, for the named flags the user actually gave.
        overrides: ``key=value`` strings, applied last.
        flag_table: flag -> dotted field, so that errors name the flag too.

    Raises:
        ConfigError: naming each bad field (and its flag), all at once.

    Example:
        >>> load_config(RunConfig, overrides=["train.lr=1e-3"]).train.lr
        0.001
    """
    tree = merge_layers(yaml_path, given, overrides)
    try:
        return model.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, flag_table)) from None


def build_config(
    yaml_path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """A :class:`RunConfig` from the layers (``flags``: dotted field -> value).

    Example:
        >>> build_config(overrides=["train.lr=1e-3"]).train.lr
        0.001
    """
    return load_config(RunConfig, yaml_path, flags, overrides)


def format_validation_error(
    error: ValidationError, flag_table: Mapping[str, str] | None = None
) -> str:
    """Every problem of ``error`` on its own line: ``field (flag): message (got value)``.

    Example:
        >>> try:
        ...     RunConfig.model_validate({"train": {"lr": "abc"}})
        ... except ValidationError as e:
        ...     print(format_validation_error(e, {"--lr": "train.lr"}))
        invalid configuration:
          train.lr (--lr): Input should be a valid number, unable to parse string as a number (got 'abc')
    """  # noqa: E501
    flag_of = {field: flag for flag, field in (flag_table or {}).items()}
    lines = ["invalid configuration:"]
    for item in error.errors():
        field, msg, got = _describe(item)
        flag = flag_of.get(field)
        where = f"{field} ({flag})" if flag else field
        lines.append(f"  {where}: {msg}" + ("" if got is None else f" (got {got!r})"))
    return "\n".join(lines)


def _describe(item: Any) -> tuple[str, str, Any]:
    """(dotted field, message, offending value or None) for one pydantic error."""
    loc = [str(p) for p in item["loc"]]
    problem = item.get("ctx", {}).get("error")
    if isinstance(problem, FieldProblem):
        return ".".join([*loc, problem.field]), problem.message, None
    field = ".".join(loc)
    if item["type"] == "extra_forbidden":
        return field, "unknown key", None
    if item["type"] == "missing":
        return field, "required", None
    if item["type"] == "too_short" and item["ctx"].get("min_length") == 1:
        return field, "required: give at least one", None
    if item["type"] == "value_error":  # a validator's own words; a model's input is a tree
        value = item.get("input")
        return field, str(problem), None if isinstance(value, dict) else value
    return field, item["msg"], item.get("input")


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML, loadable again with ``--config``."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
