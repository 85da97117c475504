"""Routing rules: where a customer turn goes, decided from its :class:`Analysis`.

A bot profile lists routes; the first whose conditions all hold decides, and ``default``
decides when none does (without one: the knowledge base if the bot has one, else the
model)::

    routes:
      - {intent: order_status, action: template, text: "Order {order_id} is on its way.",
         ask: "What is your order number? It starts with PC-."}
      - {intent: refund, action: handoff}
      - {sentiment_below: -0.5, turns: 2, action: handoff}
      - {intent: "faq_*", action: knowledge}
      - {default: llm}

Conditions: ``intent`` (a glob: ``faq_*``; ``out_of_scope`` is the intent of a turn the
classifier is not confident about), ``sentiment_below`` with ``turns`` (each of the last
``turns`` customer turns scored below it), ``entities`` (types that must be known). Actions:
``template`` (the ``text`` with ``{entity_type}`` filled from the conversation; if one is
unknown, the ``ask`` text, or the route does not apply), ``handoff`` (a person takes the
conversation), ``knowledge`` (retrieval: an FAQ answer, quoted passages, or "I don't know"),
``llm`` (the model, without retrieval).

Example:
    >>> from chattune.nlu.types import Analysis
    >>> routes = [Route(intent="faq_*", action="knowledge"), Route(default="llm")]
    >>> choose(routes, Analysis("faq_shipping", 0.9))[0].action_name
    'knowledge'
"""

from __future__ import annotations

import fnmatch
import string
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from chattune.nlu.sentiment import frustrated
from chattune.nlu.types import Analysis

Action = Literal["template", "handoff", "knowledge", "llm"]


class Route(BaseModel):
    """One routing rule (see the module doc)."""

    model_config = ConfigDict(extra="forbid")

    intent: str | None = Field(None, min_length=1, description="intent name or glob")
    sentiment_below: float | None = Field(None, ge=-1, le=1)
    turns: int = Field(1, ge=1, le=20, description="customer turns sentiment_below must hold")
    entities: list[str] = Field(default_factory=list, description="entity types required")
    min_confidence: float | None = Field(None, ge=0, le=1)
    action: Action | None = None
    default: Action | None = None
    text: str | None = Field(None, min_length=1, max_length=4000)
    ask: str | None = Field(None, min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _check(self) -> Self:
        conditions = (self.intent, self.sentiment_below, self.entities or None)
        if (self.action is None) == (self.default is None):
            raise ValueError("a route has either 'action' (with conditions) or 'default'")
        if self.default is not None and any(c is not None for c in conditions):
            raise ValueError("a 'default' route has no conditions (it applies when none do)")
        if self.action is not None and all(c is None for c in conditions):
            raise ValueError(
                "a route needs a condition (intent, sentiment_below, entities); "
                "use {default: ACTION} for the catch-all"
            )
        if self.action_name == "template" and not self.text:
            raise ValueError("a template route needs 'text'")
        for t in (self.text, self.ask):
            placeholders(t or "")  # a malformed template fails at load, not mid-chat
        return self

    @property
    def action_name(self) -> Action:
        return self.action or self.default  # type: ignore[return-value]

    def matches(self, a: Analysis) -> bool:
        if self.intent is not None and not (
            a.intent is not None and fnmatch.fnmatchcase(a.intent, self.intent)
        ):
            return False
        if self.min_confidence is not None and a.confidence < self.min_confidence:
            return False
        if self.sentiment_below is not None and not frustrated(
            a.sentiment_turns, self.sentiment_below, self.turns
        ):
            return False
        return set(self.entities) <= set(a.slots())

    def describe(self, a: Analysis) -> str:
        """Why this route applies, for the decision the API returns."""
        if self.default is not None:
            return "default"
        parts = []
        if self.intent is not None:
            parts.append(f"intent {a.intent} ({a.confidence:.2f})")
        if self.sentiment_below is not None:
            parts.append(f"sentiment below {self.sentiment_below:g} for {self.turns} turn(s)")
        if self.entities:
            parts.append("entities " + ", ".join(self.entities))
        return "; ".join(parts)


def placeholders(text: str) -> list[str]:
    """The ``{name}`` fields of a template; ValueError for anything but plain names.

    Example:
        >>> placeholders("Order {order_id} ships on {date}.")
        ['order_id', 'date']
    """
    names = []
    for _, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(f"template field {{{name}}}: only {{entity_type}} is allowed")
        names.append(name)
    return names


def fill(text: str, slots: dict[str, str]) -> str | None:
    """The template with its fields filled, or None if one is unknown. The template is the
    only format string: a value from the customer is never formatted again."""
    names = placeholders(text)
    if any(n not in slots for n in names):
        return None
    return text.format_map({n: slots[n] for n in names})


def choose(routes: list[Route], a: Analysis) -> tuple[Route, str | None] | None:
    """The first route that applies, with its template reply (or ``ask`` text) if it is a
    template; None if no route applies (not even a default)."""
    for r in routes:
        if not r.matches(a):
            continue
        if r.action_name != "template":
            return r, None
        reply = fill(r.text or "", a.slots())
        if reply is None and r.ask:
            reply = fill(r.ask, a.slots())
        if reply is not None:
            return r, reply
    return None
