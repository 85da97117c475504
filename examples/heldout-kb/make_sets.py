"""Build the evaluation sets of examples/heldout-kb from each domain's hand-written files.

Each domain folder holds ``entries.csv`` (id, question, answer: the full FAQ),
``paraphrases.txt`` (``faq_id|question``: user questions worded unlike the stored one) and
``offtopic.txt`` (one question a line). This writes, per domain:

- ``paraphrases.jsonl``: every paraphrase, answerable, for a knowledge base of all entries;
- ``kb-a.csv`` / ``kb-b.csv``: the entries at even / odd positions (the "removed half"
  protocol: the other half is left out of the knowledge base);
- ``questions-a.jsonl`` / ``questions-b.jsonl``: paraphrases of the kept half (answerable),
  paraphrases of the removed half (``"answerable": false``: near-domain questions the
  knowledge base cannot answer) and the off-topic questions (also unanswerable).

Run it again after editing the hand-written files: ``python examples/heldout-kb/make_sets.py``.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
DOMAINS = ("bank", "library", "devtools")


def build(folder: Path) -> None:
    with (folder / "entries.csv").open(newline="") as f:
        entries = list(csv.DictReader(f))
    ids = [e["id"] for e in entries]
    pairs = []
    for n, line in enumerate((folder / "paraphrases.txt").read_text().splitlines(), 1):
        faq_id, question = line.split("|", 1)
        if faq_id not in ids:
            sys.exit(f"{folder}/paraphrases.txt:{n}: unknown id {faq_id!r}")
        pairs.append((faq_id, question.strip()))
    offtopic = [q.strip() for q in (folder / "offtopic.txt").read_text().splitlines() if q.strip()]
    write_jsonl(folder / "paraphrases.jsonl", [{"question": q, "faq_id": i} for i, q in pairs])
    for name, parity in (("a", 0), ("b", 1)):
        kept = {e["id"] for n, e in enumerate(entries) if n % 2 == parity}
        with (folder / f"kb-{name}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, ["id", "question", "answer"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(e for e in entries if e["id"] in kept)
        rows = [
            {"question": q, "faq_id": i} if i in kept else {"question": q, "answerable": False}
            for i, q in pairs
        ]
        rows += [{"question": q, "answerable": False} for q in offtopic]
        write_jsonl(folder / f"questions-{name}.jsonl", rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    for domain in DOMAINS:
        build(HERE / domain)
