"""Per-example records and the corpus metrics computed from any subset of them.

Keeping per-example sufficient statistics (BLEU counts, loss sums, the reply's words) means a
corpus metric for a bootstrap resample is a sum and a formula, not a re-run of the scorers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from chattune.evaluate.languages import Language, resolve_language
from chattune.evaluate.metrics import (
    bleu_from_stats,
    bleu_stats,
    distinct_of_words,
    ngram_words,
    perplexity,
    rouge,
    token_f1,
)

#: The stable keys of ``--json`` output (documented in docs/evaluation.md).
METRIC_KEYS = (
    "perplexity",
    "bleu",
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "rouge_1",
    "rouge_2",
    "rouge_l",
    "f1",
    "distinct_1",
    "distinct_2",
    "avg_len",
    "non_stop_rate",
    "empty_rate",
)
#: Metrics where lower is better (everything else: higher is better).
LOWER_IS_BETTER = {"perplexity", "non_stop_rate", "empty_rate"}


@dataclass
class Record:
    """One scored reply."""

    id: str
    reference: str
    reply: str
    stopped: bool
    loss_sum: float  # teacher-forced loss over the reference reply's tokens
    n_tokens: int
    f1: float
    rouge_1: float
    rouge_2: float
    rouge_l: float
    bleu_stats: list[int] = field(repr=False)
    words: list[str] = field(repr=False)  # the reply's words, for distinct-n and avg_len

    def public(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("bleu_stats")
        d.pop("words")
        return d


def make_records(
    ids: list[str],
    references: list[str],
    replies: list[str],
    stopped: list[bool],
    losses: list[tuple[float, int]],
    lang: str | Language = "auto",
) -> list[Record]:
    """Score each reply against its reference, in ``lang``'s words (``auto``: detected from
    the references, see :func:`~chattune.evaluate.languages.detect_language`)."""
    language = resolve_language(lang, references)
    stats = bleu_stats(replies, references, language)
    return [
        Record(
            i,
            ref,
            hyp,
            stop,
            loss,
            n,
            token_f1(hyp, ref, language),
            **rouge(hyp, ref, language),
            bleu_stats=stats[k].tolist(),
            words=ngram_words(hyp, language),
        )
        for k, (i, ref, hyp, stop, (loss, n)) in enumerate(
            zip(ids, references, replies, stopped, losses, strict=True)
        )
    ]


def aggregate(records: list[Record], index: np.ndarray | None = None) -> dict[str, float]:
    """Corpus metrics over ``records`` (or the resample ``index`` of them)."""
    rs = records if index is None else [records[i] for i in index]
    if not rs:
        raise ValueError("no records to aggregate")
    replies = [r.reply for r in rs]
    out = {"perplexity": perplexity([r.loss_sum for r in rs], [r.n_tokens for r in rs])}
    out.update(bleu_from_stats(np.sum([r.bleu_stats for r in rs], axis=0)))
    for key in ("rouge_1", "rouge_2", "rouge_l", "f1"):
        out[key] = float(np.mean([getattr(r, key) for r in rs]))
    words = [r.words for r in rs]
    out["distinct_1"], out["distinct_2"] = distinct_of_words(words, 1), distinct_of_words(words, 2)
    out["avg_len"] = float(np.mean([len(w) for w in words]))
    out["non_stop_rate"] = float(np.mean([not r.stopped for r in rs]))
    out["empty_rate"] = float(np.mean([not x.strip() for x in replies]))
    out["n_examples"] = len(rs)
    return {k: out[k] for k in (*METRIC_KEYS, "n_examples")}


def bootstrap_deltas(
    a: list[Any],
    b: list[Any],
    samples: int = 1000,
    seed: int = 0,
    *,
    score: Callable[[list[Any], np.ndarray], dict[str, float]] = aggregate,
    keys: tuple[str, ...] = METRIC_KEYS,
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of ``metric(b) - metric(a)`` under paired resampling.

    Both models are resampled on the same example indices, so the interval reflects the
    difference between them rather than the spread of the test set. ``score`` computes the
    metrics of a resample (``aggregate`` for these records; the grounded rates use
    :func:`~chattune.evaluate.grounded.aggregate_grounded`), ``keys`` names the ones to
    compare. A metric undefined in every resample gets ``(nan, nan)``.
    """
    rng = np.random.default_rng(seed)
    n = len(a)
    deltas: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(samples):
        idx = rng.integers(0, n, n)
        ma, mb = score(a, idx), score(b, idx)
        for k in keys:
            deltas[k].append(mb[k] - ma[k])
    return {k: _interval(v) for k, v in deltas.items()}


def _interval(values: list[float]) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles, ignoring NaN: a resample may hold no scored
    reference tokens (perplexity undefined) or no question a rate applies to."""
    v = np.asarray(values, dtype=float)
    if not v.size or np.isnan(v).all():
        return (math.nan, math.nan)
    return (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)))
