"""Would the model read better if the context held only the sentences closest to the question?

An ablation of the grounding step for issue 16 (grounded fine-tuning). The tuned 135M model
often answers with the *neighbouring* sentence of the right passage ("How long is the
kayak?" -> its load). This bench narrows the context block to the ``--keep`` sentences of
the shown passages whose embeddings (the knowledge base's own embedder, each sentence
prefixed with its heading or FAQ question) are closest to the latest user message, keeps
each passage's number, heading and source, and drops passages left with no sentence. Two
parts, both on a held-out question file (``kb-grounded-test.jsonl``):

1. **Ceiling** (no model): how often the kept sentences still hold every gold fact, against
   the whole passages. A keep that loses facts caps fact accuracy before the model runs.
2. **Eval** (with ``--model``): ``chattune eval --kb`` with the narrowed context, so the
   grounded rates (fact accuracy, citations, don't-know) compare with the full-context
   figures in docs/evaluation.md on the same command.

    python bench/grounded_sentences.py --kb runs/demo/kb --keep 3 \
      --model runs/demo-raft --compare runs/demo

Serving is not changed: this wraps ``Knowledge.ground`` in this process only. Sentences are
cut with a regular expression for English (an end mark, a space, a capital, a digit or
``$``); a product feature would take a tokenizer-aware splitter such as pysbd.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
from chattune.chat.profile import load_profile
from chattune.cli.common import knowledge
from chattune.data.types import Message
from chattune.evaluate.facts import match_fact
from chattune.evaluate.questions import read_grounded_questions
from chattune.knowledge import grounding as G
from chattune.knowledge.chunking import Chunk
from chattune.knowledge.retrieve import Hit
from machine import machine

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'($])")


def sentences(c: Chunk) -> list[str]:
    """The passage's body (an FAQ entry's answer) as sentences, source line breaks joined."""
    body = (c.answer or "") if c.faq_id is not None else c.text
    return [s for s in _SENTENCE_END.split(" ".join(body.split())) if s]


def narrow(knowledge_: G.Knowledge, message: str, hits: list[Hit], keep: int) -> list[Hit]:
    """``hits`` with only the ``keep`` sentences closest to ``message`` (in passage order)."""
    per = [sentences(h.chunk.chunk) for h in hits]
    texts, owners = [], []
    for i, (h, ss) in enumerate(zip(hits, per, strict=True)):
        c = h.chunk.chunk
        head = c.question if c.faq_id is not None else c.title
        for j, s in enumerate(ss):
            texts.append(f"{head}: {s}" if head else s)
            owners.append((i, j))
    if not texts:
        return hits
    v = knowledge_.retriever.kb.embedder.encode([message, *texts])
    kept_ids = {owners[k] for k in np.argsort(-(v[1:] @ v[0]))[:keep]}
    narrowed = []
    for i, (h, ss) in enumerate(zip(hits, per, strict=True)):
        kept = " ".join(s for j, s in enumerate(ss) if (i, j) in kept_ids)
        if kept:
            c = h.chunk.chunk
            c = dataclasses.replace(c, **{"answer" if c.faq_id is not None else "text": kept})
            narrowed.append(dataclasses.replace(h, chunk=dataclasses.replace(h.chunk, chunk=c)))
    return narrowed


def install(keep: int) -> None:
    """Wrap ``Knowledge.ground`` so every ``passages`` grounding is narrowed."""
    ground = G.Knowledge.ground

    def narrowed(self: G.Knowledge, history: list[Message]) -> G.Grounding:
        g = ground(self, history)
        if g.kind != "passages":
            return g
        message = next(m.content for m in reversed(history) if m.role == "user")
        hits = narrow(self, message, g.hits, keep)
        return G.Grounding(
            "passages", hits, context=G.context_block(hits, self.settings.instruction)
        )

    G.Knowledge.ground = narrowed  # type: ignore[method-assign]


def has_facts(text: str, facts: tuple[tuple[str, ...], ...]) -> bool:
    """Every fact (any of its alternatives) is in ``text``, matched as the grounded eval does."""
    return all(match_fact(alternatives, text) for alternatives in facts)


def passage_text(hits: list[Hit]) -> str:
    """The passages' bodies as the narrowing sees them."""
    return " ".join(" ".join(sentences(h.chunk.chunk)) for h in hits)


def ceiling(kb: str, profile: str, data: str, keep: int) -> None:
    """Print how many answerable questions keep their facts in the full and narrowed context."""
    kn = knowledge(kb, load_profile(profile))
    assert kn is not None
    full = kept = shown = 0
    for q in read_grounded_questions(data):
        if not q.facts:
            continue
        g = kn.ground(list(q.history))
        if g.kind != "passages":
            continue
        shown += 1
        full += has_facts(passage_text(g.hits), q.facts)
        kept += has_facts(passage_text(narrow(kn, q.text, g.hits, keep)), q.facts)
    print(f"ceiling: {shown} questions with facts reach the model; the facts are in the full "
          f"passages for {full}, in the {keep} kept sentences for {kept}", flush=True)  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kb", required=True)
    p.add_argument("--profile", default="examples/support/bot.yaml")
    p.add_argument("--data", default="examples/support/kb-grounded-test.jsonl")
    p.add_argument("--keep", type=int, default=3, help="sentences kept per prompt")
    p.add_argument("--model", help="also run `chattune eval --kb` with the narrowed context")
    p.add_argument("--compare", help="the eval's --compare model")
    p.add_argument("--json", default="grounded-sentences.json", help="the eval's --json")
    args = p.parse_args()
    if args.keep < 1:
        p.error("--keep must be at least 1")
    print(f"cpu: {machine()}", flush=True)
    ceiling(args.kb, args.profile, args.data, args.keep)
    if not args.model:
        return 0
    install(args.keep)
    from chattune.cli import main as chattune

    argv = ["eval", "--model", args.model, "--kb", args.kb, "--profile", args.profile]
    argv += ["--data", args.data, "--max-new-tokens", "96", "--json", args.json, "--per-example"]
    if args.compare:
        argv += ["--compare", args.compare]
    sys.argv = ["chattune", *argv]
    return chattune()


if __name__ == "__main__":
    sys.exit(main())
