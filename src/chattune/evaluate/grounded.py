"""Grounded answers: given passages from the knowledge base, does the bot state the gold
facts, cite the passages that hold them, and say it does not know when none does?

Each question of a question file (:mod:`chattune.evaluate.questions`) is answered by the
chat engine with the knowledge base, exactly as when serving (routing, FAQ answers, the
"don't know" gate, the quoted context block). :class:`RecordingEngine` keeps the decision
behind each reply, so a reply's ``[n]`` is read against the sources *it* was shown.
:func:`score_reply` turns one reply into a :class:`GroundedRecord`; :func:`aggregate_grounded`
computes the rates from any subset of records, which is what the paired bootstrap of
``--compare`` resamples (:func:`~chattune.evaluate.scoring.bootstrap_deltas`).

Example:
    >>> from chattune.evaluate.questions import GroundedQuestion
    >>> from chattune.knowledge.retrieval_eval import Question
    >>> q = GroundedQuestion("q:1", Question("Is it far?", frozenset(), (), False))
    >>> r = score_reply(q, Generated("I don't know.", True, 4), None, "Sorry.", None)
    >>> r.declined, aggregate_grounded([r])["dont_know_rate"]
    ('phrase', 1.0)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from chattune.chat.engine import ChatEngine
from chattune.chat.routing import Decision
from chattune.data.types import Message
from chattune.evaluate.facts import Declined, declines, match_fact
from chattune.evaluate.questions import GroundedQuestion
from chattune.evaluate.scoring import bootstrap_deltas
from chattune.knowledge.grounding import Grounding, Knowledge, citations
from chattune.model.generation import Generated

#: The rates of the ``grounded`` block (0-1; documented in docs/evaluation.md).
GROUNDED_KEYS = (
    "fact_accuracy",
    "fact_recall",
    "citation_precision",
    "citation_recall",
    "citation_rate",
    "dont_know_rate",
    "false_dont_know_rate",
    "retrieval_hit",
    "gold_shown",
    "miss_model",
    "miss_retrieval",
)
GROUNDED_LOWER_IS_BETTER = {"false_dont_know_rate", "miss_model", "miss_retrieval"}
COUNT_KEYS = ("n_questions", "n_answerable", "n_unanswerable", "n_with_facts")


class RecordingEngine(ChatEngine):
    """The chat engine, remembering the decision (route, grounding) behind each reply.

    The engine decides once per reply; keeping that decision, rather than grounding the
    question a second time, guarantees the sources scored are the ones the reply was given.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decisions: dict[tuple[Message, ...], Decision] = {}

    def decide(self, history: list[Message]) -> Decision:
        decision = super().decide(history)
        self.decisions[tuple(history)] = decision
        return decision


@dataclass
class GroundedRecord:
    """One question's reply, scored. ``None`` where a score does not apply (no facts to
    match, an unanswerable question, nothing cited, no gold passage shown)."""

    id: str
    question: str
    answerable: bool
    reply: str
    stopped: bool
    route: str  # passages | faq | no_answer (the knowledge gate), or template | handoff | llm
    sources: list[dict[str, Any]]  # shown with the reply: index, source, ..., gold, cited
    cited: list[int]  # every [n] in the reply, shown or not
    facts: list[dict[str, Any]]  # {"fact": alternatives, "matched": the one found or None}
    declined: Declined | None  # how the reply said "I don't know"
    retrieval_hit: bool | None  # the retriever's top k holds a gold passage (no thresholds)
    gold_shown: bool | None  # a gold passage was among the reply's sources
    fact_hit: bool | None  # every fact found
    fact_share: float | None  # the share of facts found
    citation_precision: float | None  # cited numbers that point at a gold source
    citation_recall: float | None  # 1 if a gold source shown was cited, else 0

    def public(self) -> dict[str, Any]:
        return asdict(self)


def score_reply(
    question: GroundedQuestion,
    reply: Generated,
    decision: Decision | None,
    no_answer: str,
    retrieval_hit: bool | None,
) -> GroundedRecord:
    """Score one reply against its question's gold facts and sources.

    ``decision`` is the engine's for this reply (its sources); ``no_answer`` the profile's
    don't-know text; ``retrieval_hit`` whether retrieval alone found a gold passage.
    """
    grounding = decision.grounding if decision else None
    text, answerable = reply.text, question.answerable
    sources = _sources(question, grounding, text)
    cited = sorted(citations(text))
    gold = {s["index"] for s in sources if s["gold"]}
    facts = [{"fact": list(alts), "matched": match_fact(alts, text)} for alts in question.facts]
    found = [f["matched"] is not None for f in facts]
    right = len(set(cited) & gold)
    return GroundedRecord(
        question.id,
        question.text,
        answerable,
        text,
        reply.stopped,
        grounding.kind if grounding else decision.route if decision else "llm",
        sources,
        cited,
        facts,
        "no_answer" if grounding and grounding.kind == "no_answer" else declines(text, no_answer),
        retrieval_hit if answerable else None,
        bool(gold) if answerable else None,
        all(found) if found else None,
        sum(found) / len(found) if found else None,
        right / len(cited) if answerable and cited else None,
        float(right > 0) if answerable and gold else None,
    )


def _sources(question: GroundedQuestion, grounding: Grounding | None, reply: str) -> list[dict]:
    """The sources shown with the reply (as the API returns them, without their text),
    each marked ``gold`` if it holds the answer."""
    if grounding is None:
        return []
    shown = grounding.sources(reply)
    for source, hit in zip(shown, grounding.hits, strict=True):
        source.pop("text")
        source["gold"] = question.answerable and question.gold.is_gold(hit)
    return shown


def retrieval_hits(
    knowledge: Knowledge, questions: list[GroundedQuestion]
) -> dict[str, bool | None]:
    """Per question id: does the retriever's top ``k`` (the profile's ``k`` and ``mode``)
    hold a gold passage, before any threshold? None for unanswerable questions. With
    :attr:`GroundedRecord.gold_shown` this says whether a wrong answer is retrieval's fault
    (never found), the gate's (found, not shown) or the model's (shown, not used)."""
    s = knowledge.settings
    return {
        q.id: any(q.gold.is_gold(h) for h in knowledge.retriever.search(q.text, s.k, s.mode))
        if q.answerable
        else None
        for q in questions
    }


def _mean(values: Iterable[float | bool | None]) -> float:
    """The mean of the values that apply (not None); NaN if none does."""
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else math.nan


def aggregate_grounded(
    records: list[GroundedRecord], index: np.ndarray | None = None
) -> dict[str, float]:
    """The grounded rates over ``records`` (or the resample ``index`` of them); NaN where
    no record applies (e.g. ``dont_know_rate`` without unanswerable questions).

    ``miss_model`` + ``miss_retrieval`` + ``fact_accuracy`` = 1 over the questions with
    facts: a missed fact with a gold passage shown is the model's miss, without one the
    retrieval's (or the gate's)."""
    rs = records if index is None else [records[i] for i in index]
    yes = [r for r in rs if r.answerable]
    no = [r for r in rs if not r.answerable]
    facts = [r for r in yes if r.fact_hit is not None]
    out = {
        "fact_accuracy": _mean(r.fact_hit for r in facts),
        "fact_recall": _mean(r.fact_share for r in facts),
        "citation_precision": _mean(r.citation_precision for r in yes),
        "citation_recall": _mean(r.citation_recall for r in yes),
        "citation_rate": _mean(bool(r.cited) for r in yes),
        "dont_know_rate": _mean(r.declined is not None for r in no),
        "false_dont_know_rate": _mean(r.declined is not None for r in yes),
        "retrieval_hit": _mean(r.retrieval_hit for r in yes),
        "gold_shown": _mean(r.gold_shown for r in yes),
        "miss_model": _mean(not r.fact_hit and bool(r.gold_shown) for r in facts),
        "miss_retrieval": _mean(not r.fact_hit and not r.gold_shown for r in facts),
    }
    counts = {"n_questions": len(rs), "n_answerable": len(yes), "n_unanswerable": len(no)}
    return {**out, **counts, "n_with_facts": len(facts)}


def _finite(x: float) -> float | None:
    """JSON has no NaN: an undefined rate is ``null``."""
    return None if x is None or math.isnan(x) else x


def grounded_summary(records: list[GroundedRecord]) -> dict[str, Any]:
    """The ``grounded`` block of one model: rates, how replies were routed, the records."""
    metrics = {k: _finite(v) for k, v in aggregate_grounded(records).items()}
    return {
        "metrics": metrics,
        "routes": dict(Counter(r.route for r in records)),
        "per_example": [r.public() for r in records],
    }


def grounded_deltas(
    main: list[GroundedRecord], other: list[GroundedRecord], samples: int, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """``main - other`` for every rate, with a paired bootstrap 95% interval (the same
    questions resampled for both models; ``null`` where a rate is undefined)."""
    a, b = aggregate_grounded(main), aggregate_grounded(other)
    intervals = bootstrap_deltas(
        other, main, samples, seed, score=aggregate_grounded, keys=GROUNDED_KEYS
    )
    out = {}
    for k in GROUNDED_KEYS:
        lo, hi = intervals[k]
        ci = None if math.isnan(lo) else [lo, hi]
        out[k] = {"delta": _finite(a[k] - b[k]), "ci95": ci}
    return out


def format_grounded(result: dict[str, Any], width: int) -> list[str]:
    """Terminal rows of the grounded rates, models side by side (as the metric table)."""
    block, cmp = result["grounded"], result.get("compare", {}).get("grounded")
    m = block["metrics"]
    lines = [
        f"grounded: {m['n_questions']} questions ({m['n_answerable']} answerable, "
        f"{m['n_with_facts']} with facts, {m['n_unanswerable']} unanswerable); "
        f"kb {block['kb']}, k {block['k']}, {block['mode']}"
    ]
    for key in GROUNDED_KEYS:
        row = f"{key:<22}{_cell(m[key], width - 6)}"
        if cmp:
            d = cmp["delta"][key]
            row += _cell(cmp["metrics"][key], width) + _delta_cell(key, d)
        lines.append(row)
    routes = ", ".join(f"{k} {v}" for k, v in sorted(block["routes"].items()))
    lines.append(f"{'routes':<22}{routes}")
    return lines


def _cell(value: float | None, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def _delta_cell(key: str, d: dict[str, Any]) -> str:
    """``+0.125* [+0.050, +0.200]  better``: marked where the interval excludes 0."""
    if d["delta"] is None:
        return f"{'-':>10}"
    text = f"{d['delta']:>+10.3f}"
    if d["ci95"] is None:
        return text
    lo, hi = d["ci95"]
    mark = "*" if (lo > 0 or hi < 0) else " "
    better = (d["delta"] < 0) == (key in GROUNDED_LOWER_IS_BETTER)
    return text + f"{mark} [{lo:+.3f}, {hi:+.3f}]" + ("  better" if better and mark == "*" else "")
