"""The search indexes of a knowledge base: FAISS for vectors, bm25s for words.

Both are *derived* data, rebuilt from the chunks and vectors stored in SQLite whenever those
change (re-embedding is the expensive part, and only changed files are re-embedded; building
both indexes for 10,000 chunks takes about a second). That keeps one code path for add,
remove and ``kb rebuild``, and makes a lost or corrupted index recoverable.

Why these libraries: FAISS (Meta, maintained, CPU wheels everywhere) gives exact inner-product
search (``IndexFlatIP``: 10,000 x 384 in about a millisecond) with stable 64-bit ids, and the
same API scales to HNSW/IVF indexes when a knowledge base outgrows brute force; it reads and
writes plain files (no pickle). Chroma and LanceDB are databases with their own embedding
runtimes and storage, more than this needs; hnswlib has no exact mode. bm25s scores BM25 with
sparse matrices (sub-millisecond queries) and saves to .npy/.json files, unlike rank-bm25,
which scores every document in Python per query.

A ``manifest.json`` records the SQLite generation the indexes were built from and a SHA-256
of every index file; opening checks both, so a truncated, edited or stale index is reported
with the fix (``chattune kb rebuild``) instead of returning wrong passages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chattune.errors import ChattuneError

INDEX_DIR = "index"
MANIFEST = "manifest.json"


class KnowledgeError(ChattuneError):
    """A knowledge base is missing, empty, corrupted or used with the wrong embedder."""


def _import_bm25s() -> Any:
    """bm25s, with its logger put back to WARNING: on import it sets itself to DEBUG, which
    overrides the level the CLI chose and prints "Building index from tokens" on every add."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


def bm25_terms(texts: list[str]) -> list[list[str]]:
    """BM25 terms: lower-cased words, English stop words out, Snowball-stemmed."""
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return _import_bm25s().tokenize(
        texts,
        stopwords=list(STOPWORDS_EN_PLUS),
        stemmer=_stemmer(Stemmer),
        return_ids=False,
        show_progress=False,
    )


_LOCAL = threading.local()


def _stemmer(module: Any) -> Any:
    """One Snowball stemmer per thread: PyStemmer objects must not be shared between threads
    (the server retrieves in worker threads)."""
    if not hasattr(_LOCAL, "stemmer"):
        _LOCAL.stemmer = module.Stemmer("english")
    return _LOCAL.stemmer


@dataclass
class Indexes:
    """Loaded indexes; ``ids[i]`` is the chunk id of BM25 document ``i``."""

    dense: Any  # faiss.IndexIDMap2
    bm25: Any  # bm25s.BM25, or None when every chunk has no terms
    ids: np.ndarray


def build(
    folder: Path, generation: int, ids: np.ndarray, vectors: np.ndarray, texts: list[str]
) -> None:
    """Write fresh indexes for these chunks into ``folder/index``, replacing the old ones."""
    import faiss

    bm25s = _import_bm25s()

    tmp = folder / (INDEX_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dense = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(ids):
        dense.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    faiss.write_index(dense, str(tmp / "dense.faiss"))
    np.save(tmp / "ids.npy", ids.astype(np.int64), allow_pickle=False)
    tokens = bm25_terms(texts) if texts else []
    if any(tokens):
        bm25 = bm25s.BM25()
        bm25.index(tokens, show_progress=False)
        bm25.save(str(tmp / "bm25"), show_progress=False)
    files = {
        p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
    }
    manifest = {"generation": generation, "chunks": len(ids), "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    final, old = folder / INDEX_DIR, folder / (INDEX_DIR + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load(folder: Path, generation: int, chunks: int) -> Indexes:
    """Open and verify the indexes; :class:`KnowledgeError` names what is wrong and the fix."""
    import faiss

    bm25s = _import_bm25s()

    where = folder / INDEX_DIR
    fix = f"run `chattune kb rebuild --kb {folder}` to rebuild it from the stored chunks"
    try:
        manifest = json.loads((where / MANIFEST).read_text())
        files: dict[str, str] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise KnowledgeError(
            f"knowledge base {folder}: the index is missing or unreadable; {fix}"
        ) from None
    for name, digest in files.items():
        path = where / name
        if not path.is_file() or _sha256(path) != digest:
            raise KnowledgeError(
                f"knowledge base {folder}: index file {name} is corrupted "
                f"(checksum mismatch); {fix}"
            )
    if manifest.get("generation") != generation or manifest.get("chunks") != chunks:
        raise KnowledgeError(
            f"knowledge base {folder}: the index is out of date with the stored chunks "
            f"(an interrupted kb add/remove?); {fix}"
        )
    dense = faiss.read_index(str(where / "dense.faiss"))
    bm25 = (
        bm25s.BM25.load(str(where / "bm25"), show_progress=False)
        if (where / "bm25").is_dir()
        else None
    )
    return Indexes(dense, bm25, np.load(where / "ids.npy", allow_pickle=False))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
