"""The NLU of one customer turn: intent, entities and sentiment together.

:class:`NLU` is what the chat engine calls before it decides where a turn goes. It reads
the conversation, not only the newest message: sentiment is scored for the last few
customer turns (a run of angry turns is frustration), and entities of earlier turns stay
known (an order id given two turns ago fills the order-status template now).

The bot profile's ``nlu`` section configures it::

    nlu:
      model: runs/nlu            # from `chattune nlu train`; none: entities + sentiment only
      min_confidence: 0.6        # none: the threshold calibrated when the model was trained
      gazetteer: {product: [Ridgeline 2, Summit 30L]}
      patterns: {order_id: "PC-\\\\d{6}"}
"""

from __future__ import annotations

import datetime as dt
import time
from functools import cached_property
from pathlib import Path

from chattune.data.types import Message
from chattune.nlu.entities import EntityExtractor
from chattune.nlu.intents import IntentModel, load_intent_model
from chattune.nlu.sentiment import Sentiment
from chattune.nlu.settings import NluSettings
from chattune.nlu.tokens import FOLDER, Tagger
from chattune.nlu.types import Analysis

#: What the NLU reads of each customer turn: the start of a long message says what it is
#: about, and a 32,000-character message must not cost a second of entity parsing.
MAX_CHARS = 2000


class NLU:
    """Intent (if a model is given), entities and sentiment of a conversation's last turn.

    Thread-safe for concurrent calls (the server analyses requests in worker threads): the
    models are only read.
    """

    def __init__(self, settings: NluSettings | None = None, intents: IntentModel | None = None):
        self.settings = s = settings or NluSettings()
        self.intents = (
            intents if intents is not None or s.model is None else load_intent_model(s.model)
        )
        tagger = None
        if s.model is not None and (Path(s.model) / FOLDER).is_dir():
            tagger = Tagger(Path(s.model) / FOLDER)
        self.entities = EntityExtractor(s.patterns, s.gazetteer, s.region, s.currency, tagger)
        self.sentiment = Sentiment()

    @cached_property
    def ready(self) -> bool:
        """Load lazily-initialised parts (dateparser's data, VADER's lexicon) now."""
        self.analyze([Message("user", "hi, order PC-104233 from next Tuesday, $5")])
        return True

    def analyze(self, history: list[Message], today: dt.date | None = None) -> Analysis:
        """The analysis of the newest user message in ``history``."""
        t = time.perf_counter()
        turns = [m.content for m in history if m.role == "user"][-self.settings.memory_turns :]
        users = [u[:MAX_CHARS] for u in turns]  # the classifier reads 128 tokens anyway
        if not users:
            return Analysis(None, 0.0)
        text = users[-1]
        intent, confidence, ranking = None, 0.0, []
        if self.intents is not None:
            ranking = self.intents.predict([text])[0]
            confidence = ranking[0].confidence
            # under the threshold the intent is out_of_scope; the guess stays in ``ranking``
            intent = self.intents.decide(ranking[0], self.settings.min_confidence)
        entities = self.entities.extract(text, today)
        earlier = [e for u in users[:-1] for e in self.entities.extract(u, today)]
        scores = [self.sentiment.score(u) for u in users]
        return Analysis(
            intent,
            confidence,
            ranking,
            entities,
            scores[-1],
            scores,
            earlier,
            (time.perf_counter() - t) * 1000,
        )
