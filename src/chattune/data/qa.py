"""Question/answer tables: one column-alias table for training CSVs and knowledge FAQs.

People name the columns of a Q/A table many ways; every spelling listed in
:data:`QA_COLUMNS` works wherever such a table is read (``chattune train`` on a CSV,
``chattune kb add`` on a FAQ), matched case-insensitively, the first one present winning.

Example:
    >>> rows = read_qa_table("faq.csv", "Prompt,Response\\nHi?,Hello.\\n", [])
    >>> rows
    [(2, {'user': 'Hi?', 'assistant': 'Hello.', 'system': '', 'id': ''})]
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from chattune.data.jsonl import parse_jsonl

#: field -> the column names (lower case) that hold it, in order of preference.
QA_COLUMNS: dict[str, tuple[str, ...]] = {
    "user": ("question", "prompt", "input"),
    "assistant": ("answer", "response", "output"),
    "system": ("system",),
    "id": ("id",),
}
REQUIRED = ("user", "assistant")

QARow = tuple[int, dict[str, str]]  # (line number, {field: value}); absent fields are ""


def match_columns(names: Iterable[str]) -> dict[str, str]:
    """Which of ``names`` holds each field of :data:`QA_COLUMNS` (fields absent are left out).

    Example:
        >>> match_columns(["ID", " Input ", "output", "notes"])
        {'user': ' Input ', 'assistant': 'output', 'id': 'ID'}
    """
    by_lower = {}
    for name in names:
        by_lower.setdefault(name.strip().lower(), name)
    found = {}
    for field, aliases in QA_COLUMNS.items():
        if (name := next((by_lower[a] for a in aliases if a in by_lower), None)) is not None:
            found[field] = name
    return found


def missing_columns_problem(where: str, names: Iterable[str]) -> str:
    """The error for a table without a question or an answer column, naming what it has."""
    have = ", ".join(repr(n) for n in names) or "none (no header row)"
    return (
        f"{where}: a question/answer table needs a question column "
        f"({' / '.join(QA_COLUMNS['user'])}) and an answer column "
        f"({' / '.join(QA_COLUMNS['assistant'])}); optional: system, id; columns found: {have}"
    )


def _fields(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, str]:
    values = {}
    for field in QA_COLUMNS:
        value = row.get(columns[field]) if field in columns else None
        values[field] = "" if value is None else str(value)
    return values


def read_qa_table(path: str | Path, text: str, problems: list[str]) -> list[QARow]:
    """Rows of a CSV, TSV (by suffix) or JSONL Q/A table as ``{user, assistant, system, id}``.

    A CSV/TSV needs a header naming a question and an answer column, else one problem for
    line 1 and no rows. A JSONL record is matched on its own keys (records may differ); a
    field it lacks reads as ``""``.
    Values are returned as written (not stripped); judging them is the caller's business.
    Problems are ``FILE:LINE:`` strings appended to ``problems``.
    """
    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        return _jsonl_rows(path, text, problems)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = [h for h in reader.fieldnames or [] if h is not None]
    columns = match_columns(header)
    if not all(f in columns for f in REQUIRED):
        problems.append(missing_columns_problem(f"{path}:1", header))
        return []
    # line_num is the physical line a row ended on: a quoted answer may span lines.
    return [(reader.line_num, _fields(row, columns)) for row in reader]


def _jsonl_rows(path: Path, text: str, problems: list[str]) -> list[QARow]:
    rows = []
    for n, record in parse_jsonl(text, path, problems):
        if not isinstance(record, dict):
            problems.append(
                f"{path}:{n}: expected an object like "
                '{"question": "...", "answer": "..."}, '
                f"got {type(record).__name__}"
            )
            continue
        # A record missing a field gets "" for it: the caller names the empty field.
        rows.append((n, _fields(record, match_columns(record))))
    return rows
