"""``chattune data stats``: what a data set looks like to the model that will train on it."""

from __future__ import annotations

from typing import Any

from chattune.data.dataset import encode_conversations
from chattune.data.readers import read_many
from chattune.data.render import MaskPolicy


def run_stats(
    files: list[str], base: str, max_len: int, mask: str, fmt: str = "auto"
) -> dict[str, Any]:
    """Conversations, turns, template tokens, trained share and truncation at ``max_len``.

    Token counts are measured twice: with no length limit (the data as written) and at
    ``max_len`` (what training would see after dropping oldest turns).
    """
    from chattune.model.loading import base_folder, load_tokenizer

    conversations = read_many(files, fmt)
    tokenizer = load_tokenizer(base_folder(base))
    policy = MaskPolicy(mask)
    full, _ = encode_conversations(conversations, tokenizer, 10**9, policy)
    _, report = encode_conversations(conversations, tokenizer, max_len, policy)
    lengths = sorted(len(e.input_ids) for e in full)
    tokens = sum(lengths)
    trained = sum(e.n_trained for e in full)
    turns = sum(len(c.messages) for c in conversations)
    return {
        "conversations": len(conversations),
        "turns": turns,
        "assistant turns": sum(c.assistant_turns for c in conversations),
        "tokens": tokens,
        "tokens per conversation (mean / median / max)": (
            f"{tokens / len(lengths):.0f} / {lengths[len(lengths) // 2]} / {lengths[-1]}"
        ),
        f"trained tokens ({mask})": f"{trained} ({trained / max(tokens, 1):.1%})",
        f"truncated at --max-len {max_len}": report.truncated,
        f"dropped at --max-len {max_len}": report.dropped,
    }
