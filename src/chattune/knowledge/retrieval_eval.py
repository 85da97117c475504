"""``chattune kb eval``: does retrieval find the passage that answers each question, and
does the bot answer the questions it can and decline the ones it can't?

A questions file is JSONL, one question per line with its gold answer location(s), or
marked as one the knowledge base cannot answer:

    {"question": "Is there a deadline for returns?", "faq_id": "returns-window"}
    {"question": "How heavy is the tent?", "source": "products.html"}
    {"question": "Who won the world cup?", "answerable": false}

``faq_id`` and ``source`` may be strings or lists; a hit is gold when it is one of the FAQ
entries or comes from one of the sources (a path, matched on its trailing components). Both
may be given when an FAQ entry and a document both answer the question.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chattune.data.jsonl import read_jsonl
from chattune.data.types import Message
from chattune.errors import DataError
from chattune.knowledge.grounding import Knowledge
from chattune.knowledge.retrieve import Hit, Mode, Retriever


@dataclass(frozen=True)
class Question:
    text: str
    faq_ids: frozenset[str]
    sources: tuple[str, ...]
    answerable: bool = True

    def is_gold(self, hit: Hit) -> bool:
        if hit.chunk.chunk.faq_id is not None and hit.chunk.chunk.faq_id in self.faq_ids:
            return True
        name = hit.chunk.source
        return any(name == s or name.endswith("/" + s.lstrip("/")) for s in self.sources)


def read_questions(path: str | Path) -> list[Question]:
    """Questions from JSONL; every bad line is reported as FILE:LINE."""
    path = Path(path)
    if not path.is_file():
        raise DataError([f"--data {path}: no such file"])
    questions, problems = [], []
    for n, row in read_jsonl(path, problems):
        if not isinstance(row, dict) or not str(row.get("question") or "").strip():
            problems.append(f"{path}:{n}: needs a non-empty 'question'")
            continue
        faq, src = string_list(row.get("faq_id")), string_list(row.get("source"))
        if row.get("answerable", True) is False:
            if faq or src:
                problems.append(f"{path}:{n}: 'answerable': false takes no faq_id or source")
            else:
                questions.append(Question(row["question"].strip(), frozenset(), (), False))
            continue
        if faq is None or src is None or not (faq or src):
            problems.append(
                f"{path}:{n}: needs 'faq_id' and/or 'source' (a string or a list of strings)"
            )
            continue
        questions.append(Question(row["question"].strip(), frozenset(faq), tuple(src)))
    if problems:
        raise DataError(problems)
    if not questions:
        raise DataError([f"{path}: no questions"])
    return questions


def string_list(value: object) -> list[str] | None:
    """A string or a list of strings as a list (``[]`` for None); None if it is neither
    (the caller reports the key as malformed)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def score_retrieval(
    retriever: Retriever, questions: list[Question], mode: Mode = "hybrid", k: int = 10
) -> dict[str, float]:
    """hit@1, hit@5, MRR (over the top ``k``) and per-query latency in milliseconds, over
    the answerable questions.

    Latency covers everything a chat turn pays for retrieval: embedding the question,
    both searches, fusion and reading the passages back.
    """
    questions = [q for q in questions if q.answerable]
    ranks, latencies = [], []
    for q in questions:
        start = time.perf_counter()
        hits = retriever.search(q.text, k=k, mode=mode)
        latencies.append((time.perf_counter() - start) * 1000)
        ranks.append(next((r for r, h in enumerate(hits, 1) if q.is_gold(h)), None))
    n = len(questions)
    return {
        "questions": n,
        "hit@1": sum(r == 1 for r in ranks) / n,
        "hit@5": sum(r is not None and r <= 5 for r in ranks) / n,
        "mrr": sum(1 / r for r in ranks if r) / n,
        "latency_ms_p50": float(np.percentile(latencies, 50)),
        "latency_ms_p95": float(np.percentile(latencies, 95)),
    }


def abstention(knowledge: Knowledge, questions: list[Question]) -> dict[str, float | int]:
    """How the bot's grounding decision fares, each question asked on its own.

    ``answered``: answerable questions that got passages or an FAQ answer (not "don't know");
    ``declined``: unanswerable ones that got "don't know". The rest reach the model with
    passages that do not hold the answer, where only the prompt's instruction stands
    between it and an invented answer.
    """
    answerable = [q for q in questions if q.answerable]
    unanswerable = [q for q in questions if not q.answerable]

    def declines(q: Question) -> bool:
        return knowledge.ground([Message("user", q.text)]).kind == "no_answer"

    answered = sum(not declines(q) for q in answerable)
    declined = sum(declines(q) for q in unanswerable)
    return {
        "answerable": len(answerable),
        "answered": answered / len(answerable) if answerable else float("nan"),
        "unanswerable": len(unanswerable),
        "declined": declined / len(unanswerable) if unanswerable else float("nan"),
    }
