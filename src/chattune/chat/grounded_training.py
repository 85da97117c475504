"""Grounded fine-tuning's view of a knowledge base: serving's grounding, for training.

:mod:`chattune.data.grounded` holds the rules (one example per assistant turn, the gold
passage, distractors, the don't-know share, citations) behind a small ``Grounder``
interface, because training sits below the knowledge base and the chat profile and may not
import them. :class:`KbGrounder` is that interface over a knowledge base folder and a bot
profile: ``Knowledge.ground`` as serving runs it and the profile's prompt head
(:meth:`~chattune.chat.profile.BotProfile.prompt_head`, which ``ChatEngine.build_prompt``
uses too), so a model is trained on the prompts it will be served.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from chattune.config import RunConfig
from chattune.data.types import Message

if TYPE_CHECKING:
    import numpy as np

    from chattune.chat.profile import BotProfile
    from chattune.data.grounded import Passage, Retrieved
    from chattune.knowledge.retrieve import Hit


class RememberingEmbedder:
    """An embedder that embeds each text once. Grounding a data set asks for the same user
    messages again and again (every later turn's query holds the earlier ones), and one
    MiniLM call per turn cost 58 s for the demo's 419 turns on 2 cores; one batch of its
    123 distinct messages, 1 s. Vectors match serving's to float rounding."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.vectors: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        new = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if new:
            self.vectors.update(zip(new, self.inner.encode(new), strict=True))
        return np.stack([self.vectors[t] for t in texts]).reshape(len(texts), self.dim)


class RememberingKB:
    """A knowledge base seen through a :class:`RememberingEmbedder` (everything else is
    the knowledge base's own)."""

    def __init__(self, kb: Any) -> None:
        self.kb, self.embedder = kb, RememberingEmbedder(kb.embedder)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kb, name)


class KbGrounder:
    """The :class:`~chattune.data.grounded.Grounder` of a knowledge base folder and a bot
    profile: ``Knowledge.ground`` (knowledge/grounding.py) as serving runs it, and the head
    of ``ChatEngine.build_prompt`` (chat/engine.py), which tests/test_grounded_training.py
    checks token for token against the engine's."""

    def __init__(self, folder: str, profile: BotProfile) -> None:
        from chattune.knowledge.grounding import Knowledge
        from chattune.knowledge.retrieve import Retriever
        from chattune.knowledge.store import KnowledgeBase

        self.kb, self.profile = folder, profile
        self.base = RememberingKB(KnowledgeBase(folder))
        self.retriever = Retriever(self.base)  # type: ignore[arg-type]
        s = profile.knowledge
        self.knowledge = Knowledge(self.retriever, s)
        # verbatim FAQ turns are trained on the prompt of a near paraphrase (data.grounded)
        self.as_passages = Knowledge(self.retriever, s.model_copy(update={"faq_answers": "off"}))
        self.k, self.no_answer = s.k, s.no_answer
        self._owners: dict[int, tuple[str, str | None]] | None = None

    def owners(self) -> dict[int, tuple[str, str | None]]:
        """(document name, FAQ id) of every chunk, read once."""
        if self._owners is None:
            ids = [int(i) for i in self.base.indexes.ids]
            self._owners = {}
            for start in range(0, len(ids), 500):
                for i, c in self.base.chunks(ids[start : start + 500]).items():
                    self._owners[i] = (c.source, c.chunk.faq_id)
        return self._owners

    def names(self) -> tuple[list[str], set[str]]:
        sources = [s["name"] for s in self.base.sources()]
        return sources, {f for _, f in self.owners().values() if f is not None}

    def ground(self, histories: list[list[Message]]) -> list[Retrieved]:
        texts = [m.content for h in histories for m in h if m.role == "user"]
        if texts:
            self.base.embedder.encode(texts)  # one batch; each turn's query is then looked up
        return [self._ground(h) for h in histories]

    def _ground(self, history: list[Message]) -> Retrieved:
        from chattune.data.grounded import Retrieved

        g = self.knowledge.ground(history)
        hits = g.hits
        if g.kind == "faq" and g.context is None:  # verbatim: serving calls no model
            hits = self.as_passages.ground(history).hits
        return Retrieved(g.kind, tuple(self.passage(h) for h in hits))

    def passage(self, hit: Hit) -> Passage:
        from chattune.data.grounded import Passage

        return Passage(hit.chunk.source, hit.chunk.chunk.faq_id, hit.chunk.id, hit)

    def gold(self, history: list[Message], reply: Message) -> Passage | None:
        from chattune.data.grounded import source_matches
        from chattune.knowledge.retrieve import Hit, conversation_query

        owners = self.owners().items()
        ids = [i for i, (_, f) in owners if f is not None and f in reply.faq_ids] or [
            i for i, (src, _) in owners if any(source_matches(src, s) for s in reply.sources)
        ]
        if not ids:
            return None
        query = conversation_query(history, self.profile.knowledge.history_turns)
        v = self.retriever.vector(query)[0]
        dense = self.base.indexes.dense
        sims = {i: float(dense.reconstruct(i) @ v) for i in ids}
        best = max(ids, key=lambda i: sims[i])
        chunk = self.base.chunks([best])[best]
        return self.passage(Hit(chunk, sims[best], sims[best], 0.0))

    def head(self, system: str | None, passages: Sequence[Passage]) -> list[Message]:
        from chattune.knowledge.grounding import context_block

        context = None
        if passages:
            context = context_block([p.hit for p in passages], self.profile.knowledge.instruction)
        return self.profile.prompt_head(system, context)

    def cite(self, reply: str, n: int) -> str:
        from chattune.knowledge.grounding import citations, cite

        return reply if citations(reply) else cite(reply, n)

    def text(self, passage: Passage) -> str:
        c = passage.hit.chunk.chunk
        return c.text if c.faq_id is None else f"{c.question}\n{c.answer}"

    def rewrite(self, passage: Passage, swap: Callable[[str], str]) -> Passage:
        hit = passage.hit
        c = hit.chunk.chunk
        if c.faq_id is None:
            chunk = replace(c, text=swap(c.text))
        else:  # the block quotes an FAQ entry as "Q: question / A: answer"
            chunk = replace(
                c,
                question=None if c.question is None else swap(c.question),
                answer=None if c.answer is None else swap(c.answer),
            )
        return replace(passage, hit=replace(hit, chunk=replace(hit.chunk, chunk=chunk)))


def kb_grounder(cfg: RunConfig) -> KbGrounder | None:
    """The grounder of ``data.kb`` with ``data.kb_profile``, or None without a knowledge
    base. Opened before the model loads, so a bad --kb fails in a second."""
    if cfg.data.kb is None:
        return None
    from chattune.chat.profile import load_profile

    return KbGrounder(cfg.data.kb, load_profile(cfg.data.kb_profile, "data.kb_profile"))
