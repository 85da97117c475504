"""``chattune nlu eval``: how well intents and entities are recognised, and how fast.

Intents: accuracy and macro-F1 of the decision the bot acts on (``out_of_scope`` below the
threshold), the same for the classifier's raw best guess, per-intent precision, recall and
F1 (scikit-learn's classification report), a bootstrap 95% interval for accuracy, and the
confusion matrix as a picture. Entities: span-level precision/recall/F1 per type against
the marks in the test file (exact type and boundaries). Latency: one message at a time, as
a server sees them, for the classifier alone and for the whole analysis (intent + entities
+ sentiment).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from chattune.data.types import Message
from chattune.nlu.data import IntentExample, span_scores
from chattune.nlu.pipeline import NLU


def bootstrap_interval(hits: np.ndarray, resamples: int = 1000, seed: int = 0) -> list[float]:
    """The 95% percentile-bootstrap interval of the mean of ``hits`` (0/1 per example)."""
    if not len(hits) or resamples == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = rng.choice(hits, (resamples, len(hits)), replace=True).mean(1)
    return [round(float(np.quantile(means, 0.025)), 4), round(float(np.quantile(means, 0.975)), 4)]


def intent_scores(gold: list[str], predicted: list[str], resamples: int = 1000) -> dict[str, Any]:
    """Accuracy (with a bootstrap interval), macro-F1 and the per-intent report."""
    from sklearn.metrics import classification_report, f1_score

    hits = np.array([g == p for g, p in zip(gold, predicted, strict=True)], dtype=float)
    labels = sorted(set(gold) | set(predicted))
    report = classification_report(
        gold, predicted, labels=labels, output_dict=True, zero_division=0
    )
    per_intent = {
        k: {m: round(float(v[m]), 4) for m in ("precision", "recall", "f1-score", "support")}
        for k, v in report.items()
        if k in labels
    }
    return {
        "accuracy": round(float(hits.mean()), 4),
        "accuracy_95": bootstrap_interval(hits, resamples),
        "macro_f1": round(
            float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)), 4
        ),
        "per_intent": per_intent,
    }


def entity_scores(examples: list[IntentExample], nlu: NLU) -> dict[str, Any]:
    """Span-level precision, recall and F1 per entity type (exact type and boundaries)."""
    return span_scores(
        ({(s.type, s.start, s.end) for s in e.spans},
         {(x.type, x.start, x.end) for x in nlu.entities.extract(e.text)})
        for e in examples
    )  # fmt: skip


def latency(nlu: NLU, texts: list[str], repeats: int = 1) -> dict[str, float]:
    """p50/p95/max milliseconds per message, for the classifier and the whole analysis."""
    assert nlu.intents is not None
    nlu.ready  # noqa: B018 - load the lazy parts before timing
    classify, whole = [], []
    for _ in range(repeats):
        for text in texts:
            t = time.perf_counter()
            nlu.intents.predict([text])
            classify.append(time.perf_counter() - t)
            t = time.perf_counter()
            nlu.analyze([Message("user", text)])
            whole.append(time.perf_counter() - t)
    ms = {"classifier": np.array(classify) * 1000, "analysis": np.array(whole) * 1000}
    return {
        f"{name}_{q}": round(float(np.quantile(v, p)), 2)
        for name, v in ms.items()
        for q, p in (("p50", 0.5), ("p95", 0.95), ("max", 1.0))
    }


def evaluate_nlu(nlu: NLU, examples: list[IntentExample], resamples: int = 1000) -> dict[str, Any]:
    """Every score of ``chattune nlu eval`` for ``nlu`` on labelled ``examples``."""
    model = nlu.intents
    assert model is not None
    texts, gold = [e.text for e in examples], [e.intent for e in examples]
    guesses = [g[0] for g in model.predict(texts, top=1)]
    decided = [model.decide(g, nlu.settings.min_confidence) for g in guesses]
    raw = [g.name for g in guesses]
    labels = sorted(set(gold) | set(decided))
    return {
        "model": {
            k: model.manifest.get(k) for k in ("regime", "encoder", "threshold", "calibration")
        },
        "threshold": nlu.settings.min_confidence or model.threshold,
        "examples": len(examples),
        "intents": intent_scores(gold, decided, resamples),
        "raw_best_guess": {
            k: v for k, v in intent_scores(gold, raw, resamples).items() if k != "per_intent"
        },
        "entities": entity_scores(examples, nlu),
        "latency_ms": latency(nlu, texts[:200]),
        "confusion": {"labels": labels, "matrix": _confusion(gold, decided, labels)},
    }


def _confusion(gold: list[str], predicted: list[str], labels: list[str]) -> list[list[int]]:
    index = {name: i for i, name in enumerate(labels)}
    m = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        m[index[g]][index[p]] += 1
    return m


def confusion_plot(result: dict[str, Any], path: str | Path) -> Path:
    """The confusion matrix (rows: gold intent, columns: decided) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, m = result["confusion"]["labels"], np.array(result["confusion"]["matrix"])
    size = max(4.0, 0.32 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i, j in zip(*np.nonzero(m), strict=True):
        ax.text(
            j,
            i,
            str(m[i, j]),
            ha="center",
            va="center",
            fontsize=6,
            color="white" if m[i, j] > m.max() / 2 else "black",
        )
    ax.set_xlabel("decided")
    ax.set_ylabel("gold")
    acc = result["intents"]["accuracy"]
    ax.set_title(f"intents: accuracy {acc:.3f}, {result['examples']} examples", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def markdown_report(result: dict[str, Any], image: str | None = None) -> str:
    """The per-intent and per-entity tables as Markdown, with the confusion-matrix picture."""
    i, lat = result["intents"], result["latency_ms"]
    lines = [
        "# NLU evaluation",
        "",
        f"{result['examples']} examples; regime {result['model']['regime']}, "
        f"threshold {result['threshold']:.3f}",
        "",
        f"- accuracy **{i['accuracy']:.3f}** "
        f"(95% {i['accuracy_95'][0]:.3f}-{i['accuracy_95'][1]:.3f}), "
        f"macro-F1 {i['macro_f1']:.3f}; raw best guess {result['raw_best_guess']['accuracy']:.3f}",
        f"- latency per message: classifier p95 {lat['classifier_p95']} ms, "
        f"intent + entities + sentiment p95 {lat['analysis_p95']} ms",
        "",
        "| intent | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, s in i["per_intent"].items():
        lines.append(
            f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | "
            f"{s['f1-score']:.3f} | {int(s['support'])} |"
        )
    lines += ["", "| entity | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for name, s in result["entities"].items():
        lines.append(
            f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | "
            f"{s['support']} |"
        )
    if image:
        lines += ["", f"![confusion matrix]({image})"]
    return "\n".join(lines) + "\n"
