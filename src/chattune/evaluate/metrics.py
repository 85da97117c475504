"""Reply metrics, each a small pure function over strings.

Scales: ``bleu*``, ``rouge_*`` and ``f1`` are 0-100 (sacrebleu's convention, applied to all
three so a table reads uniformly); ``distinct_*``, ``non_stop_rate`` and ``empty_rate`` are
0-1 shares; ``avg_len`` is in whitespace-separated words; ``perplexity`` is per reference
token. BLEU comes from sacrebleu and ROUGE from rouge-score: the reference implementations.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces.

    Example:
        >>> normalize_answer("The  Return window, is 45 days!")
        'return window is 45 days'
    """
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 (0-100) between normalised prediction and reference.

    Example:
        >>> round(token_f1("returns within 45 days", "You can return within 45 days"), 1)
        66.7
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return 100.0 * (pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 100.0 * 2 * precision * recall / (precision + recall)


def ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.lower().split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams over all n-grams in all texts (0-1); 0 when there are none.

    Example:
        >>> distinct_n(["a b a b"], 1)
        0.5
    """
    grams = [g for t in texts for g in ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu_stats(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-example BLEU sufficient statistics, one row each (sacrebleu's layout):
    ``[hyp_len, ref_len, correct_1..4, total_1..4]``.

    Summing rows over any subset and scoring the sum gives that subset's corpus BLEU. This
    is how sacrebleu's own paired bootstrap works (it is why sacrebleu exposes the
    statistics), and it makes resampling thousands of times cheap.
    """
    from sacrebleu.metrics import BLEU

    stats = BLEU()._extract_corpus_statistics(list(hypotheses), [list(references)])
    return np.asarray(stats, dtype=np.int64).reshape(-1, 10)


def bleu_from_stats(total: np.ndarray) -> dict[str, float]:
    """Corpus BLEU-1..4 (cumulative n-gram orders, brevity penalty) from summed statistics.

    Example:
        >>> bleu_from_stats(bleu_stats(["the cat sat"], ["the cat sat"]).sum(0))["bleu_1"]
        100.0
    """
    from sacrebleu.metrics import BLEU

    out = {}
    for order in range(1, 5):
        score = BLEU.compute_bleu(
            correct=[int(x) for x in total[2 : 2 + order]],
            total=[int(x) for x in total[6 : 6 + order]],
            sys_len=int(total[0]),
            ref_len=int(total[1]),
            max_ngram_order=order,
        )
        out[f"bleu_{order}"] = float(score.score)
    out["bleu"] = out["bleu_4"]
    return out


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (0-100) from rouge-score, with Porter stemming."""
    scores = _rouge().score(reference, prediction)
    return {
        "rouge_1": 100 * scores["rouge1"].fmeasure,
        "rouge_2": 100 * scores["rouge2"].fmeasure,
        "rouge_l": 100 * scores["rougeL"].fmeasure,
    }


def perplexity(loss_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """Corpus perplexity: exp of the summed token loss over the summed token count."""
    n = sum(token_counts)
    return math.exp(min(sum(loss_sums) / n, 50.0)) if n else float("nan")
