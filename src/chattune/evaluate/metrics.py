"""Reply metrics, each a small pure function over strings.

Scales: ``bleu*``, ``rouge_*`` and ``f1`` are 0-100 (sacrebleu's convention, applied to all
three so a table reads uniformly); ``distinct_*``, ``non_stop_rate`` and ``empty_rate`` are
0-1 shares; ``avg_len`` is in words (see :func:`ngram_words`); ``perplexity`` is per
reference token. BLEU comes from sacrebleu and ROUGE from rouge-score: the reference
implementations. Every word-based metric takes a :class:`Language` (English by default, the
libraries' own behaviour); :mod:`chattune.evaluate.languages` says what each one counts.
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

from chattune.evaluate.languages import ENGLISH, Language, bleu_metric

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


def f1_words(text: str, lang: Language = ENGLISH) -> list[str]:
    """The words F1 counts: SQuAD's for English, the language's own otherwise.

    Example:
        >>> from chattune.evaluate.languages import language_for
        >>> f1_words("The café, open!"), f1_words("发货到", language_for("zh"))
        (['café', 'open'], ['发', '货', '到'])
    """
    return normalize_answer(text).split() if lang.kind == "english" else lang.words(text)


def token_f1(prediction: str, reference: str, lang: Language = ENGLISH) -> float:
    """Token F1 (0-100) between the words of prediction and reference (SQuAD's for English).

    Example:
        >>> round(token_f1("returns within 45 days", "You can return within 45 days"), 1)
        60.0
    """
    pred, ref = f1_words(prediction, lang), f1_words(reference, lang)
    if not pred or not ref:
        return 100.0 * (pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 100.0 * 2 * precision * recall / (precision + recall)


def ngram_words(text: str, lang: Language = ENGLISH) -> list[str]:
    """The words distinct-n and ``avg_len`` count: lower-case whitespace-separated words for
    English (punctuation stays on them), the language's own words otherwise."""
    return text.lower().split() if lang.kind == "english" else lang.words(text)


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of a text split into words.

    Example:
        >>> ngrams(["a", "b", "c"], 2)
        [('a', 'b'), ('b', 'c')]
    """
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int, lang: Language = ENGLISH) -> float:
    """Unique n-grams over all n-grams in all texts (0-1); 0 when there are none.

    Example:
        >>> distinct_n(["a b a b"], 1)
        0.5
    """
    return distinct_of_words([ngram_words(t, lang) for t in texts], n)


def distinct_of_words(texts: Sequence[Sequence[str]], n: int) -> float:
    """:func:`distinct_n` over texts already split into words."""
    grams = [g for words in texts for g in ngrams(words, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bleu_stats(
    hypotheses: Sequence[str], references: Sequence[str], lang: Language = ENGLISH
) -> np.ndarray:
    """Per-example BLEU sufficient statistics, one row each (sacrebleu's layout):
    ``[hyp_len, ref_len, correct_1..4, total_1..4]``, tokenized by ``lang.bleu_tokenize``.

    Summing rows over any subset and scoring the sum gives that subset's corpus BLEU. This
    is how sacrebleu's own paired bootstrap works (it is why sacrebleu exposes the
    statistics), and it makes resampling thousands of times cheap.
    """
    bleu = bleu_metric(lang.bleu_tokenize)
    stats = bleu._extract_corpus_statistics(list(hypotheses), [list(references)])
    return np.asarray(stats, dtype=np.int64).reshape(-1, 10)


def bleu_from_stats(total: np.ndarray) -> dict[str, float]:
    """Corpus BLEU-1..4 (cumulative n-gram orders, brevity penalty) from summed statistics.

    Example:
        >>> round(bleu_from_stats(bleu_stats(["the cat sat"], ["the cat sat"]).sum(0))["bleu_1"], 6)
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
            smooth_method="exp",  # sacrebleu's default: an order with no match is not 0
            max_ngram_order=order,
        )
        out[f"bleu_{order}"] = float(score.score)
    out["bleu"] = out["bleu_4"]
    return out


class RougeWords:
    """rouge-score's tokenizer interface (``tokenize(text) -> list[str]``) over a language's
    words, stemmed as rouge-score stems English: words of more than 3 characters only."""

    def __init__(self, lang: Language) -> None:
        import Stemmer

        self.lang = lang
        self.stem = Stemmer.Stemmer(lang.stemmer).stemWord if lang.stemmer else None

    def tokenize(self, text: str) -> list[str]:
        words = self.lang.words(text)
        if self.stem is None:
            return words
        return [self.stem(w) if len(w) > 3 else w for w in words]


@lru_cache(maxsize=8)
def _rouge(lang: Language) -> Any:
    from rouge_score import rouge_scorer

    types = ["rouge1", "rouge2", "rougeL"]
    if lang.kind == "english":  # rouge-score's own a-z0-9 words and Porter stemmer
        return rouge_scorer.RougeScorer(types, use_stemmer=True)
    return rouge_scorer.RougeScorer(types, tokenizer=RougeWords(lang))


def rouge(prediction: str, reference: str, lang: Language = ENGLISH) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (0-100) from rouge-score: for English its own words with Porter
    stemming; otherwise the language's words (:class:`RougeWords`).

    Example:
        >>> from chattune.evaluate.languages import language_for
        >>> rouge("发货到加拿大", "发货到美国", language_for("zh"))["rouge_1"]
        54.54545454545454
    """
    scores = _rouge(lang).score(reference, prediction)
    return {
        "rouge_1": 100 * scores["rouge1"].fmeasure,
        "rouge_2": 100 * scores["rouge2"].fmeasure,
        "rouge_l": 100 * scores["rougeL"].fmeasure,
    }


def perplexity(loss_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """Corpus perplexity: exp of the summed token loss over the summed token count."""
    n = sum(token_counts)
    return math.exp(min(sum(loss_sums) / n, 50.0)) if n else float("nan")
