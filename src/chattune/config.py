"""Configuration: one small model per concern, mapped 1:1 to YAML sections.

A run is configured in three layers, later ones winning::

    defaults  <  --config run.yaml  <  named flags (--lr 1e-4)  <  dotted overrides (train.lr=1e-4)

Unknown keys are errors, and every problem is reported at once, naming the field (and the
flag that sets it). The resolved config is written as ``config.yaml`` beside every checkpoint
and output, so a run can always be reproduced.

We use pydantic models rather than plain dataclasses (as STYLE.md suggests): they give the
same declarative shape plus type coercion from YAML/CLI strings and error collection for
free, which is exactly the hand-written part litgpt's ``args.py`` has to carry itself.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from chattune.data.render import MaskPolicy
from chattune.errors import ConfigError

Method = Literal["lora", "adalora", "ia3", "freeze", "full"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which pretrained model to start from."""

    base: str = Field(
        "smollm2-135m-instruct",
        description="embedded model name, a local Hugging Face folder, or a .gguf file",
    )
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    trust_remote_code: bool = Field(False, description="run model code shipped with a folder")


class DataConfig(_Section):
    """Where the data is and how it becomes tokens."""

    train: list[str] = Field(default_factory=list)
    val: list[str] = Field(default_factory=list)
    val_split: float = Field(0.0, ge=0.0, lt=1.0, description="hold out this share of train")
    format: Literal["auto", "messages", "sharegpt", "csv", "dailydialog", "text"] = "auto"
    objective: Literal["chat", "lm"] = Field("chat", description="lm: continued pre-training")
    max_len: int = Field(1024, ge=8, description="tokens per example; oldest turns are dropped")
    mask: MaskPolicy = MaskPolicy.ASSISTANT
    block_size: int = Field(512, ge=16, description="packed block length for objective=lm")

    @model_validator(mode="after")
    def _one_validation_source(self) -> DataConfig:
        if self.val and self.val_split:
            raise ValueError("give either data.val (--val-data) or data.val_split, not both")
        return self


class AdapterConfig(_Section):
    """What is trained: an adapter (peft), the top layers, or everything."""

    method: Method = "lora"
    r: int = Field(16, ge=1, description="LoRA rank (AdaLoRA: initial rank)")
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="adapter dropout")
    target_modules: str | list[str] = Field("all-linear", description="modules to adapt")
    adalora_target_r: int = Field(8, ge=1, description="AdaLoRA: average final rank")
    train_layers: int = Field(2, ge=0, description="freeze: how many top blocks to train")
    train_head: bool = Field(True, description="freeze: also train the output head")


class TrainConfig(_Section):
    """The optimisation loop."""

    output: str = "runs/chattune"
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    optimizer: Literal["adamw", "sgd", "lamb"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd momentum")
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16 = bf16 autocast over fp32 weights; auto picks bf16 on CPUs "
        "with native bf16 support",
    )
    eval_every: int = Field(0, ge=0, description="steps between evaluations; 0: only at the end")
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
    resume: bool = False
    progress: bool = True
    gradient_checkpointing: bool = False


class RunConfig(_Section):
    """Everything ``chattune train`` needs."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


#: Named CLI flags and the field each one sets (errors name both).
FLAGS: dict[str, str] = {
    "--data": "data.train",
    "--val-data": "data.val",
    "--val-split": "data.val_split",
    "--format": "data.format",
    "--objective": "data.objective",
    "--max-len": "data.max_len",
    "--mask": "data.mask",
    "--base": "model.base",
    "--method": "adapter.method",
    "--output": "train.output",
    "--epochs": "train.epochs",
    "--max-steps": "train.max_steps",
    "--lr": "train.lr",
    "--batch-size": "train.batch_size",
    "--eval-every": "train.eval_every",
    "--save-every": "train.save_every",
    "--patience": "train.patience",
    "--eval-generate": "train.eval_generate",
    "--seed": "train.seed",
    "--resume": "train.resume",
}
_FIELD_TO_FLAG = {v: k for k, v in FLAGS.items()}


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
    except yaml.YAMLError as e:
        raise ConfigError(f"{flag} {p}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{flag} {p}: expected a mapping of keys to values")
    return tree


def build_config(
    yaml_path: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig:
    """Merge the three layers and validate once, reporting every problem together.

    Args:
        yaml_path: a YAML file with sections ``model``, ``data``, ``adapter``, ``train``.
        flags: dotted field -> value for named flags the user actually gave.
        overrides: ``key=value`` strings, applied last.

    Example:
        >>> build_config(overrides=["train.lr=1e-3"]).train.lr
        0.001
    """
    tree = load_yaml(yaml_path) if yaml_path else {}
    for key, value in (flags or {}).items():
        _set_dotted(tree, key, value)
    for text in overrides or []:
        _set_dotted(tree, *parse_override(text))
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def format_validation_error(error: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"])
        flag = _FIELD_TO_FLAG.get(field)
        where = f"{field} ({flag})" if flag else field
        msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        got = "" if item["type"] == "extra_forbidden" else f" (got {item.get('input')!r})"
        lines.append(f"  {where}: {msg}{got}")
    return "\n".join(lines)


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML, loadable again with ``--config``."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
