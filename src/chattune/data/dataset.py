"""From files to encoded training examples, with a report of what was cut."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from chattune.data.batching import EncodeReport, pack_documents
from chattune.data.render import Encoded, MaskPolicy, encode_conversation, tokenize
from chattune.data.types import Conversation, Document
from chattune.errors import DataError

T = TypeVar("T")


def encode_conversations(
    conversations: list[Conversation], tokenizer: Any, max_len: int, mask: MaskPolicy
) -> tuple[list[Encoded], EncodeReport]:
    """Encode every conversation; count the truncated and the dropped ones."""
    return encode_each([lambda c=c: encode_conversation(c, tokenizer, max_len, mask)
                        for c in conversations])  # fmt: skip


def encode_each(
    encoders: Sequence[Callable[[], Encoded | None]],
) -> tuple[list[Encoded], EncodeReport]:
    """Run each encoder (one per conversation, or per grounded turn); count what was
    encoded, truncated (lost its oldest turns) and dropped (nothing trainable fit)."""
    report = EncodeReport(conversations=len(encoders))
    examples = []
    for encode in encoders:
        enc = encode()
        if enc is None:
            report.dropped += 1
            continue
        report.truncated += enc.dropped_turns > 0
        report.tokens += len(enc.input_ids)
        report.trained_tokens += enc.n_trained
        examples.append(enc)
    report.encoded = len(examples)
    return examples, report


def encode_documents(
    documents: list[Document], tokenizer: Any, block_size: int
) -> tuple[list[Encoded], EncodeReport]:
    """Tokenize raw documents and pack them into blocks for the causal LM objective."""
    ids = [tokenize(tokenizer, d.text) for d in documents]
    blocks = pack_documents(ids, tokenizer.eos_token_id, block_size)
    n = sum(len(b.input_ids) for b in blocks)
    report = EncodeReport(len(documents), len(blocks), 0, 0, n, n)
    return blocks, report


def require_trainable(examples: list[Encoded], report: EncodeReport, where: str, max_len: int):
    """Refuse to train on nothing, and say why there is nothing."""
    if not examples or report.trained_tokens == 0:
        raise DataError(
            [
                f"{where}: no trainable tokens: {report.dropped} of {report.conversations} "
                f"conversations do not fit --max-len {max_len} even after dropping old turns; "
                "raise --max-len or shorten the replies"
            ]
        )


def read_splits(
    train: list[str],
    val: list[str],
    fmt: str = "auto",
    objective: str = "chat",
    val_split: float = 0.0,
    seed: int = 0,
) -> tuple[list[Any], list[Any]]:
    """(training items, validation items): the ``val`` files, or a seeded ``val_split`` share
    of ``train``, the same on every run and every resume. Training and evaluation during
    training both read through here, so replies are never scored on trained conversations.
    """
    from chattune.data.readers import read_many

    items = read_many(train, fmt, objective)
    val_items = read_many(val, fmt, objective) if val else []
    if val_split:
        items, val_items = split_validation(items, val_split, seed)
    return items, val_items


def split_validation(items: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Hold out a random ``fraction`` (at least one item) for validation."""
    if not 0 < fraction < 1:
        raise ValueError("fraction must be between 0 and 1")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(items) * fraction))
    if n_val >= len(items):
        raise DataError([f"--val-split {fraction} leaves no training data ({len(items)} items)"])
    val = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val], [items[i] for i in sorted(val)]
