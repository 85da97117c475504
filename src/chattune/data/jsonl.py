"""JSON Lines: the one reader and the one writer of every ``.jsonl`` file chattune touches.

A record is one compact JSON value on one ``\\n``-terminated line, UTF-8. Reading yields
``(line number, value)`` so every later problem can still say ``FILE:LINE``; writing a whole
file goes through a temporary file and a rename, so a reader never sees half of it.

Example:
    >>> write_jsonl("chats.jsonl", [{"messages": []}])  # doctest: +SKIP
    1
    >>> read_jsonl("chats.jsonl")  # doctest: +SKIP
    [(1, {'messages': []})]
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from chattune.data.files import read_text_file
from chattune.errors import DataError

Record = tuple[int, Any]  # (1-based line number, parsed value)

# Characters json.dumps(ensure_ascii=False) leaves raw that str.splitlines() and JavaScript
# treat as line breaks; escaped, a record stays on one line for every reader downstream.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def parse_jsonl(text: str, path: str | Path, problems: list[str]) -> Iterator[Record]:
    """``(line number, value)`` per non-blank line of ``text``; bad JSON goes to ``problems``.

    For readers that already hold the file's text. Lines are split on ``\\n`` only (a ``\\r``
    before it is JSON whitespace), as the format says: a U+2028 inside a string is not a
    line break, and line numbers match an editor's.

    Example:
        >>> problems = []
        >>> list(parse_jsonl('{"a": 1}\\n\\n{oops\\n', "x.jsonl", problems))
        [(1, {'a': 1})]
        >>> problems
        ['x.jsonl:3: not valid JSON: Expecting property name enclosed in double quotes (column 2)']
    """
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{n}: not valid JSON: {e.msg} (column {e.colno})")


def read_jsonl(
    path: str | Path, problems: list[str] | None = None, missing_ok: bool = False
) -> list[Record]:
    """Every record of a JSONL file with its line number, or every problem at once.

    Args:
        path: the file (UTF-8, a byte-order mark allowed; see :func:`read_text_file`).
        problems: where to put bad lines, to report them with your own; without it, any bad
            line raises :class:`DataError` naming all of them, before a record is used.
        missing_ok: an absent file reads as no records (a log not written yet).

    Example:
        >>> read_jsonl("ratings.jsonl", missing_ok=True)  # doctest: +SKIP
        []
    """
    if missing_ok and not Path(path).exists():
        return []
    found: list[str] = []
    records = list(parse_jsonl(read_text_file(path), path, found))
    if problems is not None:
        problems.extend(found)
    elif found:
        raise DataError(found)
    return records


def dumps_line(record: Any) -> str:
    """One record as one compact JSON line, ending in ``\\n``.

    Example:
        >>> dumps_line({"role": "user", "content": "Grüße"})
        '{"role":"user","content":"Grüße"}\\n'
    """
    # NaN stays allowed: a diverged loss must be logged, not crash the run (Python reads it).
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    return text.translate(_LINE_BREAKS) + "\n"


def write_jsonl(path: str | Path, records: Iterable[Any]) -> int:
    """Replace ``path`` with ``records``, one per line; return how many were written.

    The records go to a temporary file beside ``path`` that is flushed to disk and renamed
    over it, so a crash leaves the old file or the new one, never a mix; ``records`` may be
    a generator (it is consumed once).

    Example:
        >>> write_jsonl("feedback.jsonl", ({"messages": m} for m in []))  # doctest: +SKIP
        0
    """
    target = Path(path)
    # Opened with "x" rather than mkstemp so the new file gets the user's umask, not 0600.
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    count = 0
    try:
        with tmp.open("x", encoding="utf-8", newline="\n") as f:
            for record in records:
                f.write(dumps_line(record))
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)  # the rename itself survives a power cut
    return count


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder; its rename is durable enough
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_jsonl(path: str | Path, *records: Any) -> None:
    """Append records to ``path`` (created if absent), each flushed before returning.

    Each record is one ``write`` of one whole line, so a process killed mid-log leaves at
    most a torn last line, never two records on one line.

    Example:
        >>> append_jsonl("metrics.jsonl", {"step": 1, "loss": 2.5})  # doctest: +SKIP
    """
    with open(path, "a", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(dumps_line(record))
            f.flush()
