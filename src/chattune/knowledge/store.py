"""A knowledge base on disk: chunks and their vectors in SQLite, indexes derived from them.

    KB_DIR/kb.sqlite       sources, chunks (text, location, vectors), settings, generation
    KB_DIR/index/          FAISS + BM25 indexes and their manifest (see ``index``)

SQLite is the source of truth and the only thing written in a transaction; the standard
library's ``sqlite3`` is used directly because this is a local single-file store with three
tables and no migrations to run (the server's conversation store, which has those needs, uses
SQLAlchemy and Alembic). Adding a file whose contents are unchanged does nothing; a changed
file's chunks are replaced; ``generation`` counts changes so a stale index is detected.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chattune.errors import DataError
from chattune.knowledge import index
from chattune.knowledge.chunking import (
    MAX_WORDS,
    OVERLAP_WORDS,
    Chunk,
    chunk_blocks,
    count_words,
)
from chattune.knowledge.documents import FORMATS, Unreadable, read_file
from chattune.knowledge.embed import DEFAULT_EMBEDDER, Embedder, load_embedder
from chattune.knowledge.files import AddReport, display_name, files_to_add
from chattune.knowledge.index import KnowledgeError
from chattune.knowledge.terms import DEFAULT_SCHEME, SCHEMES

log = logging.getLogger(__name__)

DB = "kb.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    path TEXT PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL, format TEXT NOT NULL,
    chunks INTEGER NOT NULL, added_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: it is the FAISS id
    source TEXT NOT NULL REFERENCES sources(path) ON DELETE CASCADE,
    ord INTEGER NOT NULL, title TEXT NOT NULL, text TEXT NOT NULL, line INTEGER NOT NULL,
    faq_id TEXT, question TEXT, answer TEXT, vector BLOB NOT NULL, qvector BLOB);
CREATE INDEX IF NOT EXISTS chunks_source ON chunks(source);
"""


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as read back, with where it came from."""

    id: int
    source: str  # the file's name as given when it was added
    format: str
    chunk: Chunk

    @property
    def location(self) -> str:
        """Where in the source: the heading path, FAQ id, page or line."""
        c = self.chunk
        if c.faq_id is not None:
            return f"FAQ {c.faq_id}"
        where = f"page {c.line}" if self.format == "pdf" else f"line {c.line}"
        return f"{c.title} ({where})" if c.title else where


class KnowledgeBase:
    """Open (or with ``create=True`` make) the knowledge base in ``folder``."""

    def __init__(
        self,
        folder: str | Path,
        create: bool = False,
        embedder: str | None = None,
        max_words: int | None = None,
        overlap_words: int | None = None,
        terms: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        db = self.folder / DB
        if not db.is_file():
            if not create:
                raise KnowledgeError(
                    f"--kb {self.folder}: no knowledge base here; create one with "
                    f"`chattune kb add FILES... --kb {self.folder}`"
                )
            self.folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(db, check_same_thread=False)
        self.lock = threading.Lock()  # one connection shared by server threads
        self.db.execute("PRAGMA foreign_keys = ON")
        try:
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise KnowledgeError(
                f"--kb {self.folder}: {db} is not a readable database ({e})"
            ) from None
        if max_words is not None and not 0 <= (overlap_words or 0) < max_words:
            raise KnowledgeError(f"--overlap-words must be below --chunk-words ({max_words})")
        if terms is not None and terms not in SCHEMES:
            raise KnowledgeError(f"--terms {terms}: expected one of {', '.join(SCHEMES)}")
        given = {
            "embedder": embedder,
            "max_words": max_words,
            "overlap_words": overlap_words,
            "terms": terms,
        }
        defaults = {
            "embedder": DEFAULT_EMBEDDER,
            "max_words": MAX_WORDS,
            "overlap_words": OVERLAP_WORDS,
            "terms": DEFAULT_SCHEME,  # also given to a knowledge base made before it existed
        }
        with self.db:
            for key, value in {**defaults, "generation": 0}.items():
                value = given.get(key) if given.get(key) is not None else value
                self.db.execute("INSERT OR IGNORE INTO settings VALUES (?, ?)", (key, str(value)))
        self.settings = dict(self.db.execute("SELECT key, value FROM settings"))
        for key, value in given.items():  # fixed at creation: chunks and vectors must agree
            if value is not None and str(value) != self.settings[key]:
                flag = {"max_words": "chunk-words"}.get(key, key).replace("_", "-")
                raise KnowledgeError(
                    f"--{flag} {value}: {self.folder} was built with {self.settings[key]}; "
                    "that is fixed when a knowledge base is created (use a new --kb folder)"
                )
        self._embedder: Embedder | None = None
        self._indexes: index.Indexes | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.settings["embedder"])
        return self._embedder

    @property
    def generation(self) -> int:
        return int(
            self.db.execute("SELECT value FROM settings WHERE key='generation'").fetchone()[0]
        )

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    # -- changing the knowledge base ------------------------------------------------------

    def add(self, paths: Iterable[str | Path]) -> AddReport:
        """Add files and folders (recursively); skip unreadable ones with a warning each."""
        report = AddReport()
        problems: list[str] = []
        for path in files_to_add(paths, report):
            key, name = str(path.resolve()), display_name(path)
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as e:
                report.skipped.append((name, f"cannot read ({e.strerror})"))
                log.warning("skipped %s: cannot read (%s)", name, e.strerror)
                continue
            old = self.db.execute("SELECT sha256 FROM sources WHERE path=?", (key,)).fetchone()
            if old and old[0] == digest:
                report.unchanged.append(name)
                continue
            try:
                chunks = chunk_blocks(
                    read_file(path),
                    int(self.settings["max_words"]),
                    int(self.settings["overlap_words"]),
                )
            except Unreadable as e:
                report.skipped.append((name, str(e)))
                log.warning("skipped %s: %s", name, e)
                continue
            except DataError as e:
                problems += e.problems
                continue
            if not chunks:
                report.skipped.append((name, "no text found"))
                log.warning("skipped %s: no text found", name)
                continue
            self._replace(key, name, digest, FORMATS[path.suffix.lower()], chunks)
            (report.replaced if old else report.added).append((name, len(chunks)))
        if report.added or report.replaced or self.generation == 0:
            self._reindex()  # also before raising: what was added before a bad file counts
        if problems:
            raise DataError(problems)
        return report

    def remove(self, paths: Iterable[str | Path]) -> list[str]:
        """Remove sources by path (a folder removes everything under it); return their names."""
        removed = []
        for given in paths:
            key = str(Path(given).resolve())
            rows = self.db.execute(
                "SELECT path, name FROM sources WHERE path=? OR path LIKE ?",
                (key, key.rstrip(os.sep) + os.sep + "%"),
            ).fetchall()
            if not rows:
                raise KnowledgeError(
                    f"{given}: not in the knowledge base {self.folder} (see kb list)"
                )
            with self.db:
                for path, name in rows:
                    self.db.execute("DELETE FROM sources WHERE path=?", (path,))
                    removed.append(name)
                self._bump()
        self._reindex()
        return removed

    def rebuild(self) -> int:
        """Rebuild the indexes from the stored chunks and vectors; returns the chunk count."""
        self._reindex()
        return self.count()

    def _replace(self, key: str, name: str, digest: str, fmt: str, chunks: list[Chunk]) -> None:
        vectors = self.embedder.encode([c.index_text for c in chunks])
        questions = [i for i, c in enumerate(chunks) if c.question]
        qvectors = (
            self.embedder.encode([chunks[i].question for i in questions]) if questions else []
        )
        qvec = dict(zip(questions, qvectors, strict=False))
        with self.db:
            self.db.execute("DELETE FROM sources WHERE path=?", (key,))
            self.db.execute(
                "INSERT INTO sources (path, name, sha256, format, chunks) VALUES (?, ?, ?, ?, ?)",
                (key, name, digest, fmt, len(chunks)),
            )
            self.db.executemany(
                "INSERT INTO chunks (source, ord, title, text, line, faq_id, question, answer,"
                " vector, qvector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        key,
                        i,
                        c.title,
                        c.text,
                        c.line,
                        c.faq_id,
                        c.question,
                        c.answer,
                        vectors[i].tobytes(),
                        qvec[i].tobytes() if i in qvec else None,
                    )
                    for i, c in enumerate(chunks)
                ],
            )
            self._bump()

    def _bump(self) -> None:
        self.db.execute("UPDATE settings SET value = value + 1 WHERE key='generation'")

    def _reindex(self) -> None:
        """Rebuild both indexes from SQLite. No model is loaded: the vectors are stored, and
        their width is the blob length (an empty knowledge base gets an empty index)."""
        rows = self.db.execute("SELECT id, vector, title, text FROM chunks ORDER BY id").fetchall()
        dim = len(rows[0][1]) // 4 if rows else 1
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(-1, dim)
        texts = [Chunk(r[3], r[2]).index_text for r in rows]
        index.build(self.folder, self.generation, ids, vectors, texts, self.settings["terms"])
        self._indexes = None

    # -- reading ----------------------------------------------------------------------------

    @property
    def indexes(self) -> index.Indexes:
        """The verified indexes (loaded once); errors if the knowledge base is empty."""
        if self._indexes is None:
            n = self.count()
            if n == 0:
                raise KnowledgeError(
                    f"--kb {self.folder}: the knowledge base is empty; add files with "
                    f"`chattune kb add FILES... --kb {self.folder}`"
                )
            self._indexes = index.load(self.folder, self.generation, n)
        return self._indexes

    def chunks(self, ids: list[int]) -> dict[int, StoredChunk]:
        """Stored chunks by id."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self.lock:
            rows = self.db.execute(
                "SELECT c.id, s.name, s.format, c.text, c.title, c.line, c.faq_id, c.question,"
                " c.answer FROM chunks c JOIN sources s ON s.path = c.source"
                f" WHERE c.id IN ({marks})",
                [int(i) for i in ids],
            ).fetchall()
        return {r[0]: StoredChunk(r[0], r[1], r[2], Chunk(*r[3:])) for r in rows}

    def faq_questions(self) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, question vectors) of every FAQ entry, for answer-template matching."""
        with self.lock:
            rows = self.db.execute(
                "SELECT id, qvector FROM chunks WHERE qvector IS NOT NULL"
            ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        return ids, vectors.reshape(len(rows), self.embedder.dim)

    def sources(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT name, format, chunks, added_at, sha256 FROM sources ORDER BY name"
        ).fetchall()
        keys = ("name", "format", "chunks", "added_at", "sha256")
        return [dict(zip(keys, r, strict=False)) for r in rows]

    def stats(self) -> dict[str, Any]:
        sources = self.sources()
        words = [count_words(t) for (t,) in self.db.execute("SELECT text FROM chunks")]
        size = sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
        formats: dict[str, int] = {}
        for s in sources:
            formats[s["format"]] = formats.get(s["format"], 0) + 1
        faq = self.db.execute("SELECT count(*) FROM chunks WHERE faq_id IS NOT NULL").fetchone()[0]
        return {
            "sources": len(sources),
            "formats": formats,
            "chunks": len(words),
            "faq_entries": int(faq),
            "words_per_chunk_mean": round(float(np.mean(words)), 1) if words else 0.0,
            "words_per_chunk_max": max(words, default=0),
            "embedder": self.settings["embedder"],
            "max_words": int(self.settings["max_words"]),
            "overlap_words": int(self.settings["overlap_words"]),
            "terms": self.settings["terms"],
            "generation": self.generation,
            "disk_bytes": size,
        }
