"""Hybrid retrieval: dense (FAISS) and lexical (BM25) rankings, fused with a gate.

Plain reciprocal-rank fusion (RRF) trusts both rankings equally. On paraphrased questions,
which share few words with the passage that answers them, BM25's ranking is mostly noise,
and RRF lets it drag the right dense hit down. ``hybrid`` therefore weighs the lexical
ranking by how much lexical evidence there is: the share of the query's terms that its best
BM25 passage contains. Below ``gate_floor`` (1.0: every term) the lexical weight is 0 and the
result is the dense ranking exactly; at it, BM25 joins the fusion, which is what helps on
product names, codes and rare terms that an embedding blurs. A floor of 0.5 (the first
design) let BM25 in on FAQ questions that share common words ("card", "book") with the wrong
entry and lost to dense on FAQ sets it was not tuned on (docs/knowledge.md). ``kb eval --mode all``
prints all four modes side by side; docs/knowledge.md has the measured comparison.

An FAQ entry is two texts: the stored question and the whole entry (question + answer). A
customer's question is a question, so it is matched against both and the entry scores the
closer of the two cosines (:meth:`Retriever.dense_ranking`); measured in docs/knowledge.md.

Follow-up questions ("and how much is it?") name nothing, so the query is the conversation:
the last user message plus earlier user messages at decaying weights (see
:func:`conversation_query`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from chattune.data.types import Message
from chattune.knowledge.store import KnowledgeBase, StoredChunk

Mode = Literal["hybrid", "dense", "bm25", "rrf"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "bm25", "rrf")


@dataclass(frozen=True)
class Hit:
    """One retrieved passage. ``similarity`` is its cosine to the query, whatever the mode:
    thresholds ("don't know", FAQ match) use it because it is comparable across queries,
    unlike BM25 or fused scores."""

    chunk: StoredChunk
    score: float
    similarity: float
    lexical: float  # BM25 score if among BM25's candidates (never in dense mode), else 0
    #: an FAQ entry scored against its stored question too (a one-message query), so its
    #: similarity may be the question's cosine: grounding holds it to min_faq_similarity
    asked: bool = False


@dataclass(frozen=True)
class Query:
    """Texts with weights: the dense vector is their weighted sum, BM25 reads all their terms."""

    texts: tuple[str, ...]
    weights: tuple[float, ...] = (1.0,)

    @classmethod
    def of(cls, text: str) -> Query:
        return cls((text,), (1.0,))


def conversation_query(history: list[Message], turns: int = 3, decay: float = 0.5) -> Query:
    """The last ``turns`` user messages, newest first, weighted 1, decay, decay**2, ...

    Example:
        >>> q = conversation_query([Message("user", "Do you ship to Canada?"),
        ...     Message("assistant", "Yes."), Message("user", "How long does it take?")])
        >>> q.texts, q.weights
        (('How long does it take?', 'Do you ship to Canada?'), (1.0, 0.5))
    """
    users = [m.content for m in reversed(history) if m.role == "user"][:turns]
    return Query(tuple(users), tuple(decay**i for i in range(len(users))))


def blend(vectors: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """The unit vector (1, dim) along the weighted sum of ``vectors`` (one per row)."""
    v = (np.asarray(weights, dtype=np.float32)[:, None] * vectors).sum(0, keepdims=True)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def rrf(rankings: list[list[int]], weights: list[float], k: int = 60) -> dict[int, float]:
    """Weighted reciprocal-rank fusion: sum of ``weight / (k + rank)`` (rank from 1).

    Example:
        >>> rrf([[1, 2], [2, 3]], [1.0, 1.0], k=0)
        {1: 1.0, 2: 1.5, 3: 0.5}
    """
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights, strict=False):
        if weight <= 0:
            continue
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return scores


def lexical_gate(query_terms: set[str], passage_terms: set[str], floor: float) -> float:
    """Weight of the BM25 ranking: the share of query terms its best passage contains, or 0
    below ``floor``.

    Example:
        >>> lexical_gate({"ridgelin", "tent", "weigh"}, {"ridgelin", "tent", "kg"}, 0.5)
        0.6666666666666666
        >>> lexical_gate({"time", "limit", "return"}, {"return", "45", "day"}, 0.5)
        0.0
    """
    if not query_terms:
        return 0.0
    coverage = len(query_terms & passage_terms) / len(query_terms)
    return coverage if coverage >= floor else 0.0


class Retriever:
    """Search one knowledge base. Thread-safe for concurrent searches."""

    def __init__(
        self, kb: KnowledgeBase, candidates: int = 50, rrf_k: int = 60, gate_floor: float = 1.0
    ) -> None:
        self.kb, self.candidates, self.rrf_k, self.gate_floor = kb, candidates, rrf_k, gate_floor
        _ = kb.indexes  # verify now, not on the first question
        self._faq: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def faq_vectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(chunk ids, question vectors, entry vectors) of every FAQ entry, read once."""
        if self._faq is None:
            ids, questions = self.kb.faq_questions()
            dense = self.kb.indexes.dense
            entries = np.stack([dense.reconstruct(int(i)) for i in ids]) if len(ids) else questions
            self._faq = ids, questions, entries.reshape(questions.shape)
        return self._faq

    def dense_ranking(
        self, v: np.ndarray, n: int, questions: bool = True
    ) -> list[tuple[int, float]]:
        """The ``n`` best (chunk id, cosine) for the unit vector ``v`` (1, dim), best first.

        A passage scores its cosine; with ``questions`` an FAQ entry scores the higher of
        its question's cosine and its whole entry's, so "Can I get my wages paid in early?"
        finds "Can I get my paycheck early?" even when another entry's *answer* talks more
        about salaries. :meth:`search` turns it off for a conversation query: a blend of
        several messages is not one question, and the follow-up "how long does it take?"
        after "do you ship to Canada?" would find the question "When will my order ship?".
        """
        sims, ids = self.kb.indexes.dense.search(v, n)
        scores = {int(i): float(s) for i, s in zip(ids[0], sims[0], strict=False) if i >= 0}
        faq_ids, stored, entries = self.faq_vectors()
        if questions and len(faq_ids):
            best = np.maximum(stored @ v[0], entries @ v[0])
            for j in np.argsort(-best, kind="stable")[:n]:
                scores[int(faq_ids[j])] = float(best[j])
        return sorted(scores.items(), key=lambda kv: -kv[1])[:n]

    def vector(self, query: Query) -> np.ndarray:
        """The unit query vector (1, dim): weighted sum of the texts' embeddings."""
        return blend(self.kb.embedder.encode(list(query.texts)), query.weights)

    def search(
        self,
        query: Query | str,
        k: int = 5,
        mode: Mode = "hybrid",
        vector: np.ndarray | None = None,
    ) -> list[Hit]:
        """The ``k`` best passages for ``query`` under ``mode``."""
        query = Query.of(query) if isinstance(query, str) else query
        idx = self.kb.indexes
        v = self.vector(query) if vector is None else vector
        n = min(self.candidates, idx.dense.ntotal)
        asked = len(query.texts) == 1
        ranking = self.dense_ranking(v, n, questions=asked)
        dense = [i for i, _ in ranking]
        similarity = dict(ranking)
        if mode == "dense":  # no BM25 work for a mode that does not read it
            ranked = [(i, similarity[i]) for i in dense]
            lexical_scores: dict[int, float] = {}
        else:
            terms = [t for text in query.texts for t in idx.terms(text)]
            lexical, lexical_scores = self._bm25(terms, n)
            if mode == "bm25":
                ranked = [(i, lexical_scores[i]) for i in lexical]
            else:
                ranked = self._fuse(dense, lexical, set(terms), gated=mode == "hybrid")
        top = ranked[:k]
        chunks = self.kb.chunks([i for i, _ in top])
        for i, _ in top:
            if i not in similarity:  # a lexical-only hit: its exact cosine, from the index
                similarity[i] = float(idx.dense.reconstruct(i) @ v[0])
                faq_ids, questions, _ = self.faq_vectors()
                row = np.flatnonzero(faq_ids == i)
                if asked and len(row):  # an FAQ entry: as in dense_ranking
                    similarity[i] = max(similarity[i], float(questions[row[0]] @ v[0]))
        return [
            Hit(
                chunks[i],
                s,
                similarity[i],
                lexical_scores.get(i, 0.0),
                asked and chunks[i].chunk.faq_id is not None,
            )
            for i, s in top
        ]

    def _fuse(
        self, dense: list[int], lexical: list[int], terms: set[str], gated: bool
    ) -> list[tuple[int, float]]:
        """Plain RRF, or with ``gated`` the lexical ranking weighted by :func:`lexical_gate`
        (query and passage terms cut by the index's scheme, as BM25 cut them)."""
        weight = 1.0
        if gated:
            weight = 0.0
            if lexical:
                best = self.kb.chunks([lexical[0]])[lexical[0]].chunk.index_text
                weight = lexical_gate(terms, set(self.kb.indexes.terms(best)), self.gate_floor)
        fused = rrf([dense, lexical], [1.0, weight], self.rrf_k)
        # Ties go to the dense ranking, unless the best BM25 passage holds every query term
        # (gate fully open): then the lexical evidence is the stronger of the two.
        order = {i: r for r, i in enumerate(lexical if gated and weight >= 1.0 else dense)}
        return sorted(fused.items(), key=lambda kv: (-kv[1], order.get(kv[0], len(order))))

    def _bm25(self, terms: list[str], n: int) -> tuple[list[int], dict[int, float]]:
        """The ``n`` best chunk ids by BM25 (score > 0), best first, and their scores."""
        idx = self.kb.indexes
        known = [t for t in terms if idx.bm25 is not None and t in idx.bm25.vocab_dict]
        if not known:
            return [], {}
        scores = idx.bm25.get_scores(known)
        best = [j for j in np.argsort(-scores, kind="stable")[:n] if scores[j] > 0]
        ranked = [int(idx.ids[j]) for j in best]
        return ranked, {i: float(scores[j]) for i, j in zip(ranked, best, strict=True)}

    def faq_match(self, vector: np.ndarray) -> tuple[StoredChunk, float] | None:
        """The FAQ entry whose *question* is closest to the query, with its cosine."""
        ids, questions, _ = self.faq_vectors()
        if not len(ids):
            return None
        sims = questions @ vector[0]
        best = int(np.argmax(sims))
        chunk = self.kb.chunks([int(ids[best])]).get(int(ids[best]))
        return (chunk, float(sims[best])) if chunk else None
