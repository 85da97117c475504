"""Group structural blocks into retrieval passages ("chunks").

Chunks follow the document's structure: a chunk never spans two sections (heading paths),
whole paragraphs are kept together up to ``max_words``, and a paragraph longer than that is
cut into overlapping word windows. Consecutive chunks of one section overlap by
``overlap_words`` so a fact that straddles a boundary is whole in at least one of them. Each
FAQ entry is exactly one chunk. Words, not model tokens, measure size: all-MiniLM-L6-v2 reads
256 word pieces, and 160 English words stay under that with room for the heading. Chinese
and Japanese are written without spaces (Korean only between phrases), so there each
character, and each CJK punctuation mark, counts as a word: multilingual tokenizers give such
text about one token per character, and a long Chinese paragraph is cut into windows instead
of counting as one "word".

Example:
    >>> from chattune.knowledge.documents import Block
    >>> chunks = chunk_blocks([Block("a b c", ("Intro",)), Block("d e", ("Intro",))], 4, 1)
    >>> [(c.title, c.text) for c in chunks]
    [('Intro', 'a b c'), ('Intro', 'c\\n\\nd e')]
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby, pairwise

from chattune.knowledge.documents import Block
from chattune.knowledge.terms import WIDE_CHARS


@dataclass(frozen=True)
class Chunk:
    """A passage as stored and searched."""

    text: str
    title: str = ""  # heading path, "Shipping > Canada"
    line: int = 1
    faq_id: str | None = None
    question: str | None = None
    answer: str | None = None

    @property
    def index_text(self) -> str:
        """What is embedded and BM25-indexed: the headings give a passage its topic."""
        return f"{self.title}\n{self.text}" if self.title else self.text


#: The one home of the chunk defaults (the knowledge base records them when it is created).
MAX_WORDS = 160
OVERLAP_WORDS = 32


#: One character written without spaces (a CJK letter, CJK or full-width punctuation), or a
#: run of other non-space characters: the words that measure and cut a chunk.
_WORD = re.compile(f"[{WIDE_CHARS}]|[^\\s{WIDE_CHARS}]+")
_IS_WIDE = re.compile(f"[{WIDE_CHARS}]")


def split_words(text: str) -> list[str]:
    """The words of ``text``: whitespace-separated, each CJK character one word.

    Example:
        >>> split_words("Ridgeline 2 帐篷。Packed")
        ['Ridgeline', '2', '帐', '篷', '。', 'Packed']
    """
    return _WORD.findall(text)


def join_words(words: list[str]) -> str:
    """Words back into text: a space between two words unless both are CJK characters.

    Example:
        >>> join_words(["Ridgeline", "2", "帐", "篷", "。", "Packed"])
        'Ridgeline 2 帐篷。 Packed'
    """
    out = words[:1]
    for before, word in pairwise(words):
        out += [word] if _IS_WIDE.match(before) and _IS_WIDE.match(word) else [" ", word]
    return "".join(out)


def count_words(text: str) -> int:
    """How many words ``text`` holds, as :func:`split_words` counts them."""
    return len(split_words(text))


def chunk_blocks(
    blocks: list[Block], max_words: int = MAX_WORDS, overlap_words: int = OVERLAP_WORDS
) -> list[Chunk]:
    """Chunks of ``blocks`` in document order (see the module docstring)."""
    if not 0 <= overlap_words < max_words:
        raise ValueError(f"overlap_words ({overlap_words}) must be below max_words ({max_words})")
    chunks: list[Chunk] = []
    for path, group in groupby(blocks, key=lambda b: (b.path, b.faq_id is not None)):
        section = list(group)
        if path[1]:  # FAQ entries
            chunks += [Chunk(b.text, "", b.line, b.faq_id, b.question, b.answer) for b in section]
        else:
            title = " > ".join(path[0])
            chunks += [
                Chunk(t, title, line) for t, line in _section(section, max_words, overlap_words)
            ]
    return chunks


def _section(blocks: list[Block], max_words: int, overlap: int) -> Iterator[tuple[str, int]]:
    """(text, line) passages of one section."""
    parts: list[str] = []
    size, line, tail = 0, blocks[0].line, ""
    for block in blocks:
        words = split_words(block.text)
        if len(words) > max_words:  # one long paragraph: overlapping word windows
            if parts:
                yield _join(tail, parts), line
            step = max_words - overlap
            for start in range(0, max(len(words) - overlap, 1), step):
                yield join_words(words[start : start + max_words]), block.line
            parts, size, tail = [], 0, join_words(words[-overlap:]) if overlap else ""
            line = block.line
            continue
        if parts and size + len(words) > max_words:
            text = _join(tail, parts)
            yield text, line
            tail = join_words(split_words(text)[-overlap:]) if overlap else ""
            parts, size, line = [], count_words(tail), block.line
        if not parts:
            line = block.line
        parts.append(block.text)
        size += len(words)
    if parts:
        yield _join(tail, parts), line


def _join(tail: str, parts: list[str]) -> str:
    return "\n\n".join([tail, *parts] if tail else parts)
