"""What the NLU says about one customer turn: the values the router decides on.

Example:
    >>> a = Analysis("order_status", 0.93, [IntentGuess("order_status", 0.93)],
    ...              [Entity("order_id", "PC-104233", 19, 28, "PC-104233", "pattern")], -0.1)
    >>> a.slots()
    {'order_id': 'PC-104233'}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

#: The intent of a turn the classifier is not confident about, or that it was trained to
#: recognise as not the bot's business (an ``out_of_scope`` label in the intents file).
OUT_OF_SCOPE = "out_of_scope"


@dataclass(frozen=True)
class Entity:
    """A detail in the customer's text.

    ``start``/``end`` are character offsets into the text; ``value`` is the normalised form
    (ISO date, ``"84.50 USD"``, E.164 phone number, the gazetteer's spelling) and ``source``
    says what found it: ``pattern``, ``gazetteer`` or ``model``.
    """

    type: str
    text: str
    start: int
    end: int
    value: str
    source: str = "pattern"


@dataclass(frozen=True)
class IntentGuess:
    name: str
    confidence: float


@dataclass
class Analysis:
    """Intent, entities and sentiment of the newest customer turn.

    ``intent`` is :data:`OUT_OF_SCOPE` when the best guess is under the threshold;
    ``ranking`` keeps the classifier's best guesses either way. ``sentiment`` is VADER's
    compound score of the newest turn (-1 very negative .. +1 very positive) and
    ``sentiment_turns`` the scores of the recent customer turns, oldest first.
    ``earlier`` holds entities of earlier customer turns (an order id given two turns ago
    still fills a template); ``ms`` is the time the analysis took.
    """

    intent: str | None
    confidence: float
    ranking: list[IntentGuess] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    sentiment: float = 0.0
    sentiment_turns: list[float] = field(default_factory=list)
    earlier: list[Entity] = field(default_factory=list)
    ms: float = 0.0

    def slots(self) -> dict[str, str]:
        """Entity type -> value, the newest mention winning (this turn over earlier ones)."""
        out: dict[str, str] = {}
        for e in [*self.earlier, *self.entities]:
            out[e.type] = e.value
        return out

    def as_dict(self) -> dict[str, Any]:
        """The JSON the API returns and the store keeps (rounded for reading)."""
        return {
            "intent": self.intent,
            "confidence": round(self.confidence, 4),
            "ranking": [
                {"intent": g.name, "confidence": round(g.confidence, 4)} for g in self.ranking
            ],
            "entities": [asdict(e) for e in self.entities],
            "sentiment": round(self.sentiment, 4),
            "sentiment_turns": [round(s, 4) for s in self.sentiment_turns],
            "ms": round(self.ms, 2),
        }
