"""The loss, computed only where there are labels.

A causal LM's head maps every position to a vocabulary-sized row (49,152 floats for SmolLM2);
with assistant-only masks most positions are prompt, so most of that work is thrown away.
:class:`LabelledLoss` runs the decoder, keeps the hidden states at labelled positions, and
applies the head to those alone. It is an ``nn.Module`` so that DDP (through Accelerate)
wraps it and its forward still synchronises gradients.

It lives in the model layer because training (the objective) and evaluation (perplexity of
reference replies) compute the same quantity and must agree on it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chattune.data.render import IGNORE_INDEX


def unwrap_peft(model: Any) -> Any:
    """The transformers model inside a peft wrapper (adapter layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LabelledLoss(nn.Module):
    """Wrap a causal LM; ``forward`` returns (summed token loss, number of labelled tokens)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        per_example: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed loss and labelled-token count; per row (``[B]`` each) if ``per_example``."""
        lm = unwrap_peft(self.model)
        hidden = lm.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state  # [B, T, H]
        targets = labels[:, 1:]  # position t predicts token t+1
        keep = targets != IGNORE_INDEX  # [B, T-1]
        logits = lm.get_output_embeddings()(hidden[:, :-1][keep])  # [N, V], N labelled tokens
        if not per_example:
            return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), keep.sum()
        token_loss = F.cross_entropy(logits.float(), targets[keep], reduction="none")  # [N]
        rows = keep.nonzero()[:, 0]  # the batch row of each labelled token
        sums = torch.zeros(len(labels), device=token_loss.device).index_add_(0, rows, token_loss)
        return sums, keep.sum(dim=1)
