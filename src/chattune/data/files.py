"""Text files in, one way: UTF-8 (a byte-order mark allowed), no NUL bytes, errors as FILE:LINE.

Every reader of user files (training data, FAQ tables, knowledge documents, question sets)
decodes through :func:`decode_text`, so a file that one command accepts is not refused by
another, and a bad byte is reported at the line an editor shows it on.

Example:
    >>> decode_text(b"\\xef\\xbb\\xbfquestion,answer\\n", "faq.csv")
    'question,answer\\n'
"""

from __future__ import annotations

import codecs
from pathlib import Path

from chattune.errors import DataError


class NotText(DataError):
    """A file that is not UTF-8 text: binary (NUL bytes) or another encoding.

    A :class:`DataError` with one ``FILE:LINE:`` problem; ``line`` and ``reason`` are kept
    apart for callers that skip such files instead of failing (``kb add``).
    """

    def __init__(self, path: str | Path, line: int, reason: str) -> None:
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__([f"{path}:{line}: {reason}"])


def decode_text(raw: bytes, path: str | Path) -> str:
    """Decode a file's bytes as UTF-8; ``path`` only names the file in errors.

    Raises:
        NotText: the bytes hold a NUL (binary data, or UTF-16) or are not valid UTF-8; the
            problem names the line of the first bad byte and its offset in the file.

    Example:
        >>> decode_text(b"ok\\n\\xff\\n", "a.txt")
        Traceback (most recent call last):
        chattune.data.files.NotText: a.txt:2: not valid UTF-8 (byte 3); re-save the file as UTF-8
    """
    # Spreadsheet exports start with a byte-order mark; drop it ourselves (rather than use
    # "utf-8-sig") so the byte offsets below count from the start of the file.
    skip = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    # NUL is valid UTF-8, so decoding alone would let binary files and UTF-16 through.
    if (nul := raw.find(b"\x00", skip)) != -1:
        line = raw.count(b"\n", 0, nul) + 1
        raise NotText(path, line, f"binary file (NUL byte at byte {nul}), not text")
    try:
        return raw[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        bad = skip + e.start
        line = raw.count(b"\n", 0, bad) + 1
        raise NotText(
            path, line, f"not valid UTF-8 (byte {bad}); re-save the file as UTF-8"
        ) from None


def read_text_file(path: str | Path) -> str:
    """The text of a user's file, with every way reading it can fail as a :class:`DataError`.

    An empty file is returned as ``""``; whether that is an error is the caller's call.

    Example:
        >>> read_text_file("examples/support/train.jsonl")[:12]  # doctest: +SKIP
        '{"messages":'
    """
    p = Path(path)
    if not p.exists():
        raise DataError([f"{p}: no such file"])
    if p.is_dir():
        raise DataError([f"{p}: is a folder; pass the files inside it"])
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError([f"{p}: cannot read ({e.strerror})"]) from None
    return decode_text(raw, p)
