"""Generation metrics while training (``--eval-generate N``), handed to the loop as a hook.

Training sits below evaluation and knows nothing of it: ``chattune train`` builds the
callback here and passes it in as ``TrainHooks(on_evaluate=...)``. At each evaluation the
loop calls it on rank 0 with the model in eval mode, and logs what it returns beside the
validation loss.

Example:
    >>> on_evaluate = eval_generate_callback(cfg)  # doctest: +SKIP
    >>> on_evaluate(model, tokenizer, step=20)  # doctest: +SKIP
    {'eval_bleu': 3.1, 'eval_rouge_l': 0.22, 'eval_f1': 0.25, ...}
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from chattune.config import RunConfig
from chattune.data.types import Conversation

log = logging.getLogger(__name__)

#: The scores logged at each evaluation, as ``eval_<key>``.
KEYS = ("bleu", "rouge_l", "f1", "distinct_1", "distinct_2", "avg_len", "non_stop_rate")


def generation_metrics(
    model: Any, tokenizer: Any, val_conversations: list[Conversation], n: int, batch_size: int = 8
) -> dict[str, float]:
    """Score replies to the first ``n`` assistant turns of ``val_conversations``.

    The replies come from the chat engine with the default bot profile (greedy decoding),
    the path every evaluated and served reply takes.
    """
    from chattune.backends.transformers import TransformersBackend
    from chattune.chat.engine import ChatEngine
    from chattune.evaluate.examples import turn_examples
    from chattune.evaluate.generation import generate_replies
    from chattune.evaluate.scoring import aggregate, make_records

    examples = turn_examples(val_conversations, n)
    engine = ChatEngine(TransformersBackend(model, tokenizer))
    replies = generate_replies(engine, examples, None, batch_size, progress=False)
    records = make_records(
        [e.id for e in examples],
        [e.reference for e in examples],
        [r.text for r in replies],
        [r.stopped for r in replies],
        [(0.0, 0)] * len(examples),  # no reference losses: the loop logs eval_loss itself
    )
    scores = aggregate(records)
    return {f"eval_{k}": scores[k] for k in KEYS}


def validation_conversations(cfg: RunConfig) -> list[Conversation]:
    """The validation conversations of ``cfg``: ``data.val``, or its ``data.val_split`` share.

    The split is the one training makes (same function, same seed), so replies are never
    scored on conversations the model trained on.
    """
    from chattune.data.dataset import read_splits
    from chattune.data.readers import read_many

    d = cfg.data
    if d.val:  # no need to read the training files
        return read_many(d.val, d.format, d.objective)
    if d.val_split:
        return read_splits(d.train, [], d.format, d.objective, d.val_split, cfg.train.seed)[1]
    return []


def eval_generate_callback(
    cfg: RunConfig,
) -> Callable[[Any, Any, int], dict[str, float]] | None:
    """The ``on_evaluate`` hook for ``train.eval_generate``, or None when it does not apply.

    It applies to chat runs (``data.objective=chat``) with validation data and
    ``train.eval_generate`` > 0.
    """
    n = cfg.train.eval_generate
    if not n or cfg.data.objective != "chat":
        return None
    conversations = validation_conversations(cfg)
    if not conversations:
        log.warning("train.eval_generate=%d: no validation data to generate for", n)
        return None

    def on_evaluate(model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        return generation_metrics(model, tokenizer, conversations, n, cfg.train.batch_size)

    return on_evaluate
