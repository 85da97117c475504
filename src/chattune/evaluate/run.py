"""``chattune eval``: score one model, or two side by side, on held-out conversations."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chattune.backends.registry import BackendSettings, backend_name, check, open_backend
from chattune.backends.transformers import TransformersBackend
from chattune.chat.engine import ChatEngine
from chattune.chat.profile import BotProfile
from chattune.data.readers import read_many
from chattune.errors import DataError
from chattune.evaluate.examples import TurnExample, turn_examples
from chattune.evaluate.generation import generate_replies
from chattune.evaluate.languages import Language, resolve_language
from chattune.evaluate.perplexity import reference_losses
from chattune.evaluate.scoring import (
    LOWER_IS_BETTER,
    METRIC_KEYS,
    Record,
    aggregate,
    bootstrap_deltas,
    make_records,
)

log = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    """What ``chattune eval`` was asked to do (the CLI fills this from its flags)."""

    model: str
    data: list[str]
    compare: str | None = None
    max_examples: int | None = None
    max_len: int = 1024
    batch_size: int = 8
    bootstrap: int = 1000
    #: who the bot is (system prompt, stop strings, how replies are generated), as when
    #: serving; generation flags are already applied to ``profile.generation``
    profile: BotProfile = field(default_factory=BotProfile)
    #: what generates the replies; perplexity is always transformers' (float32; for a GGUF
    #: file, its dequantized weights), so it compares across backends
    backend: BackendSettings = field(default_factory=BackendSettings)
    #: the replies' language code (BLEU tokenizer, ROUGE/F1/distinct words), or ``auto`` to
    #: detect it from the references
    lang: str = "auto"
    progress: bool = True


@dataclass
class ModelResult:
    name: str
    metrics: dict[str, float]
    records: list[Record]
    backend: str  # what generated the replies


def load_examples(files: list[str], limit: int | None) -> list[TurnExample]:
    examples = turn_examples(read_many(files), limit)
    if not examples:
        raise DataError([f"{', '.join(files)}: no assistant turns to evaluate"])
    return examples


def evaluate_model(
    spec: str, examples: list[TurnExample], settings: EvalSettings, language: Language
) -> ModelResult:
    """Perplexity of the references, then generated replies scored against them in
    ``language``'s words."""
    from chattune.model.loading import load_model

    model, tokenizer = load_model(spec)
    losses = reference_losses(model, tokenizer, examples, settings.max_len, settings.batch_size)
    name = backend_name(spec, settings.backend)
    if name == "transformers":
        backend: Any = TransformersBackend(model, tokenizer)
    else:
        del model  # the replies come from elsewhere: free the memory first
        backend = open_backend(spec, settings.backend)
    engine = ChatEngine(backend, settings.profile)
    try:
        replies = generate_replies(
            engine,
            examples,
            settings.profile.generation,
            settings.batch_size,
            settings.progress,
            desc=f"generate {spec}",
        )
    finally:
        backend.close()  # a llama.cpp worker would otherwise live on beside the next model's
    records = make_records(
        [e.id for e in examples],
        [e.reference for e in examples],
        [r.text for r in replies],
        [r.stopped for r in replies],
        losses,
        language,
    )
    return ModelResult(spec, aggregate(records), records, name)


def evaluate_models(settings: EvalSettings) -> dict[str, Any]:
    """The whole evaluation as a JSON-ready dict (the ``--json`` file; keys in docs)."""
    for spec in filter(None, (settings.model, settings.compare)):
        check(spec, settings.backend)  # a bad model fails now, not after the first has run
    examples = load_examples(settings.data, settings.max_examples)
    language = resolve_language(settings.lang, [e.reference for e in examples])
    log.info("measuring in %s (BLEU tokenizer %s)", language.code, language.bleu_tokenize)
    main = evaluate_model(settings.model, examples, settings, language)
    result: dict[str, Any] = {
        "model": main.name,
        "data": settings.data,
        "n_examples": len(examples),
        "profile": settings.profile.name,
        "generation": settings.profile.generation.model_dump(),
        "backend": main.backend,
        "lang": language.describe(),
        "metrics": main.metrics,
        "per_example": [r.public() for r in main.records],
        "examples": [[m.as_dict() for m in e.history] for e in examples],
    }
    if settings.compare:
        other = evaluate_model(settings.compare, examples, settings, language)
        intervals = bootstrap_deltas(other.records, main.records, settings.bootstrap)
        result["compare"] = {
            "model": other.name,
            "backend": other.backend,
            "metrics": other.metrics,
            "per_example": [r.public() for r in other.records],
            "delta": {
                k: {"delta": main.metrics[k] - other.metrics[k], "ci95": list(intervals[k])}
                for k in METRIC_KEYS
            },
        }
    return result


def format_table(result: dict[str, Any]) -> str:
    """The terminal table: one row per metric, models side by side, delta and 95% CI."""
    cmp = result.get("compare")
    names = [result["model"], *([cmp["model"]] if cmp else [])]
    width = max(14, *(len(n) for n in names)) + 2
    head = f"{'metric':<16}" + "".join(f"{n:>{width}}" for n in names)
    lines = [head + (f"{'delta':>10}  95% CI (bootstrap)" if cmp else "")]
    for key in METRIC_KEYS:
        row = f"{key:<16}{result['metrics'][key]:>{width}.3f}"
        if cmp:
            d = cmp["delta"][key]
            better = (d["delta"] < 0) == (key in LOWER_IS_BETTER)
            lo, hi = d["ci95"]
            mark = "*" if (lo > 0 or hi < 0) else " "
            row += f"{cmp['metrics'][key]:>{width}.3f}{d['delta']:>+10.3f}{mark}"
            row += f" [{lo:+.3f}, {hi:+.3f}]" + ("  better" if better and mark == "*" else "")
        lines.append(row)
    lines.append(f"{'n_examples':<16}{result['n_examples']:>{width}}")
    if "lang" in result:
        lines.append(_language_line(result["lang"]))
    if cmp:
        lines.append("* the 95% interval excludes 0 (delta = first model - second model)")
    return "\n".join(lines)


def _language_line(lang: dict[str, Any]) -> str:
    how = "detected from the references" if lang["detected"] else "--lang"
    stem = f", stemmer {lang['stemmer']}" if lang["stemmer"] else ""
    words = f"words {lang['words']}{stem}"
    return f"{'lang':<16}{lang['code']} ({how}; BLEU tokenizer {lang['bleu_tokenize']}, {words})"


def write_json(result: dict[str, Any], path: str | Path, per_example: bool) -> None:
    out = dict(result)
    if not per_example:
        out.pop("per_example", None)
        out.pop("examples", None)
        if "compare" in out:
            out["compare"] = {k: v for k, v in out["compare"].items() if k != "per_example"}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n")
