"""Defaults that work without flags: one `chattune train --data FILE --val-split 0.05` per
dialogue set, as a new user would run it, and its test perplexity against the base model's.

Sets (each split by conversation; the test conversations are never trained on):

  support      examples/support/train.jsonl (150), tested on examples/support/val.jsonl
  updates      examples/support/updates/b-train.jsonl (90), tested on b-val.jsonl
  chatter-en   open-domain chit-chat and trivia from the chatterbot-corpus package (BSD,
               PyPI: pip install chatterbot-corpus): 300 English dialogues to train on, 100
               to test, one dialogue per distinct first question (the corpus repeats itself)
  chatter-it   the same corpus's Italian dialogues: 300 / 100

Recipes: ``defaults`` is the command with no other flag (chattune's rule for unset lr, epochs
and evaluations: docs/training.md "Defaults"); ``fixed`` pins what the defaults were before
the rule (lr 2e-4, one epoch, one evaluation at the end); ``--recipe NAME=key=value,...``
adds others. Reported per set and recipe: test perplexity of the base and the tuned model
(assistant tokens of the test conversations, the same function for both), its reduction,
the steps, the epoch of the chosen weights and the wall time. Goal (issue #14): >= 40% lower
test perplexity than the base after one default run of a few CPU-minutes.

    python bench/defaults.py [--sets chatter-en updates] [--recipes defaults fixed]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from machine import machine  # noqa: E402

SUPPORT = ROOT / "examples" / "support"
RECIPES = {
    "defaults": [],
    "fixed": ["train.lr=2e-4", "train.epochs=1", "train.eval_every=0"],
}


def chatterbot(language: str, n_train: int, n_test: int, seed: int = 0) -> tuple[list, list]:
    """Dialogues of chatterbot-corpus's ``language`` as chat messages (turns alternate user,
    assistant; a dangling last user turn is dropped), shuffled and split."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("chatterbot-corpus is not installed: pip install chatterbot-corpus")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / language
    dialogues = []
    for path in sorted(folder.glob("*.yml")):
        for turns in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            turns = [str(t).strip() for t in turns if str(t).strip()]
            turns = turns[: len(turns) // 2 * 2]
            if turns:
                roles = ["user", "assistant"] * (len(turns) // 2)
                messages = [{"role": r, "content": t} for r, t in zip(roles, turns, strict=True)]
                dialogues.append({"messages": messages})
    # The corpus repeats itself across files (half of a random test set was in the training
    # set word for word): keep one dialogue per first question, so no test question was seen.
    unique = {d["messages"][0]["content"].strip().lower(): d for d in dialogues}
    dialogues = sorted(unique.values(), key=lambda d: d["messages"][0]["content"])
    random.Random(seed).shuffle(dialogues)
    return dialogues[:n_train], dialogues[n_train : n_train + n_test]


def write(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def build_set(name: str, folder: Path) -> tuple[Path, Path]:
    """(train file, test file) of set ``name``."""
    if name == "support":
        return SUPPORT / "train.jsonl", SUPPORT / "val.jsonl"
    if name == "updates":
        return SUPPORT / "updates" / "b-train.jsonl", SUPPORT / "updates" / "b-val.jsonl"
    language = {"chatter-en": "english", "chatter-it": "italian"}[name]
    train, test = chatterbot(language, 300, 100)
    return write(train, folder / f"{name}-train.jsonl"), write(test, folder / f"{name}-test.jsonl")


def test_perplexity(model_spec: str, test_file: Path) -> float:
    """Perplexity of the assistant turns of ``test_file`` under ``model_spec``."""
    import torch

    from chattune.data.batching import collate
    from chattune.data.dataset import encode_conversations
    from chattune.data.readers import read_conversations
    from chattune.data.render import MaskPolicy
    from chattune.model.loading import load_model
    from chattune.model.loss import LabelledLoss

    model, tokenizer = load_model(model_spec)
    examples, _ = encode_conversations(
        read_conversations(test_file), tokenizer, 1024, MaskPolicy.ASSISTANT
    )
    module = LabelledLoss(model).eval()
    total = n = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), 8):
            loss, count = module(**collate(examples[i : i + 8], tokenizer.pad_token_id))
            total, n = total + loss.item(), n + count.item()
    return math.exp(total / n)


def train(train_file: Path, output: Path, extra: list[str]) -> tuple[dict, float]:
    """``chattune train --data FILE --val-split 0.05 --output OUT [extra]``: (its summary,
    wall seconds)."""
    chattune = Path(sys.executable).parent / "chattune"
    cmd = [str(chattune), "train", "--data", str(train_file), "--val-split", "0.05"]
    cmd += ["--output", str(output), "train.progress=false", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((output / "chattune.json").read_text()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="*", default=["chatter-en", "chatter-it", "updates"])
    parser.add_argument("--recipes", nargs="*", default=["defaults", "fixed"])
    parser.add_argument("--recipe", action="append", default=[], help="NAME=k=v,k=v")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    recipes = dict(RECIPES)
    for spec in args.recipe:
        name, _, settings = spec.partition("=")
        recipes[name] = settings.split(",")
        args.recipes.append(name)

    print(machine(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-defaults-"))
    results = []
    for name in args.sets:
        train_file, test_file = build_set(name, work)
        base = test_perplexity("smollm2-135m-instruct", test_file)
        print(f"{name}: base test perplexity {base:.2f}", flush=True)
        for recipe in args.recipes:
            summary, seconds = train(train_file, work / f"{name}-{recipe}", recipes[recipe])
            tuned = test_perplexity(str(work / f"{name}-{recipe}"), test_file)
            row = {"set": name, "recipe": recipe, "base_ppl": base, "tuned_ppl": tuned,
                   "reduction": 1 - tuned / base, "steps": summary["steps"],
                   "best_step": summary.get("best_step"), "minutes": seconds / 60,
                   "lr": summary.get("lr"), "epochs": summary.get("epochs")}  # fmt: skip
            results.append(row)
            print(f"  {recipe}: {json.dumps(row)}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\n{machine()}")
    print(f"{'set':<12}{'recipe':<10}{'base ppl':>9}{'tuned ppl':>10}{'cut':>7}{'steps':>7}"
          f"{'best at':>8}{'minutes':>9}")  # fmt: skip
    for r in results:
        print(f"{r['set']:<12}{r['recipe']:<10}{r['base_ppl']:>9.2f}{r['tuned_ppl']:>10.2f}"
              f"{100 * r['reduction']:>6.1f}%{r['steps']:>7}{r['best_step'] or '-':>8}"
              f"{r['minutes']:>9.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
