"""Intent files: ``text,intent`` rows (CSV, TSV or JSONL), entities marked inside the text.

An entity is marked as a Markdown link, ``[surface text](entity_type)``, as Rasa writes
training data; the marks are removed from the text the classifier sees and kept as
character spans for the token classifier and for evaluation::

    text,intent
    where is order [PC-104233](order_id)?,order_status
    "I paid [$84.50](amount), refund it",refund

Columns may be named ``text``/``utterance``/``sentence``/``example`` and
``intent``/``label``/``class`` (case-insensitive). Every problem is reported at once as
``FILE:LINE`` (a mark that is not closed, an entity type that is no identifier, an empty
text or intent), as for dialogue data.

Example:
    >>> parse_marked("where is order [PC-104233](order_id)?")
    ('where is order PC-104233?', [Span(type='order_id', start=15, end=24)])
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from chattune.data.files import read_text_file
from chattune.data.jsonl import parse_jsonl
from chattune.errors import DataError

TEXT_COLUMNS = ("text", "utterance", "sentence", "example")
INTENT_COLUMNS = ("intent", "label", "class")
MAX_TEXT_CHARS = 2000

_MARK = re.compile(r"\[([^\[\]]+)\]\(([^()\s]*)\)")


@dataclass(frozen=True)
class Span:
    type: str
    start: int
    end: int


@dataclass(frozen=True)
class IntentExample:
    """One labelled customer message; ``where`` is its ``FILE:LINE``."""

    text: str
    intent: str
    spans: list[Span] = field(default_factory=list)
    where: str = ""


def parse_marked(text: str) -> tuple[str, list[Span]]:
    """The text without entity marks, and the marked spans in it.

    Raises:
        ValueError: a bracket left open or a mark's type that is not an identifier.
    """
    out, spans, last = [], [], 0
    for m in _MARK.finditer(text):
        kind = m.group(2)
        if not kind.isidentifier():
            raise ValueError(
                f"entity mark [{m.group(1)}]({kind}): the type must be a name like order_id"
            )
        out.append(text[last : m.start()])
        start = sum(len(p) for p in out)
        out.append(m.group(1))
        spans.append(Span(kind, start, start + len(m.group(1))))
        last = m.end()
    out.append(text[last:])
    plain = "".join(out)
    if re.search(r"\[[^\]]*\]\(", plain):
        raise ValueError("an entity mark is not closed: write [surface text](entity_type)")
    return plain, spans


def read_intents(path: str | Path) -> list[IntentExample]:
    """Every example of an intents file; a :class:`DataError` naming every bad line."""
    path = Path(path)
    text = read_text_file(path)
    problems: list[str] = []
    rows = _rows(path, text, problems)
    examples = []
    for line, raw_text, intent in rows:
        where = f"{path}:{line}"
        raw_text, intent = raw_text.strip(), intent.strip()
        if not raw_text:
            problems.append(f"{where}: empty text")
            continue
        if not intent:
            problems.append(f"{where}: empty intent; every example needs one")
            continue
        if len(raw_text) > MAX_TEXT_CHARS:
            problems.append(
                f"{where}: text of {len(raw_text)} characters; at most "
                f"{MAX_TEXT_CHARS} (a customer message, not a document)"
            )
            continue
        try:
            plain, spans = parse_marked(raw_text)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        examples.append(IntentExample(plain, intent, spans, where))
    if not examples and not problems:
        problems.append(f"{path}: no examples")
    if problems:
        raise DataError(problems)
    return examples


def _rows(path: Path, text: str, problems: list[str]) -> list[tuple[int, str, str]]:
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, record in parse_jsonl(text, path, problems):
            if not isinstance(record, dict):
                problems.append(f'{path}:{n}: expected {{"text": "...", "intent": "..."}}')
                continue
            t, i = _pick(record, TEXT_COLUMNS), _pick(record, INTENT_COLUMNS)
            rows.append(
                (n, str(record.get(t, "") if t else ""), str(record.get(i, "") if i else ""))
            )
        return rows
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = [h for h in reader.fieldnames or [] if h is not None]
    t, i = _pick(header, TEXT_COLUMNS), _pick(header, INTENT_COLUMNS)
    if t is None or i is None:
        have = ", ".join(repr(h) for h in header) or "none"
        problems.append(
            f"{path}:1: an intents table needs a text column ({'/'.join(TEXT_COLUMNS)}) "
            f"and an intent column ({'/'.join(INTENT_COLUMNS)}); columns found: {have}"
        )
        return []
    return [(reader.line_num, row.get(t) or "", row.get(i) or "") for row in reader]


def _pick(names: object, wanted: tuple[str, ...]) -> str | None:
    by_lower = {str(n).strip().lower(): str(n) for n in names}  # type: ignore[attr-defined]
    return next((by_lower[w] for w in wanted if w in by_lower), None)


def span_scores(
    pairs: Iterable[tuple[set[tuple[str, int, int]], set[tuple[str, int, int]]]],
) -> dict[str, dict[str, float]]:
    """Exact-span precision, recall and F1 per type from (gold, found) sets of
    ``(type, start, end)``, one pair per text.

    Example:
        >>> span_scores([({("date", 0, 5)}, {("date", 0, 5), ("date", 9, 12)})])["date"]["f1"]
        0.6667
    """
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for gold, found in pairs:
        tp.update(k for k, *_ in found & gold)
        fp.update(k for k, *_ in found - gold)
        fn.update(k for k, *_ in gold - found)
    out = {}
    for kind in sorted(set(tp) | set(fp) | set(fn)):
        p = tp[kind] / max(tp[kind] + fp[kind], 1)
        r = tp[kind] / max(tp[kind] + fn[kind], 1)
        out[kind] = {"precision": round(p, 4), "recall": round(r, 4),
                     "f1": round(2 * p * r / max(p + r, 1e-12), 4),
                     "support": tp[kind] + fn[kind]}  # fmt: skip
    return out


def counts(examples: list[IntentExample]) -> Counter[str]:
    """Examples per intent."""
    return Counter(e.intent for e in examples)
