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
with the fix (``chattune kb rebuild``) instead of returning wrong passages. It also records
the BM25 term scheme (:mod:`chattune.knowledge.terms`), so queries are cut into terms the
way the documents were: an index from before schemes existed is read with the ``words``
scheme it was built with, exactly as then, until a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chattune.errors import ChattuneError
from chattune.knowledge.terms import (
    DEFAULT_SCHEME,
    LEGACY_SCHEME,
    SCHEMES,
    bm25_terms,
    import_bm25s,
)

INDEX_DIR = "index"
MANIFEST = "manifest.json"


class KnowledgeError(ChattuneError):
    """A knowledge base is missing, empty, corrupted or used with the wrong embedder."""


@dataclass
class Indexes:
    """Loaded indexes; ``ids[i]`` is the chunk id of BM25 document ``i``."""

    dense: Any  # faiss.IndexIDMap2
    bm25: Any  # bm25s.BM25, or None when every chunk has no terms
    ids: np.ndarray
    scheme: str = LEGACY_SCHEME  # how the BM25 documents were cut into terms

    def terms(self, text: str) -> list[str]:
        """The BM25 terms of ``text``, cut as this index's documents were."""
        return bm25_terms([text], self.scheme)[0]


def build(
    folder: Path,
    generation: int,
    ids: np.ndarray,
    vectors: np.ndarray,
    texts: list[str],
    scheme: str = DEFAULT_SCHEME,
) -> None:
    """Write fresh indexes for these chunks into ``folder/index``, replacing the old ones;
    BM25 terms are cut by ``scheme``."""
    import faiss

    bm25s = import_bm25s()

    tmp = folder / (INDEX_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dense = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(ids):
        dense.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    faiss.write_index(dense, str(tmp / "dense.faiss"))
    np.save(tmp / "ids.npy", ids.astype(np.int64), allow_pickle=False)
    tokens = bm25_terms(texts, scheme) if texts else []
    if any(tokens):
        bm25 = bm25s.BM25()
        bm25.index(tokens, show_progress=False)
        bm25.save(str(tmp / "bm25"), show_progress=False)
    files = {
        p.relative_to(tmp).as_posix(): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()
    }
    manifest = {"generation": generation, "chunks": len(ids), "terms": scheme, "files": files}
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

    bm25s = import_bm25s()

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
    scheme = str(manifest.get("terms", LEGACY_SCHEME))
    if scheme not in (*SCHEMES, LEGACY_SCHEME):
        raise KnowledgeError(
            f"knowledge base {folder}: the index was built with BM25 terms {scheme!r}, "
            f"which this version does not know; {fix}"
        )
    dense = faiss.read_index(str(where / "dense.faiss"))
    bm25 = (
        bm25s.BM25.load(str(where / "bm25"), show_progress=False)
        if (where / "bm25").is_dir()
        else None
    )
    ids = np.load(where / "ids.npy", allow_pickle=False)
    return Indexes(dense, bm25, ids, scheme)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
