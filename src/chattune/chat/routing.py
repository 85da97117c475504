"""Where each turn goes: the NLU's analysis, the profile's routes, and the knowledge gate.

:func:`decide` is the first step of every reply (chat, serve, eval, generate). It returns a
:class:`Decision`: the route taken (``template``, ``handoff``, ``knowledge``, ``llm``), why,
the analysis it was taken on, and either a fixed reply (a filled template, the handoff
message, a stored FAQ answer, "I don't know") or what the model is given (retrieved
passages, or nothing). A bot without ``nlu`` or ``routes`` in its profile routes every turn
to its knowledge base if it has one, else to the model, as before routing existed.

The decision travels with the reply: the API's ``nlu`` field, the stored message's
metadata, ``chattune chat --verbose``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chattune.data.types import Message
from chattune.knowledge.grounding import Grounding, Knowledge
from chattune.nlu.pipeline import NLU
from chattune.nlu.router import Action, Route, choose
from chattune.nlu.types import Analysis

HANDOFF_MESSAGE = (
    "I'm passing this conversation to a member of our team. A person will answer you here "
    "as soon as possible."
)


class HandoffSettings(BaseModel):
    """The ``handoff:`` section of a bot profile: what the customer is told."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(HANDOFF_MESSAGE, min_length=1, max_length=2000)


@dataclass
class Decision:
    """How one turn is answered (see the module doc)."""

    route: Action
    reason: str
    analysis: Analysis | None = None
    grounding: Grounding | None = None
    reply: str | None = None  # a fixed reply: nothing is generated

    @property
    def handoff(self) -> bool:
        return self.route == "handoff"

    def sources(self, reply: str = "") -> list[dict[str, Any]] | None:
        return self.grounding.sources(reply) if self.grounding else None

    def as_dict(self) -> dict[str, Any]:
        """The ``nlu`` field of a reply: route, reason, the analysis, the knowledge gate."""
        out: dict[str, Any] = {"route": self.route, "reason": self.reason}
        if self.analysis is not None:
            out |= self.analysis.as_dict()
        if self.grounding is not None:
            out["knowledge"] = self.grounding.kind
        return out


def decide(
    history: list[Message],
    routes: list[Route],
    nlu: NLU | None,
    knowledge: Knowledge | None,
    handoff: HandoffSettings,
) -> Decision:
    """The decision for the newest user turn of ``history``."""
    if nlu is None and not routes:
        return _act(_fallback(knowledge), "default", None, history, knowledge, handoff)
    analysis = nlu.analyze(history) if nlu is not None else Analysis(None, 0.0)
    chosen = choose(routes, analysis)
    if chosen is None:
        return _act(_fallback(knowledge), "default", analysis, history, knowledge, handoff)
    route, text = chosen
    return _act(
        route.action_name,
        route.describe(analysis),
        analysis,
        history,
        knowledge,
        handoff,
        text if route.action_name == "template" else route.text,
    )


def _fallback(knowledge: Knowledge | None) -> Action:
    return "knowledge" if knowledge is not None else "llm"


def _act(
    action: Action,
    reason: str,
    analysis: Analysis | None,
    history: list[Message],
    knowledge: Knowledge | None,
    handoff: HandoffSettings,
    text: str | None = None,
) -> Decision:
    if action == "template":
        return Decision(action, reason, analysis, reply=text)
    if action == "handoff":
        return Decision(action, reason, analysis, reply=text or handoff.message)
    if action == "knowledge":
        if knowledge is None:  # checked when the engine is built; kept for direct callers
            raise ValueError("a 'knowledge' route needs a knowledge base (--kb DIR)")
        grounding = knowledge.ground(history)
        return Decision(action, reason, analysis, grounding, grounding.reply)
    return Decision(action, reason, analysis)
