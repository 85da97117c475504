"""Readers for the dialogue formats people have; each returns validated conversations.

Formats (``--format`` names):

========== ===================================================================================
messages   JSONL, one ``{"messages": [{"role": ..., "content": ...}, ...]}`` per line
           (the OpenAI / Hugging Face chat shape; an optional system turn first)
sharegpt   JSON array or JSONL of ``{"conversations": [{"from": "human", "value": ...}]}``
csv        CSV/TSV with a header; a question and an answer column, named as any
           spelling in :data:`chattune.data.qa.QA_COLUMNS` (question/prompt/input,
           answer/response/output), an optional ``system`` column; one exchange per row
dailydialog text, one dialogue per line, turns separated by ``__eou__``; turns alternate
           user/assistant starting with the user; a final unanswered turn is dropped
text       raw text for continued pre-training: ``.txt``/``.md`` files are one document each;
           JSONL with a ``text`` field is one document per line
========== ===================================================================================

Every problem in a file is collected and raised at once as :class:`DataError`, each line
prefixed with ``FILE:LINE:`` so an editor can jump to it. Bytes become text in
:mod:`chattune.data.files`, JSON Lines are split in :mod:`chattune.data.jsonl` and Q/A tables
are read in :mod:`chattune.data.qa`, the same code the knowledge base reads its files with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chattune.data.files import read_text_file
from chattune.data.jsonl import Record, parse_jsonl
from chattune.data.qa import read_qa_table
from chattune.data.types import Conversation, Document, Message
from chattune.data.validate import to_messages, validate_messages
from chattune.errors import DataError

CONVERSATION_FORMATS = ("messages", "sharegpt", "csv", "dailydialog")
ALL_FORMATS = (*CONVERSATION_FORMATS, "text")


def _read(path: Path) -> str:
    """A data file's text; an empty one is an error here (there is nothing to train on)."""
    text = read_text_file(path)
    if not text.strip():
        raise DataError([f"{path}: empty file"])
    return text


def _json_array_records(path: Path, text: str, problems: list[str]) -> Iterator[Record]:
    """Yield the items of a top-level JSON array with the line each item starts on.

    ``json.load`` would lose positions; decoding item by item with ``raw_decode`` keeps them,
    so errors can still say ``FILE:LINE``.
    """
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if text[i : i + 1] != "[":
        problems.append(f"{path}:1: a .json file must hold an array of conversations")
        return
    i += 1
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        line = text.count("\n", 0, i) + 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})")
            return
        yield line, obj


def _records(path: Path, text: str, problems: list[str]) -> Iterator[Record]:
    if path.suffix.lower() == ".json":
        return _json_array_records(path, text, problems)
    return parse_jsonl(text, path, problems)


def _conversation(
    path: Path, line: int, messages: list[Message], problems: list[str]
) -> Conversation | None:
    found = validate_messages(messages)
    problems.extend(f"{path}:{line}: {p}" for p in found)
    return None if found else Conversation(messages, f"{path}:{line}")


def _from_turns(
    path: Path, text: str, problems: list[str], key: str, role_key: str, content_key: str
) -> list[Conversation]:
    out = []
    for line, obj in _records(path, text, problems):
        if not isinstance(obj, dict) or key not in obj:
            problems.append(f"{path}:{line}: expected an object with a '{key}' list")
            continue
        messages, found = to_messages(obj[key], role_key, content_key)
        if found:
            problems.extend(f"{path}:{line}: {p}" for p in found)
            continue
        if (conv := _conversation(path, line, messages, problems)) is not None:
            out.append(conv)
    return out


def read_messages(path: Path, text: str, problems: list[str]) -> list[Conversation]:
    """``{"messages": [{"role", "content"}, ...]}`` per line (OpenAI / Hugging Face shape)."""
    return _from_turns(path, text, problems, "messages", "role", "content")


def read_sharegpt(path: Path, text: str, problems: list[str]) -> list[Conversation]:
    """``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}``."""
    return _from_turns(path, text, problems, "conversations", "from", "value")


def read_csv(path: Path, text: str, problems: list[str]) -> list[Conversation]:
    """One question/answer exchange per row; ``.tsv`` files are tab-separated."""
    out = []
    for line, row in read_qa_table(path, text, problems):
        messages = [Message("system", row["system"])] if row["system"].strip() else []
        messages += [Message("user", row["user"]), Message("assistant", row["assistant"])]
        if (conv := _conversation(path, line, messages, problems)) is not None:
            out.append(conv)
    return out


def read_dailydialog(path: Path, text: str, problems: list[str]) -> list[Conversation]:
    """One dialogue per line, turns separated by ``__eou__``, alternating user/assistant."""
    out = []
    for line, raw in enumerate(text.split("\n"), start=1):  # "\n" only: editors' lines
        turns = [t.strip() for t in raw.split("__eou__")]
        turns = [t for t in turns if t]
        if not turns:
            continue
        if len(turns) % 2:  # the last utterance has no reply: nothing to learn from it
            turns = turns[:-1]
        roles = ("user", "assistant")
        messages = [Message(roles[i % 2], t) for i, t in enumerate(turns)]  # type: ignore[arg-type]
        if (conv := _conversation(path, line, messages, problems)) is not None:
            out.append(conv)
    return out


Reader = Callable[[Path, str, list[str]], list[Conversation]]
READERS: dict[str, Reader] = {
    "messages": read_messages,
    "sharegpt": read_sharegpt,
    "csv": read_csv,
    "dailydialog": read_dailydialog,
}


def detect_format(path: str | Path, text: str) -> str:
    """Guess a file's format from its extension and first record.

    Example:
        >>> detect_format("chats.jsonl", '{"messages": []}')
        'messages'
    """
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".txt", ".md", ".markdown"):
        return "dailydialog" if "__eou__" in text[:65536] else "text"
    if suffix in (".jsonl", ".json"):
        first = _first_record(Path(path), text)
        if isinstance(first, dict):
            for key, fmt in (("messages", "messages"), ("conversations", "sharegpt")):
                if key in first:
                    return fmt
            if "text" in first:
                return "text"
        raise DataError(
            [
                f"{path}:1: cannot tell the format: expected records with 'messages' "
                f"(chat JSONL), 'conversations' (ShareGPT) or 'text' (raw text); "
                f"pass --format {{{','.join(ALL_FORMATS)}}}"
            ]
        )
    raise DataError(
        [
            f"{path}: unknown file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .txt, "
            f"or pass --format {{{','.join(ALL_FORMATS)}}}"
        ]
    )


def _first_record(path: Path, text: str) -> Any:
    for _, obj in _records(path, text, []):
        return obj
    return None


def read_conversations(path: str | Path, fmt: str = "auto") -> list[Conversation]:
    """Read and validate one file of conversations; raise every problem in it at once.

    Example:
        >>> convs = read_conversations("examples/support/train.jsonl")  # doctest: +SKIP
        >>> convs[0].messages[0].role  # doctest: +SKIP
        'system'
    """
    p = Path(path)
    text = _read(p)
    fmt = detect_format(p, text) if fmt == "auto" else fmt
    if fmt == "text":
        raise DataError([f"{p}: raw text has no conversations; train on it with --objective lm"])
    if fmt not in READERS:
        raise DataError([f"{p}: unknown format {fmt!r}; choose one of {', '.join(ALL_FORMATS)}"])
    problems: list[str] = []
    conversations = READERS[fmt](p, text, problems)
    if problems:
        raise DataError(problems)
    if not conversations:
        raise DataError([f"{p}: no conversations found"])
    return conversations


def read_documents(path: str | Path, fmt: str = "auto") -> list[Document]:
    """Read raw text for the ``lm`` objective: a whole text file, or JSONL ``text`` records.

    Conversation files are accepted too: each conversation's turns become one document.
    """
    p = Path(path)
    text = _read(p)
    fmt = detect_format(p, text) if fmt == "auto" else fmt
    if fmt in READERS:
        return [
            Document("\n".join(m.content for m in c.messages), c.source)
            for c in read_conversations(p, fmt)
        ]
    if p.suffix.lower() not in (".jsonl", ".json"):
        return [Document(text, str(p))]
    problems: list[str] = []
    docs = []
    for line, obj in _records(p, text, problems):
        value = obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{p}:{line}: expected an object with a non-empty 'text' string")
            continue
        docs.append(Document(value, f"{p}:{line}"))
    if problems:
        raise DataError(problems)
    return docs


def read_many(paths: list[str], fmt: str = "auto", objective: str = "chat") -> list[Any]:
    """Read several files, reporting the problems of all of them together."""
    items: list[Any] = []
    problems: list[str] = []
    for path in paths:
        try:
            items += (
                read_documents(path, fmt) if objective == "lm" else read_conversations(path, fmt)
            )
        except DataError as e:
            problems += e.problems
    if problems:
        raise DataError(problems)
    return items
