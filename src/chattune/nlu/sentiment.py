"""Sentiment of customer turns: VADER, a maintained lexicon and rule model.

VADER (Hutto & Gilbert, 2014) was made for short informal text (it reads capitals,
exclamation marks, "not", "but" and emoticons), needs no training and scores a sentence in
well under a millisecond, which is what a per-turn signal on the CPU needs. Its compound
score runs from -1 (very negative) to +1; -0.05 and +0.05 are its authors' neutral bounds.

A turn scores as its most negative sentence: VADER's score of a whole message averages
anger with the neutral facts around it ("This is ridiculous. I paid for express shipping
and I have nothing. Worst service I've ever had." is -0.32 whole, -0.80 at its worst
sentence), and one angry sentence is what a support desk reacts to.

Frustration is a run of negative turns, not one: :func:`frustrated` asks whether each of the
last ``turns`` customer turns scored below a bound, which is what a routing rule like
``{sentiment_below: -0.5, turns: 2, action: handoff}`` checks.

Example:
    >>> scorer = Sentiment()
    >>> scorer.score("Thanks for nothing. This is useless, I am furious!") < -0.5
    True
    >>> frustrated([-0.1, -0.7, -0.8], below=-0.5, turns=2)
    True
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Any

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class Sentiment:
    """VADER's compound score per text; the analyser loads its lexicon once, on first use."""

    @cached_property
    def _vader(self) -> Any:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        return SentimentIntensityAnalyzer()

    def score(self, text: str) -> float:
        """The compound score of the most negative sentence of ``text`` (or of the whole
        text, if that is lower)."""
        parts = [p for p in _SENTENCE_END.split(text) if p.strip()][:20]
        texts = [text, *parts] if len(parts) > 1 else [text]
        scores = [self._vader.polarity_scores(p)["compound"] for p in texts]
        return float(min(scores))


def frustrated(scores: list[float], below: float, turns: int = 1) -> bool:
    """Whether each of the newest ``turns`` scores (oldest first in ``scores``) is below
    ``below``; never with fewer scores than ``turns``."""
    recent = scores[-turns:]
    return len(recent) == turns and all(s < below for s in recent)
