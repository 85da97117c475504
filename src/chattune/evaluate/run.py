"""``chattune eval``: score one model, or two side by side, on held-out conversations, and
with a knowledge base on question files: grounded answers (see :mod:`.grounded`)."""

from __future__ import annotations

import json
import logging
from collections import Counter
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
from chattune.evaluate.grounded import (
    GroundedRecord,
    RecordingEngine,
    format_grounded,
    grounded_deltas,
    grounded_summary,
    retrieval_hits,
    score_reply,
)
from chattune.evaluate.languages import Language, resolve_language
from chattune.evaluate.perplexity import reference_losses
from chattune.evaluate.questions import GroundedQuestion, is_question_file, read_grounded_questions
from chattune.evaluate.scoring import (
    LOWER_IS_BETTER,
    METRIC_KEYS,
    Record,
    aggregate,
    bootstrap_deltas,
    make_records,
)
from chattune.knowledge.grounding import Knowledge
from chattune.model.generation import Generated

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
    #: ground every reply in this knowledge base, as ``chat --kb`` does; question files in
    #: ``data`` are then scored for grounded answers (facts, citations, "don't know")
    knowledge: Knowledge | None = None


@dataclass
class ModelResult:
    name: str
    metrics: dict[str, float] | None  # None: no example had a reference reply
    records: list[Record]
    backend: str  # what generated the replies
    grounded: list[GroundedRecord] = field(default_factory=list)


@dataclass
class EvalData:
    """What is evaluated: turns with a reference reply (the dialogue metrics) and, with a
    knowledge base, questions with gold facts and sources (the grounded rates)."""

    examples: list[TurnExample]
    questions: list[GroundedQuestion] = field(default_factory=list)

    def turns(self) -> list[TurnExample]:
        """Every conversation to answer, once: the examples, then the questions that are
        not already examples (a question with a reference reply is both)."""
        seen = {e.id for e in self.examples}
        return self.examples + [q.turn() for q in self.questions if q.id not in seen]


def load_examples(files: list[str], limit: int | None) -> list[TurnExample]:
    examples = turn_examples(read_many(files), limit)
    if not examples:
        raise DataError([f"{', '.join(files)}: no assistant turns to evaluate"])
    return examples


def load_data(files: list[str], limit: int | None, grounded: bool) -> EvalData:
    """Conversations and, when ``grounded``, question files (told apart by their rows);
    at most ``limit`` turns and ``limit`` questions."""
    asked = [f for f in files if is_question_file(f)]
    if asked and not grounded:
        raise DataError([f"--data {f}: a question file (rows with 'question') is scored "
                         "against a knowledge base: add --kb DIR" for f in asked])  # fmt: skip
    conversations = [f for f in files if f not in asked]
    examples = load_examples(conversations, limit) if conversations else []
    questions = [q for f in asked for q in read_grounded_questions(f)][:limit]
    ids = Counter(q.id for q in questions)
    if repeated := [i for i, n in ids.items() if n > 1]:
        raise DataError([f"question id {i!r} is used {ids[i]} times" for i in repeated])
    examples += [q.turn() for q in questions if q.reference is not None]
    return EvalData(examples, questions)


def evaluate_model(
    spec: str,
    data: EvalData,
    settings: EvalSettings,
    language: Language,
    retrieval: dict[str, bool | None] | None = None,
) -> ModelResult:
    """Perplexity of the references, then generated replies scored against them in
    ``language``'s words, and the questions' replies against their gold facts and sources
    (``retrieval``: whether retrieval alone found each one's gold passage)."""
    from chattune.model.loading import load_model

    model, tokenizer = load_model(spec)
    examples = data.examples
    losses = reference_losses(model, tokenizer, examples, settings.max_len, settings.batch_size)
    name = backend_name(spec, settings.backend)
    if name == "transformers":
        backend: Any = TransformersBackend(model, tokenizer)
    else:
        del model  # the replies come from elsewhere: free the memory first
        backend = open_backend(spec, settings.backend)
    kind = RecordingEngine if settings.knowledge is not None else ChatEngine
    engine = kind(backend, settings.profile, settings.knowledge)
    try:
        replies = _generate(engine, data.turns(), settings, spec)
    finally:
        backend.close()  # a llama.cpp worker would otherwise live on beside the next model's
    records: list[Record] = []
    if examples:
        records = make_records(
            [e.id for e in examples],
            [e.reference for e in examples],
            [replies[e.id].text for e in examples],
            [replies[e.id].stopped for e in examples],
            losses,
            language,
        )
    metrics = aggregate(records) if records else None
    grounded = _score_questions(engine, data.questions, replies, retrieval or {})
    return ModelResult(spec, metrics, records, name, grounded)


def _generate(
    engine: ChatEngine, turns: list[TurnExample], settings: EvalSettings, spec: str
) -> dict[str, Generated]:
    """The engine's reply to every turn, by the turn's id."""
    options, batch = settings.profile.generation, settings.batch_size
    replies = generate_replies(engine, turns, options, batch, settings.progress, f"generate {spec}")
    return {t.id: r for t, r in zip(turns, replies, strict=True)}


def _score_questions(
    engine: ChatEngine,
    questions: list[GroundedQuestion],
    replies: dict[str, Generated],
    retrieval: dict[str, bool | None],
) -> list[GroundedRecord]:
    """Each question's reply scored with the decision (and so the sources) it was given."""
    if not isinstance(engine, RecordingEngine):
        return []
    no_answer = engine.knowledge.settings.no_answer if engine.knowledge else ""
    return [
        score_reply(q, replies[q.id], engine.decisions[q.history], no_answer, retrieval.get(q.id))
        for q in questions
    ]


def evaluate_models(settings: EvalSettings) -> dict[str, Any]:
    """The whole evaluation as a JSON-ready dict (the ``--json`` file; keys in docs)."""
    for spec in filter(None, (settings.model, settings.compare)):
        check(spec, settings.backend)  # a bad model fails now, not after the first has run
    data = load_data(settings.data, settings.max_examples, settings.knowledge is not None)
    texts = [e.reference for e in data.examples] or [q.text for q in data.questions]
    language = resolve_language(settings.lang, texts)
    log.info("measuring in %s (BLEU tokenizer %s)", language.code, language.bleu_tokenize)
    retrieval = retrieval_hits(settings.knowledge, data.questions) if settings.knowledge else {}
    main = evaluate_model(settings.model, data, settings, language, retrieval)
    result: dict[str, Any] = {
        "model": main.name,
        "data": settings.data,
        "n_examples": len(data.examples),
        "profile": settings.profile.name,
        "generation": settings.profile.generation.model_dump(),
        "backend": main.backend,
        "lang": language.describe(),
        "metrics": main.metrics,
        "per_example": [r.public() for r in main.records],
        "examples": [[m.as_dict() for m in e.history] for e in data.examples],
    }
    if settings.knowledge is not None and data.questions:
        result["grounded"] = {**_kb_settings(settings.knowledge), **grounded_summary(main.grounded)}
    if settings.compare:
        other = evaluate_model(settings.compare, data, settings, language, retrieval)
        result["compare"] = _compare(main, other, settings.bootstrap)
    return result


def _kb_settings(knowledge: Knowledge) -> dict[str, Any]:
    """Which knowledge base answered, and how many passages of which retrieval mode."""
    s = knowledge.settings
    return {"kb": str(knowledge.retriever.kb.folder), "k": s.k, "mode": s.mode}


def _compare(main: ModelResult, other: ModelResult, samples: int) -> dict[str, Any]:
    """The ``compare`` block: the second model's metrics and ``main - other`` with paired
    bootstrap intervals, for the dialogue metrics and the grounded rates."""
    block: dict[str, Any] = {
        "model": other.name,
        "backend": other.backend,
        "metrics": other.metrics,
        "per_example": [r.public() for r in other.records],
    }
    if main.metrics is not None and other.metrics is not None:
        intervals = bootstrap_deltas(other.records, main.records, samples)
        block["delta"] = {
            k: {"delta": main.metrics[k] - other.metrics[k], "ci95": list(intervals[k])}
            for k in METRIC_KEYS
        }
    if main.grounded:
        block["grounded"] = grounded_summary(other.grounded)
        block["grounded"]["delta"] = grounded_deltas(main.grounded, other.grounded, samples)
    return block


def format_table(result: dict[str, Any]) -> str:
    """The terminal table: one row per metric, models side by side, delta and 95% CI; then
    the grounded rates, if questions were asked with a knowledge base."""
    cmp = result.get("compare")
    names = [result["model"], *([cmp["model"]] if cmp else [])]
    width = max(14, *(len(n) for n in names)) + 2
    head = f"{'metric':<16}" + "".join(f"{n:>{width}}" for n in names)
    lines = [head + (f"{'delta':>10}  95% CI (bootstrap)" if cmp else "")]
    for key in METRIC_KEYS if result["metrics"] is not None else ():
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
    if "grounded" in result:
        lines += format_grounded(result, width)
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
        for block in (out, out.get("compare", {})):
            if "grounded" in block:
                block["grounded"] = _without_records(block["grounded"])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n")


def _without_records(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "per_example"}
