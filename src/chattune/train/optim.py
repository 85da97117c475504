"""Optimizers and learning-rate schedules (all from maintained libraries)."""

from __future__ import annotations

from typing import Any

from chattune.config import TrainConfig


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases, norms and other 1-D parameters are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: Any, cfg: TrainConfig) -> Any:
    """AdamW (torch), SGD with momentum (torch) or LAMB (pytorch-optimizer)."""
    import torch

    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    from pytorch_optimizer import Lamb

    return Lamb(groups, lr=cfg.lr)


def build_scheduler(optimizer: Any, cfg: TrainConfig, total_steps: int) -> Any:
    """Warmup then linear / cosine decay (or constant), via transformers' schedule helpers."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(cfg.scheduler, cfg.scheduler)
    warmup = round(cfg.warmup_ratio * total_steps)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
