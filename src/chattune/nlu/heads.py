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

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

HEAD = "head.safetensors"


class MeanPooledClassifier(nn.Module):
    """Encoder -> mean of the (unmasked) token vectors -> unit length -> dropout -> linear.

    The unit vector is the sentence embedding exactly as the sentence-transformers model
    computes it, so :meth:`probe` can start the head from a logistic regression on the
    frozen embeddings (linear probing, then fine-tuning: Kumar et al., 2022), and
    fine-tuning begins where the strongest cheap baseline ends.
    """

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
        unit = nn.functional.normalize(pooled, dim=-1)  # (B, H), as sentence-transformers
        logits = self.head(self.dropout(unit))  # (B, labels)
        result: dict[str, Any] = {"logits": logits}
        if labels is not None:
            result["loss"] = nn.functional.cross_entropy(logits, labels)
        return result

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The unit sentence vectors (B, H) of a tokenized batch."""
        hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)

    def probe(self, vectors: np.ndarray, labels: np.ndarray, c: float = 10.0) -> float:
        """Set the head to a logistic regression (scikit-learn) on frozen ``vectors``;
        its accuracy on them. Every label must occur in ``labels``."""
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=c, max_iter=3000).fit(vectors, labels)
        order = np.argsort(lr.classes_)  # rows in label-id order
        self.head.weight.data = torch.tensor(lr.coef_[order], dtype=self.head.weight.dtype)
        self.head.bias.data = torch.tensor(lr.intercept_[order], dtype=self.head.bias.dtype)
        return float(lr.score(vectors, labels))

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
