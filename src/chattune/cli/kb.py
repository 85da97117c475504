"""``chattune kb <verb>``: build, inspect, search and evaluate a knowledge base.

The knowledge package only logs; these commands print. It is imported inside each command,
so ``chattune --help`` stays instant (:data:`Mode` and :data:`Terms` mirror its retrieval
modes and BM25 term schemes; tests keep them equal).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from chattune.cli.command import Command
from chattune.config import Section

Mode = Literal["hybrid", "dense", "bm25", "rrf"]
Terms = Literal["bigram", "jieba"]


class KbConfig(Section):
    """Every ``kb`` command: which knowledge base."""

    kb: str = Field(min_length=1, description="knowledge base folder")


class KbAddConfig(KbConfig):
    paths: list[str] = Field(min_length=1, description="files or folders")
    embedder: str | None = Field(
        None,
        description="minilm (default), hashing, or a sentence-transformers folder; "
        "fixed when the knowledge base is created",
    )
    chunk_words: int | None = Field(
        None, ge=1, description="at most this many words a chunk (knowledge.chunking.MAX_WORDS)"
    )
    overlap_words: int | None = Field(
        None, ge=0, description="words shared by adjacent chunks (knowledge.chunking.OVERLAP_WORDS)"
    )
    terms: Terms | None = Field(
        None,
        description="BM25 terms of Chinese, Japanese and Korean text: bigram (default: "
        "characters and character pairs) or jieba (Chinese words); fixed at creation",
    )


class KbRemoveConfig(KbConfig):
    paths: list[str] = Field(min_length=1, description="files or folders to remove")


class KbShowConfig(KbConfig):
    as_json: bool = Field(False, description="machine-readable output")


class KbSearchConfig(KbShowConfig):
    query: str = Field(min_length=1, description="what to search for")
    k: int = Field(5, ge=1, description="passages to show")
    mode: Mode = "hybrid"


class KbEvalConfig(KbShowConfig):
    data: list[str] = Field(
        min_length=1,
        description="JSONL: question + faq_id and/or source, or answerable: false (repeatable)",
    )
    profile: str | None = Field(None, description="bot profile whose knowledge thresholds to score")
    mode: Mode | Literal["all"] = "all"


def _open(cfg: KbConfig) -> Any:
    from chattune.knowledge.store import KnowledgeBase
    from chattune.model.loading import quiet_transformers

    quiet_transformers()
    if isinstance(cfg, KbAddConfig):
        return KnowledgeBase(
            cfg.kb,
            create=True,
            embedder=cfg.embedder,
            max_words=cfg.chunk_words,
            overlap_words=cfg.overlap_words,
            terms=cfg.terms,
        )
    return KnowledgeBase(cfg.kb)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_kb_add(cfg: KbAddConfig) -> int:
    """Add or update documents (Markdown, text, HTML, PDF) and FAQ files (CSV/JSONL with
    question, answer, id); folders are searched recursively. Unchanged files are skipped."""
    kb = _open(cfg)
    report = kb.add(cfg.paths)
    for name, n in report.added:
        print(f"added     {name} ({_count(n, 'chunk')})")
    for name, n in report.replaced:
        print(f"replaced  {name} ({_count(n, 'chunk')})")
    for name in report.unchanged:
        print(f"unchanged {name}")
    for name, why in report.skipped:
        print(f"skipped   {name}: {why}")
    sources = _count(len(kb.sources()), "source")
    print(f"{_count(kb.count(), 'chunk')} from {sources} in {cfg.kb}")
    return 0


def cmd_kb_remove(cfg: KbRemoveConfig) -> int:
    """Remove files (or everything under a folder) from the knowledge base."""
    kb = _open(cfg)
    for name in kb.remove(cfg.paths):
        print(f"removed {name}")
    print(f"{_count(kb.count(), 'chunk')} left")
    return 0


def cmd_kb_list(cfg: KbShowConfig) -> int:
    """List the sources: name, format, chunks, when added."""
    sources = _open(cfg).sources()
    if cfg.as_json:
        print(json.dumps(sources, indent=1))
    for s in [] if cfg.as_json else sources:
        print(f"{s['chunks']:>5}  {s['format']:<8}  {s['added_at']}  {s['name']}")
    return 0


def cmd_kb_stats(cfg: KbShowConfig) -> int:
    """Counts, chunk sizes, embedder and disk use."""
    stats = _open(cfg).stats()
    lines = (f"{k}: {v}" for k, v in stats.items())
    print(json.dumps(stats, indent=1) if cfg.as_json else "\n".join(lines))
    return 0


def cmd_kb_rebuild(cfg: KbConfig) -> int:
    """Rebuild the vector and BM25 indexes from the stored chunks (after corruption)."""
    n = _open(cfg).rebuild()
    print(f"rebuilt the indexes of {cfg.kb} from {n} stored chunks")
    return 0


def cmd_kb_search(cfg: KbSearchConfig) -> int:
    """Show the best passages for a query: score, similarity, source and location."""
    from chattune.knowledge.retrieve import Retriever

    hits = Retriever(_open(cfg)).search(cfg.query, k=cfg.k, mode=cfg.mode)
    rows = [
        {
            "rank": r,
            "score": round(h.score, 4),
            "similarity": round(h.similarity, 4),
            "source": h.chunk.source,
            "location": h.chunk.location,
            "text": h.chunk.chunk.text,
        }
        for r, h in enumerate(hits, 1)
    ]
    if cfg.as_json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        text = " ".join(row["text"].split())
        print(
            f"{row['rank']}. {row['score']:.4f} (cos {row['similarity']:.2f})  "
            f"{row['source']}, {row['location']}\n   {text[:200]}"
        )
    return 0


def cmd_kb_eval(cfg: KbEvalConfig) -> int:
    """Retrieval (hit@1, hit@5, MRR, latency; --mode all compares hybrid, dense, bm25 and
    plain RRF) on questions with gold FAQ ids or sources, and how often the bot answers
    answerable questions and declines unanswerable ones at the profile's thresholds."""
    from chattune.chat.profile import load_profile
    from chattune.knowledge.grounding import Knowledge
    from chattune.knowledge.retrieval_eval import abstention, read_questions, score_retrieval
    from chattune.knowledge.retrieve import MODES, Retriever

    questions = [q for path in cfg.data for q in read_questions(path)]
    retriever = Retriever(_open(cfg))
    retriever.search(questions[0].text)  # warm-up: the first query pays one-off costs
    modes = MODES if cfg.mode == "all" else (cfg.mode,)
    answerable = [q for q in questions if q.answerable]
    retrieval = {m: score_retrieval(retriever, questions, m) for m in modes} if answerable else {}
    grounding = abstention(Knowledge(retriever, load_profile(cfg.profile).knowledge), questions)
    if cfg.as_json:
        print(json.dumps({"retrieval": retrieval, "grounding": grounding}, indent=1))
        return 0
    _print_kb_eval(retrieval, grounding, len(answerable))
    return 0


def _print_kb_eval(retrieval: dict[str, Any], grounding: dict[str, Any], answerable: int) -> None:
    print(f"{answerable} answerable, {grounding['unanswerable']} unanswerable questions")
    if retrieval:
        print(f"{'mode':<8} {'hit@1':>6} {'hit@5':>6} {'MRR':>6} {'p50 ms':>7} {'p95 ms':>7}")
    for mode, r in retrieval.items():
        print(
            f"{mode:<8} {r['hit@1']:>6.3f} {r['hit@5']:>6.3f} {r['mrr']:>6.3f} "
            f"{r['latency_ms_p50']:>7.1f} {r['latency_ms_p95']:>7.1f}"
        )
    if answerable:
        print(f"answered {grounding['answered']:.1%} of answerable questions", end="")
    if grounding["unanswerable"]:
        print(f"; declined {grounding['declined']:.1%} of unanswerable ones", end="")
    print(" (the profile's thresholds; see docs/knowledge.md)")


KB = {"--kb": "kb"}
SHOW = {**KB, "--json": "as_json"}
COMMANDS = [
    Command(
        "kb add",
        KbAddConfig,
        {
            "PATH": "paths",
            **KB,
            "--embedder": "embedder",
            "--chunk-words": "chunk_words",
            "--overlap-words": "overlap_words",
            "--terms": "terms",
        },
        cmd_kb_add,
    ),
    Command("kb remove", KbRemoveConfig, {"PATH": "paths", **KB}, cmd_kb_remove),
    Command("kb list", KbShowConfig, SHOW, cmd_kb_list),
    Command("kb stats", KbShowConfig, SHOW, cmd_kb_stats),
    Command("kb rebuild", KbConfig, KB, cmd_kb_rebuild),
    Command(
        "kb search",
        KbSearchConfig,
        {"QUERY": "query", **SHOW, "--k": "k", "--mode": "mode"},
        cmd_kb_search,
    ),
    Command(
        "kb eval",
        KbEvalConfig,
        {**SHOW, "--data": "data", "--profile": "profile", "--mode": "mode"},
        cmd_kb_eval,
    ),
]
