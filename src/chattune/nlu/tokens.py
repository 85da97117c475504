"""A trainable entity tagger: BIO labels on the intent encoder's tokens.

Patterns suffice for what has a shape (an email, an order id, an amount, a date); names a
shop invents, or that a gazetteer cannot list in advance, are learned from the marks in the
intents file (``[Summit 30L](product)``). ``nlu train`` fits a token classifier
(``AutoModelForTokenClassification``) on the same encoder when the file marks entity types
that no pattern covers, and saves it to ``entities/`` beside the intent classifier. Labels
are BIO per word piece: ``B-product`` on the first piece of a span, ``I-product`` on the
rest, ``O`` elsewhere; a predicted span runs from a ``B-`` over its ``I-`` pieces, and its
character offsets come from the tokenizer's offset mapping, so it cuts the text exactly.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from chattune.nlu.data import IntentExample, span_scores
from chattune.nlu.types import Entity

log = logging.getLogger(__name__)
FOLDER = "entities"


def bio_labels(types: list[str]) -> list[str]:
    """``O`` then ``B-``/``I-`` for each type, in a fixed order."""
    return ["O"] + [f"{p}-{t}" for t in sorted(types) for p in ("B", "I")]


def encode(tokenizer: Any, example: IntentExample, index: dict[str, int], types: set[str]):
    """Token ids and a BIO label id per token (-100 on special tokens, ignored by the loss)."""
    enc = tokenizer(example.text, truncation=True, max_length=128, return_offsets_mapping=True)
    labels = []
    for start, end in enc.pop("offset_mapping"):
        if start == end:  # [CLS], [SEP]
            labels.append(-100)
            continue
        tag = "O"
        for s in example.spans:
            if s.type in types and s.start <= start < s.end:
                tag = ("B-" if start == s.start or _first(labels, index, s.type) else "I-") + s.type
        labels.append(index[tag])
    enc["labels"] = labels
    return enc


def _first(labels: list[int], index: dict[str, int], kind: str) -> bool:
    """Whether the previous token is outside the span (a span starting mid-word)."""
    inside = {index[f"B-{kind}"], index[f"I-{kind}"]}
    return not labels or labels[-1] not in inside


def train_tagger(
    train: list[IntentExample], val: list[IntentExample], types: set[str], encoder: Path,
    out: Path, epochs: int, lr: float, batch_size: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Fit and save the tagger; its validation span F1 per type."""
    from datasets import Dataset
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    labels = bio_labels(sorted(types))
    index = {name: i for i, name in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = AutoModelForTokenClassification.from_pretrained(
        encoder, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=index
    )
    rows = [encode(tokenizer, e, index, types) for e in train]
    data = Dataset.from_list([dict(r) for r in rows])
    with tempfile.TemporaryDirectory(prefix="chattune-tagger-") as work:
        args = TrainingArguments(
            output_dir=work, num_train_epochs=epochs, learning_rate=lr,
            per_device_train_batch_size=batch_size, save_strategy="no", report_to=[],
            seed=seed, disable_tqdm=True, use_cpu=True, logging_strategy="no",
        )  # fmt: skip
        Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                data_collator=DataCollatorForTokenClassification(tokenizer)).train()  # fmt: skip
    model.save_pretrained(out / FOLDER)
    tokenizer.save_pretrained(out / FOLDER)
    tagger = Tagger(out / FOLDER)
    return {"types": sorted(types), "validation_f1": tagger_f1(tagger, val, types)}


class Tagger:
    """The saved tagger: entities of one text."""

    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForTokenClassification.from_pretrained(folder).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]

    def extract(self, text: str) -> list[Entity]:
        enc = self.tokenizer(text, truncation=True, max_length=128, return_tensors="pt",
                             return_offsets_mapping=True)  # fmt: skip
        offsets = enc.pop("offset_mapping")[0].tolist()
        with self._torch.inference_mode():
            tags = self.model(**enc).logits[0].argmax(-1).tolist()
        spans: list[list[Any]] = []
        for (start, end), tag in zip(offsets, tags, strict=True):
            name = self.labels[tag]
            if start == end or name == "O":
                continue
            kind = name[2:]
            if (
                name.startswith("I-")
                and spans
                and spans[-1][0] == kind
                and start <= spans[-1][2] + 1
            ):
                spans[-1][2] = end
            elif name.startswith("B-") or not spans or spans[-1][0] != kind:
                spans.append([kind, start, end])
        return [Entity(k, text[s:e], s, e, text[s:e], "model") for k, s, e in spans]


def tagger_f1(tagger: Tagger, examples: list[IntentExample], types: set[str]) -> dict[str, float]:
    """Exact-span F1 per type of ``tagger`` on marked ``examples``."""
    scores = span_scores(
        ({(s.type, s.start, s.end) for s in e.spans if s.type in types},
         {(x.type, x.start, x.end) for x in tagger.extract(e.text)})
        for e in examples
    )  # fmt: skip
    return {k: scores.get(k, {"f1": 0.0})["f1"] for k in sorted(types)}


def learned_types(examples: list[IntentExample], pattern_types: set[str]) -> set[str]:
    """Entity types marked in ``examples`` that no pattern covers: what the tagger learns."""
    return {s.type for e in examples for s in e.spans} - pattern_types
