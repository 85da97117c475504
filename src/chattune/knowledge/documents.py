"""Read knowledge files into structural blocks: the unit that chunking groups.

A block is a heading-scoped piece of a document (a paragraph, a list, a table, a code block)
with the heading path above it and the line (or PDF page) it starts on, or one FAQ entry.
Parsing uses the libraries made for each format (markdown-it-py's token line maps, so a
``#`` inside a code fence is not a heading; BeautifulSoup for HTML; pypdf for PDF).

Example:
    >>> blocks = parse_document("# Shipping\\n\\nFree over $60.\\n", "markdown")
    >>> blocks[0].path, blocks[0].text, blocks[0].line
    (('Shipping',), 'Free over $60.', 3)
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from chattune.data.files import NotText, decode_text
from chattune.data.qa import read_qa_table
from chattune.errors import DataError
from chattune.knowledge.terms import WIDE_CHARS

#: file suffix -> format; anything else is skipped with a warning.
FORMATS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".csv": "faq",
    ".tsv": "faq",
    ".jsonl": "faq",
}


@dataclass(frozen=True)
class Block:
    """One structural piece of a document, or one FAQ entry (``faq_id`` set)."""

    text: str
    path: tuple[str, ...] = ()  # headings above the block, outermost first
    line: int = 1  # 1-based line (page for PDF) where the block starts
    faq_id: str | None = None
    question: str | None = None
    answer: str | None = None


class Unreadable(Exception):
    """A file that cannot be read as its format; kb add skips it with this reason."""


def read_file(path: Path) -> list[Block]:
    """Blocks of ``path`` by its suffix; raises :class:`Unreadable` or :class:`DataError`."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise Unreadable(f"unsupported file type {path.suffix or '(none)'!r}")
    data = path.read_bytes()
    if fmt == "pdf":
        return read_pdf(data)
    try:
        text = decode_text(data, path)  # the same decoding as training data
    except NotText as e:
        raise Unreadable(f"line {e.line}: {e.reason}") from None
    if fmt == "faq":
        return read_faq(text, path)
    return parse_document(text, fmt)


def parse_document(text: str, fmt: str) -> list[Block]:
    """Blocks of a Markdown, HTML or plain-text document already read into ``text``."""
    if fmt == "markdown":
        return _markdown(text)
    if fmt == "html":
        return _html(text)
    return _paragraphs(text, (), 1)


def _paragraphs(text: str, path: tuple[str, ...], first_line: int) -> list[Block]:
    """Split on blank lines, keeping each paragraph's starting line."""
    blocks, line = [], first_line
    for part in re.split(r"(\n[ \t]*\n)", text):
        if part.strip() and not re.fullmatch(r"\n[ \t]*\n", part):
            lead = len(part) - len(part.lstrip("\n"))
            blocks.append(Block(part.strip(), path, line + lead))
        line += part.count("\n")
    return blocks


def _markdown(text: str) -> list[Block]:
    from markdown_it import MarkdownIt

    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    blocks: list[Block] = []
    headings: list[tuple[int, str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.type == "heading_open":
            level = int(tok.tag[1])
            headings = [h for h in headings if h[0] < level] + [(level, tokens[i + 1].content)]
            i += 3  # heading_open, inline, heading_close
            continue
        if tok.level == 0 and tok.map and tok.type != "hr" and not tok.type.endswith("_close"):
            start, end = tok.map
            body = "\n".join(lines[start:end]).strip()
            if body:
                blocks.append(Block(body, tuple(h[1] for h in headings), start + 1))
        i += 1
    return blocks


_HTML_BLOCKS = ["p", "li", "pre", "table", "blockquote", "dd", "dt", "td", "th", "div"]


def _html(text: str) -> list[Block]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "nav", "footer", "head"]):
        tag.decompose()
    for tag in soup.find_all(_hidden):  # text a reader never sees must not answer customers
        tag.decompose()
    blocks: list[Block] = []
    headings: list[tuple[int, str]] = []
    heading_tags = [f"h{n}" for n in range(1, 7)]
    for el in soup.find_all([*heading_tags, *_HTML_BLOCKS]):
        if el.name in heading_tags:
            level = int(el.name[1])
            title = el.get_text(" ", strip=True)
            headings = [h for h in headings if h[0] < level] + [(level, title)]
            continue
        # Only the outermost block element: a <p> inside an <li> belongs to the <li>, and a
        # <div> counts only for text of its own that no inner block element carries.
        if el.find_parent(_HTML_BLOCKS):
            continue
        if el.name == "div" and el.find([*heading_tags, *_HTML_BLOCKS]):
            continue
        body = el.get_text(" ", strip=True)
        if body:
            line = el.sourceline or 1
            blocks.append(Block(body, tuple(h[1] for h in headings), line))
    return blocks


_INVISIBLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.IGNORECASE)


def _hidden(tag: object) -> bool:
    """An element a browser does not show: ``hidden``, ``aria-hidden``, or an inline
    ``display:none`` / ``visibility:hidden`` style (stylesheets are not evaluated)."""
    attrs = getattr(tag, "attrs", None) or {}
    return (
        "hidden" in attrs
        or str(attrs.get("aria-hidden", "")).lower() == "true"
        or bool(_INVISIBLE.search(str(attrs.get("style", ""))))
    )


def read_pdf(data: bytes) -> list[Block]:
    """Paragraph blocks per page; ``line`` is the page number."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise Unreadable("encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as e:
        raise Unreadable(f"not a readable PDF ({e})") from None
    blocks = []
    for number, page in enumerate(pages, 1):
        for block in _paragraphs(page, (), 1):
            blocks.append(Block(unwrap_lines(block.text), (), number))
    return blocks


_CJK_BREAK = re.compile(f"(?<=[{WIDE_CHARS}])[^\\S\\n]*\\n\\s*(?=[{WIDE_CHARS}])")


def unwrap_lines(text: str) -> str:
    """A paragraph's lines joined by spaces, or by nothing between two CJK characters:
    Chinese and Japanese are written without spaces, and a PDF breaks lines mid-sentence.

    Example:
        >>> unwrap_lines("Free over\\n$60. 我们发货\\n到加拿大。")
        'Free over $60. 我们发货到加拿大。'
    """
    return re.sub(r"\s*\n\s*", " ", _CJK_BREAK.sub("", text))


def read_faq(text: str, path: Path) -> list[Block]:
    """FAQ entries from CSV/TSV (a header row) or JSONL: a question, an answer, an ``id``.

    The columns may be named as any spelling of :data:`chattune.data.qa.QA_COLUMNS`
    (``question``/``prompt``/``input``, ``answer``/``response``/``output``), as in training
    CSVs. Entries without an ``id`` get ``L<line>``. Every bad row is reported as FILE:LINE.
    """
    problems: list[str] = []
    rows = read_qa_table(path, text, problems)
    blocks, seen = [], {}
    for n, row in rows:
        q, a = row["user"].strip(), row["assistant"].strip()
        faq_id = row["id"].strip() or f"L{n}"
        missing = [name for name, value in (("question", q), ("answer", a)) if not value]
        if missing:
            problems.append(f"{path}:{n}: empty or missing {' and '.join(missing)}")
        elif faq_id in seen:
            problems.append(f"{path}:{n}: id {faq_id!r} already used on line {seen[faq_id]}")
        else:
            seen[faq_id] = n
            blocks.append(Block(f"{q}\n{a}", (), n, faq_id, q, a))
    if problems:
        raise DataError(problems)
    return blocks
