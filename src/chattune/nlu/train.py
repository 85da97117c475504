"""``chattune nlu train``: one command, three regimes, a calibrated threshold.

- ``finetune`` (full data): the encoder and a classification head, fine-tuned with
  transformers' ``Trainer``; the epoch with the best validation accuracy is kept and
  training stops when it has not improved for ``patience`` epochs.
- ``fewshot`` (a handful per intent): SetFit, which tunes the sentence encoder on pairs of
  examples (same intent: similar, different: not) and fits a logistic-regression head.
- ``zeroshot`` (no examples): intent descriptions embedded by the sentence encoder; the
  examples given, if any, only calibrate the threshold.
- ``auto``: ``finetune`` from ``finetune_min`` examples per intent, else ``fewshot``.

A stratified validation split (``validation`` of each intent with 3 or more examples, or a
``--validation`` file) is held out of training: it picks the epoch and calibrates the
out-of-scope threshold (:func:`~chattune.nlu.intents.calibrate`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from chattune.errors import ConfigError
from chattune.nlu.data import IntentExample, counts
from chattune.nlu.entities import PRIORITY
from chattune.nlu.intents import (
    MANIFEST,
    IntentModel,
    Regime,
    calibrate,
    encoder_folder,
    load_intent_model,
    sentence_encoder,
)
from chattune.nlu.settings import IntentTraining
from chattune.nlu.tokens import learned_types, train_tagger
from chattune.nlu.types import OUT_OF_SCOPE

log = logging.getLogger(__name__)


def split(
    examples: list[IntentExample], share: float, seed: int
) -> tuple[list[IntentExample], list[IntentExample]]:
    """(train, validation): ``share`` of each intent with 3+ examples (at least one) held out."""
    rng = random.Random(seed)
    train, val = [], []
    for intent in sorted(counts(examples)):
        group = [e for e in examples if e.intent == intent]
        rng.shuffle(group)
        n = max(1, round(len(group) * share)) if len(group) >= 3 else 0
        val += group[:n]
        train += group[n:]
    return train, val


def train_intents(
    examples: list[IntentExample],
    output: Path,
    settings: IntentTraining,
    descriptions: dict[str, str] | None = None,
    validation: list[IntentExample] | None = None,
) -> IntentModel:
    """Train, calibrate and save a classifier to ``output`` (written whole, then renamed)."""
    regime = _regime(examples, settings, descriptions)
    if validation is None and regime != "zeroshot":
        examples, validation = split(examples, settings.validation, settings.seed)
    elif validation is None:
        validation = examples
    labels = sorted({e.intent for e in examples} | set(descriptions or {}))
    if regime != "zeroshot" and len([name for name in labels if name != OUT_OF_SCOPE]) < 2:
        raise ConfigError("--data: intent classification needs at least two intents")
    encoder = encoder_folder(settings.encoder)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-nlu-", dir=output.parent))
    t = time.perf_counter()
    _fresh_accelerate()
    try:
        if regime == "finetune":
            extra = _finetune(examples, validation, labels, encoder, tmp, settings)
        elif regime == "fewshot":
            extra = _fewshot(examples, labels, encoder, tmp, settings)
        else:
            extra = _zeroshot(labels, descriptions or {}, encoder, tmp)
        learned = learned_types(examples, set(PRIORITY))
        if settings.entities == "auto" and learned and regime != "zeroshot":
            extra["entities"] = train_tagger(
                examples, validation, learned, encoder, tmp, settings.entity_epochs,
                settings.lr, settings.batch_size, settings.seed,
            )  # fmt: skip
        manifest = {
            "regime": regime,
            "labels": labels,
            "encoder": settings.encoder,
            "threshold": 0.0,
            "train_examples": dict(counts(examples)),
            "validation_examples": len(validation),
            "data_sha256": _digest(examples + validation),
            "settings": settings.model_dump(),
            "descriptions": descriptions or {},
            "train_seconds": 0.0,
            **extra,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        model = load_intent_model(tmp)
        threshold, how = _calibrate(model, validation, settings.keep)
        manifest |= {
            "threshold": threshold,
            "calibration": how,
            "train_seconds": round(time.perf_counter() - t, 1),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _fresh_accelerate()
    model.threshold, model.manifest = threshold, manifest
    return model


def _fresh_accelerate() -> None:
    """Forget Accelerate's process-wide state. transformers' and SetFit's trainers set it
    (no mixed precision, here), and a later ``chattune train`` in the same process asks for
    its own precision: Accelerate refuses to change it ("AcceleratorState has already been
    initialized"). The NLU trains on one process, so nothing else shares that state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _regime(
    examples: list[IntentExample], s: IntentTraining, descriptions: dict[str, str] | None
) -> Regime:
    if s.regime == "zeroshot" or (s.regime == "auto" and not examples):
        if not descriptions:
            raise ConfigError(
                "zero-shot needs intent descriptions: --descriptions FILE "
                "(YAML: intents: {name: description})"
            )
        return "zeroshot"
    if s.regime != "auto":
        return s.regime
    fewest = min(counts(examples).values())
    return "finetune" if fewest >= s.finetune_min else "fewshot"


def _calibrate(
    model: IntentModel, validation: list[IntentExample], keep: float
) -> tuple[float, dict[str, Any]]:
    guesses = [g[0] for g in model.predict([e.text for e in validation], top=1)]
    gold = np.array([e.intent for e in validation])
    best = np.array([g.name for g in guesses])
    confidence = np.array([-1.0 if g.name == OUT_OF_SCOPE else g.confidence for g in guesses])
    threshold, how = calibrate(confidence, best == gold, gold == OUT_OF_SCOPE, keep)
    how["validation_accuracy"] = round(float(np.mean(best == gold)), 4)
    return threshold, how


def _finetune(
    train: list[IntentExample],
    val: list[IntentExample],
    labels: list[str],
    encoder: Path,
    out: Path,
    s: IntentTraining,
) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        EarlyStoppingCallback,
        Trainer,
        TrainingArguments,
    )

    from chattune.nlu.heads import MeanPooledClassifier

    index = {name: i for i, name in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    if s.pooling == "mean":
        model: Any = MeanPooledClassifier(encoder, len(labels))
        if {e.intent for e in train} == set(labels):
            _probe(model, tokenizer, train, index)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            encoder, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index
        )

    def dataset(rows: list[IntentExample]) -> Dataset:
        enc = tokenizer([e.text for e in rows], truncation=True, max_length=128)
        return Dataset.from_dict({**enc, "labels": [index[e.intent] for e in rows]})

    def accuracy(p: Any) -> dict[str, float]:
        return {"accuracy": float(np.mean(np.argmax(p.predictions, -1) == p.label_ids))}

    with tempfile.TemporaryDirectory(prefix="chattune-nlu-") as work:
        args = TrainingArguments(
            output_dir=work,
            num_train_epochs=s.epochs,
            learning_rate=s.lr,
            per_device_train_batch_size=s.batch_size,
            per_device_eval_batch_size=64,
            eval_strategy="epoch",
            save_strategy="epoch",
            save_total_limit=2,
            load_best_model_at_end=True,
            metric_for_best_model="accuracy",
            warmup_steps=0.1,
            weight_decay=0.01,
            seed=s.seed,
            report_to=[],
            save_only_model=True,
            logging_strategy="epoch",
            disable_tqdm=True,
            use_cpu=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset(train),
            eval_dataset=dataset(val),
            processing_class=tokenizer,
            compute_metrics=accuracy,
            callbacks=[EarlyStoppingCallback(early_stopping_patience=s.patience)],
        )
        trainer.train()
        best = trainer.state.best_metric
        epochs = trainer.state.epoch
        classifier = out / "classifier"
        if s.pooling == "mean":
            trainer.model.save(classifier)
        else:
            trainer.model.save_pretrained(classifier)
        tokenizer.save_pretrained(classifier)
    return {"best_validation_accuracy": best, "epochs_run": epochs, "pooling": s.pooling}


def _probe(model: Any, tokenizer: Any, train: list[IntentExample], index: dict[str, int]) -> None:
    """Start the head from logistic regression on the frozen encoder's embeddings."""
    vectors = []
    model.eval()
    for i in range(0, len(train), 128):
        batch = tokenizer([e.text for e in train[i : i + 128]], padding=True, truncation=True,
                          max_length=128, return_tensors="pt")  # fmt: skip
        vectors.append(model.embed(dict(batch)).numpy())
    accuracy = model.probe(np.concatenate(vectors), np.array([index[e.intent] for e in train]))
    model.train()
    log.info("linear probe: training accuracy %.3f", accuracy)


def _fewshot(
    train: list[IntentExample], labels: list[str], encoder: Path, out: Path, s: IntentTraining
) -> dict[str, Any]:
    from datasets import Dataset
    from setfit import SetFitModel
    from setfit import Trainer as SetFitTrainer
    from setfit import TrainingArguments as SetFitArguments

    index = {name: i for i, name in enumerate(labels)}
    model = SetFitModel.from_pretrained(str(encoder), labels=labels, local_files_only=True)
    data = Dataset.from_dict({"text": [e.text for e in train], "label": [e.intent for e in train]})
    with tempfile.TemporaryDirectory(prefix="chattune-setfit-") as work:
        args = SetFitArguments(
            output_dir=work,
            batch_size=s.batch_size,
            num_epochs=1,
            num_iterations=s.pairs,
            seed=s.seed,
            report_to="none",
            show_progress_bar=False,
        )
        SetFitTrainer(model=model, args=args, train_dataset=data).train()
    model.save_pretrained(str(out / "setfit"))
    # SetFit maps string labels through model.labels; keep our order for the scores
    assert list(model.labels or []) == labels, (model.labels, index)
    return {}


def _zeroshot(
    labels: list[str], descriptions: dict[str, str], encoder: Path, out: Path
) -> dict[str, Any]:
    missing = [name for name in labels if name not in descriptions and name != OUT_OF_SCOPE]
    if missing:
        raise ConfigError(f"--descriptions: no description for intents {', '.join(missing)}")
    named = [name for name in labels if name in descriptions]
    texts = [f"{name.replace('_', ' ')}: {descriptions[name]}" for name in named]
    vectors = sentence_encoder(encoder).encode(
        texts, normalize_embeddings=True, show_progress_bar=False
    )
    np.save(out / "descriptions.npy", np.asarray(vectors, dtype=np.float32))
    return {"labels": named}


def _digest(examples: list[IntentExample]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(f"{e.intent}\t{e.text}\n".encode())
    return h.hexdigest()
