"""``chattune kb <verb>``: build, inspect, search and evaluate a knowledge base.

Kept apart from ``cli.py`` (which registers these) so each command group stays one screen.
Like every command, these print; the knowledge package only logs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def _open(args: argparse.Namespace, create: bool = False) -> Any:
    from chattune.knowledge.store import KnowledgeBase
    from chattune.model.loading import quiet_transformers

    quiet_transformers()

    if create:
        return KnowledgeBase(
            args.kb,
            create=True,
            embedder=args.embedder,
            max_words=args.chunk_words,
            overlap_words=args.overlap_words,
        )
    return KnowledgeBase(args.kb)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_kb_add(args: argparse.Namespace) -> int:
    """Add or update documents (Markdown, text, HTML, PDF) and FAQ files (CSV/JSONL with
    question, answer, id); folders are searched recursively. Unchanged files are skipped."""
    kb = _open(args, create=True)
    report = kb.add(args.paths)
    for name, n in report.added:
        print(f"added     {name} ({_count(n, 'chunk')})")
    for name, n in report.replaced:
        print(f"replaced  {name} ({_count(n, 'chunk')})")
    for name in report.unchanged:
        print(f"unchanged {name}")
    for name, why in report.skipped:
        print(f"skipped   {name}: {why}")
    sources = _count(len(kb.sources()), "source")
    print(f"{_count(kb.count(), 'chunk')} from {sources} in {args.kb}")
    return 0


def cmd_kb_remove(args: argparse.Namespace) -> int:
    """Remove files (or everything under a folder) from the knowledge base."""
    kb = _open(args)
    for name in kb.remove(args.paths):
        print(f"removed {name}")
    print(f"{_count(kb.count(), 'chunk')} left")
    return 0


def cmd_kb_list(args: argparse.Namespace) -> int:
    """List the sources: name, format, chunks, when added."""
    sources = _open(args).sources()
    if args.json:
        print(json.dumps(sources, indent=1))
    for s in [] if args.json else sources:
        print(f"{s['chunks']:>5}  {s['format']:<8}  {s['added_at']}  {s['name']}")
    return 0


def cmd_kb_stats(args: argparse.Namespace) -> int:
    """Counts, chunk sizes, embedder and disk use."""
    stats = _open(args).stats()
    print(
        json.dumps(stats, indent=1)
        if args.json
        else "\n".join(f"{k}: {v}" for k, v in stats.items())
    )
    return 0


def cmd_kb_rebuild(args: argparse.Namespace) -> int:
    """Rebuild the vector and BM25 indexes from the stored chunks (after corruption)."""
    n = _open(args).rebuild()
    print(f"rebuilt the indexes of {args.kb} from {n} stored chunks")
    return 0


def cmd_kb_search(args: argparse.Namespace) -> int:
    """Show the best passages for a query: score, similarity, source and location."""
    from chattune.knowledge.retrieve import Retriever

    hits = Retriever(_open(args)).search(args.query, k=args.k, mode=args.mode)
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
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        text = " ".join(row["text"].split())
        print(
            f"{row['rank']}. {row['score']:.4f} (cos {row['similarity']:.2f})  "
            f"{row['source']}, {row['location']}\n   {text[:200]}"
        )
    return 0


def cmd_kb_eval(args: argparse.Namespace) -> int:
    """Retrieval (hit@1, hit@5, MRR, latency; --mode all compares hybrid, dense, bm25 and
    plain RRF) on questions with gold FAQ ids or sources, and how often the bot answers
    answerable questions and declines unanswerable ones at the profile's thresholds."""
    from chattune.chat.profile import load_profile
    from chattune.knowledge.evaluate import abstention, evaluate, read_questions
    from chattune.knowledge.grounding import Knowledge
    from chattune.knowledge.retrieve import MODES, Retriever

    questions = [q for path in args.data for q in read_questions(path)]
    retriever = Retriever(_open(args))
    retriever.search(questions[0].text)  # warm-up: the first query pays one-off costs
    modes = MODES if args.mode == "all" else (args.mode,)
    answerable = [q for q in questions if q.answerable]
    retrieval = {m: evaluate(retriever, questions, m) for m in modes} if answerable else {}
    grounding = abstention(Knowledge(retriever, load_profile(args.profile).knowledge), questions)
    if args.json:
        print(json.dumps({"retrieval": retrieval, "grounding": grounding}, indent=1))
        return 0
    print(f"{len(answerable)} answerable, {grounding['unanswerable']} unanswerable questions")
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
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "kb add": cmd_kb_add,
    "kb remove": cmd_kb_remove,
    "kb list": cmd_kb_list,
    "kb stats": cmd_kb_stats,
    "kb rebuild": cmd_kb_rebuild,
    "kb search": cmd_kb_search,
    "kb eval": cmd_kb_eval,
}


def add_parser(verbs: Any) -> None:
    """Register ``kb`` and its verbs on the top-level subparsers."""
    from chattune.knowledge.retrieve import MODES

    kb = verbs.add_parser("kb", help="knowledge base: documents and FAQs the bot answers from")
    kb_verbs = kb.add_subparsers(dest="kb_verb", required=True)
    parsers = {}
    for verb, func in COMMANDS.items():
        p = kb_verbs.add_parser(verb.split()[1], help=func.__doc__)
        p.add_argument("--kb", required=True, help="knowledge base folder")
        p.set_defaults(func=func)
        parsers[verb] = p
    add = parsers["kb add"]
    add.add_argument("paths", nargs="+", help="files or folders")
    add.add_argument(
        "--embedder",
        help="minilm (default), hashing, or a sentence-transformers folder; "
        "fixed when the knowledge base is created",
    )
    add.add_argument("--chunk-words", type=int, help="at most this many words a chunk (160)")
    add.add_argument("--overlap-words", type=int, help="words shared by adjacent chunks (32)")
    parsers["kb remove"].add_argument("paths", nargs="+")
    for verb in ("kb list", "kb stats", "kb search", "kb eval"):
        parsers[verb].add_argument("--json", action="store_true", help="machine-readable output")
    search = parsers["kb search"]
    search.add_argument("query")
    search.add_argument("--k", type=int, default=5)
    search.add_argument("--mode", choices=MODES, default="hybrid")
    ev = parsers["kb eval"]
    ev.add_argument(
        "--data",
        action="append",
        required=True,
        help="JSONL: question + faq_id and/or source, or answerable: false (repeatable)",
    )
    ev.add_argument("--profile", help="bot profile whose knowledge thresholds to score")
    ev.add_argument("--mode", choices=[*MODES, "all"], default="all")
