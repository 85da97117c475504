"""Anchors: a penalty that keeps continued training near the weights it started from.

Continual learning (``chattune learn``) trains an existing version on new conversations.
Replay (mixing old conversations in) is the main defence against forgetting; an anchor adds
a quadratic pull toward the starting weights ``θ₀``, over the trained parameters only::

    penalty = weight · Σᵢ Fᵢ (θᵢ − θ₀ᵢ)²

* ``l2sp`` (Li et al., 2018, "Explicit inductive bias for transfer learning"): ``Fᵢ = 1``.
* ``ewc`` (Kirkpatrick et al., 2017, "Overcoming catastrophic forgetting"): ``Fᵢ`` is the
  diagonal of the empirical Fisher information on old data (the mean squared gradient of
  the loss), so parameters the old data depends on are held harder.

The Fisher diagonal is rescaled to mean 1 over the trained parameters, so one
``train.anchor_weight`` means the same total pull for both kinds; ewc only redistributes it.
(Raw Fisher values scale with the loss and the batch size, which would make the weight a
number to re-tune per data set.)

No maintained library offers this for an arbitrary peft/transformers model inside someone
else's loop (Avalanche ships EWC as a strategy that owns the training loop), so it is these
few lines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

log = logging.getLogger(__name__)


class Anchor:
    """``weight · Σ F (θ − θ₀)²`` over the parameters that train; call it for the term."""

    def __init__(
        self,
        params: dict[str, torch.nn.Parameter],
        weight: float,
        importance: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.params = params
        self.start = {n: p.detach().clone() for n, p in params.items()}
        self.importance = importance
        self.weight = weight

    def __call__(self) -> torch.Tensor:
        terms = []
        for name, p in self.params.items():
            drift = (p - self.start[name]).pow(2)
            if self.importance is not None:
                drift = drift * self.importance[name]
            terms.append(drift.sum())
        return self.weight * torch.stack(terms).sum()

    def distance(self) -> float:
        """The unweighted squared distance from the start (for logs and tests)."""
        with torch.no_grad():
            return float(sum((p - self.start[n]).pow(2).sum() for n, p in self.params.items()))


def trainable(model: Any) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def l2sp(model: Any, weight: float) -> Anchor:
    """An L2-SP anchor at ``model``'s current trainable weights."""
    return Anchor(trainable(model), weight)


def fisher_diagonal(
    model: Any, loss_module: Any, batches: Iterable[dict[str, torch.Tensor]], device: Any
) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the per-token loss, per trained parameter, over ``batches``
    (each a collated batch); rescaled to mean 1 (see the module docstring)."""
    params = trainable(model)
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    n_batches = 0
    was_training = loss_module.training
    loss_module.eval()  # no dropout: the Fisher of the model as it is
    for batch in batches:
        loss_sum, n_tokens = loss_module(**{k: v.to(device) for k, v in batch.items()})
        model.zero_grad(set_to_none=True)
        (loss_sum / n_tokens.clamp(min=1)).backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().pow(2)
        n_batches += 1
    model.zero_grad(set_to_none=True)
    loss_module.train(was_training)
    if n_batches == 0:
        raise ValueError("no batches to estimate the Fisher information from")
    total = sum(f.sum() for f in fisher.values())
    count = sum(f.numel() for f in fisher.values())
    mean = float(total) / max(count, 1)
    if mean == 0.0:  # no gradient reached the parameters: every weight held the same
        log.warning("ewc: the Fisher estimate is zero everywhere; anchoring like l2sp")
        return {n: torch.ones_like(f) for n, f in fisher.items()}
    return {n: f / mean for n, f in fisher.items()}


def ewc(
    model: Any,
    loss_module: Any,
    batches: Iterable[dict[str, torch.Tensor]],
    device: Any,
    weight: float,
) -> Anchor:
    """An EWC anchor at ``model``'s current weights, weighted by the Fisher of ``batches``."""
    importance = fisher_diagonal(model, loss_module, batches, device)
    return Anchor(trainable(model), weight, importance)
