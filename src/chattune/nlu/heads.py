"""A classification head on mean-pooled token vectors: how a sentence encoder is fine-tuned.

transformers' ``*ForSequenceClassification`` classifies from the ``[CLS]`` token's pooler
output. Sentence-transformers encoders such as all-MiniLM-L6-v2 were trained on the *mean*
of their token vectors, and their pooler was never trained for it; so fine-tuning from
``[CLS]`` starts from a worse point than the frozen encoder plus logistic regression it must
beat (docs/nlu.md has the measured comparison). This head pools as the encoder was trained
and is small enough to write here: no library offers it for ``Trainer``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

HEAD = "head.safetensors"


class MeanPooledClassifier(nn.Module):
    """Encoder -> mean of the (unmasked) token vectors -> dropout -> linear."""

    def __init__(self, encoder: Path | str, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = AutoModel.from_pretrained(encoder)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids)  # fmt: skip
        hidden = out.last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
        logits = self.head(self.dropout(pooled))  # (B, labels)
        result: dict[str, Any] = {"logits": logits}
        if labels is not None:
            result["loss"] = nn.functional.cross_entropy(logits, labels)
        return result

    def save(self, folder: Path) -> None:
        """The encoder as a Hugging Face folder, the head beside it."""
        self.encoder.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, folder / HEAD)

    @classmethod
    def load(cls, folder: Path) -> MeanPooledClassifier:
        head = load_file(folder / HEAD)
        model = cls(folder, num_labels=head["weight"].shape[0])
        model.head.load_state_dict(head)
        return model.eval()
