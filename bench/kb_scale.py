"""A 10,000-chunk knowledge base on this CPU: ingest throughput and query latency.

Builds a synthetic support corpus (500 Markdown files x 20 sections, one chunk per section,
~90 words each) with the embedded all-MiniLM-L6-v2, then times 300 queries without the LLM.

Peers, in the same run on the same vectors and model:
  ingest  sentence-transformers ``model.encode`` over the same texts: the embedding alone,
          so the ratio is what parsing, chunking, SQLite and both indexes add on top
  query   sentence-transformers ``util.semantic_search`` (encode + exact torch search): the
          library's own dense retrieval, so the ratio is what BM25, fusion, the gate and
          reading passages back from SQLite cost

    python bench/kb_scale.py [--docs 500] [--sections 20] [--queries 300]

Target (issue #5): query p95 under 50 ms for the full hybrid pipeline.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from chattune.knowledge.chunking import Chunk
from chattune.knowledge.retrieve import Retriever
from chattune.knowledge.store import KnowledgeBase

PRODUCTS = [
    "tent",
    "sleeping bag",
    "kayak",
    "headlamp",
    "stove",
    "daypack",
    "jacket",
    "boots",
    "trekking poles",
    "fleece",
    "water filter",
    "camp chair",
    "hammock",
    "cooler",
]
TOPICS = [
    "warranty",
    "returns",
    "shipping",
    "care",
    "sizing",
    "repairs",
    "rentals",
    "pricing",
    "materials",
    "safety",
    "storage",
    "cleaning",
    "accessories",
    "availability",
]
FILLER = (
    "customers can choose between several options depending on the season terrain and budget "
    "while our team checks every order before it leaves the warehouse and answers questions "
    "by phone email or chat within one business day for most requests"
)
WORDS = FILLER.split()


def sentence(rng: random.Random, product: str, topic: str) -> str:
    filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14)))
    return (
        f"The {product} {topic} policy {rng.choice(['covers', 'includes', 'excludes'])} "
        f"{rng.randint(1, 90)} days and {filler}."
    )


def write_corpus(folder: Path, docs: int, sections: int, seed: int = 0) -> list[str]:
    """Markdown files; returns one query per section (a sentence of it, lightly edited)."""
    rng = random.Random(seed)
    queries = []
    for d in range(docs):
        product = f"{rng.choice(PRODUCTS)} model {d}"
        lines = [f"# {product.title()}"]
        for s in range(sections):
            topic = TOPICS[s % len(TOPICS)]
            body = [sentence(rng, product, topic) for _ in range(6)]
            lines += ["", f"## {topic.title()} {s}", "", " ".join(body)]
            queries.append(f"what does the {product} {topic} policy cover")
        (folder / f"doc{d:04d}.md").write_text("\n".join(lines) + "\n")
    return queries


def percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=500)
    ap.add_argument("--sections", type=int, default=20)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    corpus = work / "corpus"
    corpus.mkdir()
    queries = write_corpus(corpus, args.docs, args.sections)
    rng = random.Random(1)
    sample = rng.sample(queries, min(args.queries, len(queries)))

    kb = KnowledgeBase(work / "kb", create=True, embedder="minilm")
    kb.embedder.encode(["warm-up"])  # model load is not ingest
    start = time.perf_counter()
    kb.add([corpus])
    ingest_s = time.perf_counter() - start
    n = kb.count()

    rows = kb.db.execute("SELECT title, text FROM chunks ORDER BY id").fetchall()
    texts = [Chunk(text, title).index_text for title, text in rows]
    model = kb.embedder.model  # the same SentenceTransformer object
    start = time.perf_counter()
    corpus_emb = model.encode(
        texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True
    )
    encode_s = time.perf_counter() - start

    start = time.perf_counter()
    kb.rebuild()
    rebuild_s = time.perf_counter() - start

    retriever = Retriever(kb)
    timings: dict[str, list[float]] = {m: [] for m in ("hybrid", "dense", "bm25")}
    for q in sample[:5]:
        retriever.search(q)  # warm-up
    for q in sample:
        for mode, ms in timings.items():
            t = time.perf_counter()
            retriever.search(q, k=5, mode=mode)  # type: ignore[arg-type]
            ms.append((time.perf_counter() - t) * 1000)

    from sentence_transformers import util

    peer: list[float] = []
    for q in sample:
        t = time.perf_counter()
        emb = model.encode([q], convert_to_tensor=True, normalize_embeddings=True)
        util.semantic_search(emb, corpus_emb, top_k=5)
        peer.append((time.perf_counter() - t) * 1000)

    print(
        f"knowledge base: {n} chunks from {args.docs} files, "
        f"{kb.stats()['disk_bytes'] / 1e6:.1f} MB on disk"
    )
    print(f"ingest  chattune kb add        {ingest_s:7.1f} s  {n / ingest_s:7.1f} chunks/s")
    print(
        f"        model.encode only      {encode_s:7.1f} s  {n / encode_s:7.1f} chunks/s"
        f"  (chattune/peer time {ingest_s / encode_s:.2f}x)"
    )
    print(f"        kb rebuild (no embedding) {rebuild_s:5.2f} s")
    p50_peer, p95_peer = percentiles(peer)
    print(f"query latency over {len(sample)} queries (ms)     p50     p95")
    for mode, ms in timings.items():
        p50, p95 = percentiles(ms)
        print(f"  chattune {mode:<27} {p50:6.1f}  {p95:6.1f}")
    print(f"  sentence-transformers semantic_search {p50_peer:6.1f}  {p95_peer:6.1f}")
    p50, p95 = percentiles(timings["hybrid"])
    print(
        f"hybrid / peer: p50 {p50 / p50_peer:.2f}x, p95 {p95 / p95_peer:.2f}x; "
        f"target p95 < 50 ms: {'met' if p95 < 50 else 'MISSED'}"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
