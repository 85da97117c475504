"""Question files for grounded evaluation: what to ask, where the answer is, what it says.

JSONL, one question per line; the keys of ``chattune kb eval`` (so the same file scores
retrieval there), plus the facts a correct reply states and an optional reference reply:

    {"question": "How heavy is the two-person tent?", "source": "products.html",
     "facts": ["1.9 kg"], "reference": "The Ridgeline 2 weighs 1.9 kg packed."}
    {"question": "What does the label cost?", "faq_id": "return-shipping-fee",
     "facts": [["$6.95", "6.95"]]}
    {"question": "Do you sell e-bikes?", "answerable": false}

``facts`` is a list; each item is one fact the reply must contain, as a string or a list of
alternatives (any one will do). ``faq_id`` and ``source`` say which passages hold the answer
(strings or lists; see :mod:`chattune.knowledge.retrieval_eval`). ``id`` names a question
(default ``FILE:LINE``). Every problem is reported at once as ``FILE:LINE``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chattune.data.jsonl import read_jsonl
from chattune.data.types import Message
from chattune.errors import DataError
from chattune.evaluate.examples import TurnExample
from chattune.knowledge.retrieval_eval import Question, string_list

KEYS = ("id", "question", "faq_id", "source", "answerable", "facts", "reference")


@dataclass(frozen=True)
class GroundedQuestion:
    """One question of a grounded test set.

    ``gold`` holds the text, the gold FAQ ids and sources and whether it is answerable, as
    ``kb eval`` reads them (``gold.is_gold(hit)`` says whether a passage holds the answer).
    """

    id: str
    gold: Question
    facts: tuple[tuple[str, ...], ...] = ()
    reference: str | None = None

    @property
    def text(self) -> str:
        return self.gold.text

    @property
    def answerable(self) -> bool:
        return self.gold.answerable

    @property
    def history(self) -> tuple[Message, ...]:
        """The conversation the bot answers: the question, asked on its own."""
        return (Message("user", self.text),)

    def turn(self) -> TurnExample:
        """The question as an evaluation example (its reference reply, or "")."""
        return TurnExample(self.history, self.reference or "", self.id)


def is_question_file(path: str | Path) -> bool:
    """Whether ``path`` is a question file: JSONL whose first row has ``question`` and no
    ``messages`` (a conversation file has ``messages``)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and "question" in row and "messages" not in row


def read_grounded_questions(path: str | Path) -> list[GroundedQuestion]:
    """The questions of ``path``; DataError with every bad line as ``FILE:LINE``."""
    path = Path(path)
    if not path.is_file():
        raise DataError([f"--data {path}: no such file"])
    questions: list[GroundedQuestion] = []
    problems: list[str] = []
    for n, row in read_jsonl(path, problems):
        found = _row_problems(row)
        problems += [f"{path}:{n}: {p}" for p in found]
        if not found:
            questions.append(_question(row, f"{path}:{n}"))
    if problems:
        raise DataError(problems)
    if not questions:
        raise DataError([f"{path}: no questions"])
    return questions


def _row_problems(row: Any) -> list[str]:
    """What is wrong with one row (nothing: it is a question)."""
    if not isinstance(row, dict):
        return ["a question is a JSON object"]
    problems = [f"unknown key {k!r} (keys: {', '.join(KEYS)})" for k in row if k not in KEYS]
    if not isinstance(row.get("question"), str) or not row["question"].strip():
        problems.append("needs a non-empty 'question'")
    gold = {k: string_list(row.get(k)) for k in ("faq_id", "source")}
    problems += [f"'{k}' must be a string or a list of strings" for k in gold if gold[k] is None]
    facts = _facts(row.get("facts"))
    if facts is None:
        problems.append("'facts' must be a list of facts, each a string or a list of strings")
    if "reference" in row and not isinstance(row["reference"], str):
        problems.append("'reference' must be a string")
    if "id" in row and not (isinstance(row["id"], str) and row["id"].strip()):
        problems.append("'id' must be a non-empty string")
    if row.get("answerable", True) not in (True, False):
        problems.append("'answerable' must be true or false")
    elif row.get("answerable", True) is False:
        if any(gold.values()) or facts:
            problems.append("'answerable': false takes no faq_id, source or facts")
    elif None not in gold.values() and not any(gold.values()):
        problems.append("needs 'faq_id' and/or 'source' (where the answer is), or "
                        "'answerable': false")  # fmt: skip
    return problems


def _question(row: dict[str, Any], where: str) -> GroundedQuestion:
    """A valid row as a question."""
    gold = Question(
        row["question"].strip(),
        frozenset(string_list(row.get("faq_id")) or ()),
        tuple(string_list(row.get("source")) or ()),
        row.get("answerable", True),
    )
    reference = row.get("reference")
    return GroundedQuestion(row.get("id", where), gold, _facts(row.get("facts")) or (), reference)


def _facts(value: object) -> tuple[tuple[str, ...], ...] | None:
    """``["45 days", ["$6.95", "6.95"]]`` as alternatives per fact; None if malformed."""
    if value is None:
        return ()
    if not isinstance(value, list):
        return None
    facts = []
    for fact in value:
        alternatives = string_list(fact)
        if not alternatives or not all(a.strip() for a in alternatives):
            return None
        facts.append(tuple(a.strip() for a in alternatives))
    return tuple(facts)
