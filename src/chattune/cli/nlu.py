"""``chattune nlu <verb>``: train, evaluate and try an intent classifier with the entity and
sentiment analysis around it. The nlu package computes; these commands print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from chattune.cli.command import Command
from chattune.config import FieldProblem, Section
from chattune.errors import ConfigError
from chattune.nlu.settings import IntentTraining


class NluTrainConfig(Section):
    """``chattune nlu train``: examples in, a classifier folder out."""

    data: str | None = Field(None, description="intents file: text,intent (CSV, TSV or JSONL)")
    output: str = Field(min_length=1, description="folder to write the classifier to")
    validation: str | None = Field(None, description="held-out intents file (default: a split)")
    descriptions: str | None = Field(
        None, description="YAML with intents: {name: description} (zero-shot)"
    )
    training: IntentTraining = Field(default_factory=IntentTraining)

    @model_validator(mode="after")
    def _something_to_learn_from(self) -> NluTrainConfig:
        if not self.data and not self.descriptions:
            raise FieldProblem("data", "required: examples (or --descriptions for zero-shot)")
        return self


class NluEvalConfig(Section):
    """``chattune nlu eval``: a classifier on held-out examples."""

    model: str = Field(min_length=1, description="classifier folder (chattune nlu train)")
    data: str = Field(min_length=1, description="intents file with held-out examples")
    profile: str | None = Field(None, description="bot profile whose nlu section to use")
    min_confidence: float | None = Field(
        None, ge=0, le=1, description="instead of the calibrated threshold"
    )
    bootstrap: int = Field(1000, ge=0, le=100_000, description="resamples for the 95% interval")
    json_file: str | None = Field(None, description="write the scores to this JSON file")
    report: str | None = Field(None, description="write a Markdown report (and a PNG beside it)")


class NluPredictConfig(Section):
    """``chattune nlu predict``: what the NLU says about each message."""

    model: str | None = Field(None, description="classifier folder (none: entities, sentiment)")
    texts: list[str] = Field(default_factory=list, description="messages (default: stdin lines)")
    profile: str | None = Field(None, description="bot profile whose nlu section to use")


def _nlu(model: str | None, profile: str | None, min_confidence: float | None = None) -> Any:
    from chattune.chat.profile import load_profile
    from chattune.model.loading import quiet_transformers
    from chattune.nlu.pipeline import NLU

    quiet_transformers()
    settings = load_profile(profile).nlu
    update = {"model": model or settings.model}
    if min_confidence is not None:
        update["min_confidence"] = min_confidence
    return NLU(settings.model_copy(update=update))


def _descriptions(path: str | None) -> dict[str, str] | None:
    if path is None:
        return None
    from chattune.config import load_yaml

    tree = load_yaml(path, "--descriptions")
    intents = tree.get("intents")
    if not isinstance(intents, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in intents.items()
    ):
        raise ConfigError(
            f"--descriptions {path}: expected 'intents:' mapping each intent name to a description"
        )
    return intents


def cmd_train(cfg: NluTrainConfig) -> int:
    """Train an intent classifier (fine-tuned encoder, SetFit few-shot, or zero-shot from
    descriptions) and calibrate its out-of-scope threshold on held-out examples."""
    from chattune.model.loading import quiet_transformers
    from chattune.nlu.data import counts, read_intents
    from chattune.nlu.train import train_intents

    quiet_transformers()
    examples = read_intents(cfg.data) if cfg.data else []
    validation = read_intents(cfg.validation) if cfg.validation else None
    descriptions = _descriptions(cfg.descriptions)
    n = counts(examples)
    if n:
        print(f"{len(examples)} examples, {len(n)} intents (fewest: {min(n.values())})")
    model = train_intents(examples, Path(cfg.output), cfg.training, descriptions, validation)
    how = model.manifest["calibration"]
    print(
        f"regime {model.regime}; threshold {model.threshold:.3f} ({how['method']}, "
        f"{how['examples']} held-out examples; validation accuracy "
        f"{how['validation_accuracy']:.3f}); {model.manifest['train_seconds']} s"
    )
    print(f"wrote {cfg.output}")
    return 0


def cmd_eval(cfg: NluEvalConfig) -> int:
    """Score a classifier on held-out examples: accuracy, macro-F1, per-intent precision and
    recall, entities per type, latency; optionally a JSON file and a Markdown report."""
    from chattune.nlu.data import read_intents
    from chattune.nlu.evaluate import confusion_plot, evaluate_nlu, markdown_report

    examples = read_intents(cfg.data)
    result = evaluate_nlu(_nlu(cfg.model, cfg.profile, cfg.min_confidence), examples, cfg.bootstrap)
    print(markdown_report(result))
    if cfg.json_file:
        Path(cfg.json_file).write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(f"wrote {cfg.json_file}")
    if cfg.report:
        report = Path(cfg.report)
        image = confusion_plot(result, report.with_suffix(".png"))
        report.write_text(markdown_report(result, image.name), encoding="utf-8")
        print(f"wrote {report}, {image}")
    return 0


def cmd_predict(cfg: NluPredictConfig) -> int:
    """Print one JSON line per message: intent, confidence, entities, sentiment."""
    from chattune.data.types import Message

    nlu = _nlu(cfg.model, cfg.profile)
    texts = cfg.texts or (line.rstrip("\n") for line in sys.stdin)
    for text in texts:
        if text.strip():
            print(json.dumps(nlu.analyze([Message("user", text)]).as_dict(), ensure_ascii=False))
    return 0


TRAIN = Command(
    "nlu train",
    NluTrainConfig,
    {
        "--data": "data",
        "--output": "output",
        "--validation": "validation",
        "--descriptions": "descriptions",
        "--regime": "training.regime",
        "--encoder": "training.encoder",
        "--epochs": "training.epochs",
        "--seed": "training.seed",
    },
    cmd_train,
)
EVAL = Command(
    "nlu eval",
    NluEvalConfig,
    {
        "--model": "model",
        "--data": "data",
        "--profile": "profile",
        "--min-confidence": "min_confidence",
        "--bootstrap": "bootstrap",
        "--json": "json_file",
        "--report": "report",
    },
    cmd_eval,
)
PREDICT = Command(
    "nlu predict",
    NluPredictConfig,
    {"TEXT": "texts", "--model": "model", "--profile": "profile"},
    cmd_predict,
)
COMMANDS = [TRAIN, EVAL, PREDICT]
