"""What a data set looks like to the model that will train on it (``chattune data stats``).

Pure: conversations and a tokenizer in, numbers out. Reading files and loading the tokenizer
belong to the command, so this package never imports the model layer above it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chattune.data.dataset import encode_conversations
from chattune.data.render import MaskPolicy
from chattune.data.types import Conversation


@dataclass(frozen=True)
class DataStats:
    """Counts for one data set under one tokenizer, mask policy and length limit."""

    conversations: int
    turns: int
    assistant_turns: int
    tokens: int  # with no length limit: the data as written
    mean_tokens: float  # per conversation
    median_tokens: int
    max_tokens: int
    trained_tokens: int  # tokens the loss is computed on under ``mask``
    truncated: int  # conversations that lose their oldest turns at ``max_len``
    dropped: int  # conversations with nothing trainable left at ``max_len``
    mask: MaskPolicy
    max_len: int

    def rows(self) -> dict[str, Any]:
        """Label -> value, in the order ``chattune data stats`` prints them."""
        share = self.trained_tokens / max(self.tokens, 1)
        return {
            "conversations": self.conversations,
            "turns": self.turns,
            "assistant turns": self.assistant_turns,
            "tokens": self.tokens,
            "tokens per conversation (mean / median / max)": (
                f"{self.mean_tokens:.0f} / {self.median_tokens} / {self.max_tokens}"
            ),
            f"trained tokens ({self.mask})": f"{self.trained_tokens} ({share:.1%})",
            f"truncated at --max-len {self.max_len}": self.truncated,
            f"dropped at --max-len {self.max_len}": self.dropped,
        }


def data_stats(
    conversations: list[Conversation], tokenizer: Any, max_len: int, mask: MaskPolicy
) -> DataStats:
    """Measure ``conversations`` twice: with no length limit and at ``max_len``.

    Example:
        >>> data_stats(convs, tokenizer, 1024, MaskPolicy.ASSISTANT).truncated  # doctest: +SKIP
        3
    """
    if not conversations:
        raise ValueError("data_stats needs at least one conversation")
    full, _ = encode_conversations(conversations, tokenizer, 10**9, mask)
    _, report = encode_conversations(conversations, tokenizer, max_len, mask)
    lengths = sorted(len(e.input_ids) for e in full)
    return DataStats(
        conversations=len(conversations),
        turns=sum(len(c.messages) for c in conversations),
        assistant_turns=sum(c.assistant_turns for c in conversations),
        tokens=sum(lengths),
        mean_tokens=sum(lengths) / len(lengths),
        median_tokens=lengths[len(lengths) // 2],
        max_tokens=lengths[-1],
        trained_tokens=sum(e.n_trained for e in full),
        truncated=report.truncated,
        dropped=report.dropped,
        mask=mask,
        max_len=max_len,
    )
