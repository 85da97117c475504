"""Direct preference optimisation (DPO) inside chattune's one training loop.

For a pair (prompt x, chosen reply y_w, rejected reply y_l) the loss is (Rafailov et al.
2023, "Direct Preference Optimization")::

    -log σ( β · [ (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x)) ] )

π is the model being trained, π_ref the model training started from (for a learning
round: the current version), β = ``train.dpo_beta``. A sequence's log-probability is
minus the summed token loss over its reply, which :class:`LabelledLoss` computes with the
reply as the only labelled span (``data.preference``); the reference's are computed once,
before the first step, and stored with each pair, so no second model sits in memory.
A mixture-of-experts model that trains its router (``output_router_logits``) adds
``coef * aux_loss`` of the policy's forward to the mean pair loss, as TRL does; the
reference log-probabilities and the validation loss leave it out.

Why not TRL's ``DPOTrainer``: it is a transformers ``Trainer`` with its own loop, its own
checkpoints and its own data pipeline. chattune's loop brings crash-safe resume, the
deterministic data order, Accelerate scale-out, the anchor penalty and the model card,
which DPO rounds then get for free; the loss itself is the five lines below.
``bench/dpo_vs_trl.py`` checks it against TRL's on the same pairs and model.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from chattune.data.batching import collate
from chattune.data.preference import EncodedPair


def _batch(pairs: list[EncodedPair], pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    """Chosen members first, then rejected: one forward pass scores both."""
    examples = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return {k: v.to(device) for k, v in collate(examples, pad_id).items()}


def log_probs(loss_module: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each row's summed log-probability of its labelled tokens."""
    sums, _ = loss_module(**batch, per_example=True)
    return -sums


@torch.no_grad()
def fill_reference(run: Any, pairs: list[EncodedPair]) -> None:
    """Store the starting model's log-probabilities of every pair's replies on the pairs."""
    was_training = run.loss_module.training
    run.loss_module.eval()
    bs = run.cfg.train.batch_size
    for start in range(0, len(pairs), bs):
        chunk = pairs[start : start + bs]
        with run.accelerator.autocast():
            lp = log_probs(run.eval_module, _batch(chunk, run.tokenizer.pad_token_id,
                                                   run.accelerator.device)).float()  # fmt: skip
        for i, pair in enumerate(chunk):
            pair.ref_chosen, pair.ref_rejected = lp[i].item(), lp[len(chunk) + i].item()
    run.loss_module.train(was_training)


def dpo_losses(
    policy: torch.Tensor, pairs: list[EncodedPair], beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pair loss, per-pair implicit reward margin) from the policy's log-probabilities
    (chosen rows first, then rejected)."""
    n = len(pairs)
    ref = torch.tensor([[p.ref_chosen for p in pairs], [p.ref_rejected for p in pairs]],
                       dtype=policy.dtype, device=policy.device)  # fmt: skip
    margin = beta * ((policy[:n] - ref[0]) - (policy[n:] - ref[1]))
    return -F.logsigmoid(margin), margin


def preference_step(run: Any, group: list[list[int]]) -> tuple[float, int]:
    """One optimizer step of DPO over ``group`` micro-batches of pair indices: (mean loss
    per pair, real tokens), over every rank. Accumulated micro-batches and DDP ranks give
    the gradient of one large batch: each adds its pairs' losses times ``world`` over the
    step's global pair count (DDP then averages over the ranks; as for the token loss in
    train/loop.py)."""
    beta, world = run.cfg.train.dpo_beta, run.accelerator.num_processes
    local_tokens = 0
    for indices in group:
        for i in indices:
            pair = run.data.train[i]
            local_tokens += len(pair.chosen.input_ids) + len(pair.rejected.input_ids)
    total_pairs, tokens = run.sum_over_ranks(sum(len(b) for b in group), local_tokens)
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.accelerator.device)
    for k, indices in enumerate(group):
        pairs = [run.data.train[i] for i in indices]
        batch = _batch(pairs, run.tokenizer.pad_token_id, run.accelerator.device)
        last = k == len(group) - 1
        sync = nullcontext() if last else run.accelerator.no_sync(run.loss_module)
        with sync, run.accelerator.autocast():
            sums, _, aux = run.loss_module(**batch, per_example=True, router_aux=True)
            losses, _ = dpo_losses(-sums, pairs, beta)
            if aux is not None:  # the router term, weighted by this micro-batch's pairs
                losses = losses + aux
            loss = losses.sum() * world / max(total_pairs, 1)
            if run.anchor is not None:
                loss = loss + run.anchor() / len(group)
        run.accelerator.backward(loss)
        loss_sum += losses.detach().sum().double()
    if world > 1:
        loss_sum = run.accelerator.reduce(loss_sum, reduction="sum")
    return loss_sum.item() / max(total_pairs, 1), tokens


@torch.no_grad()
def preference_validation(run: Any) -> dict[str, float]:
    """Mean DPO loss (``eval_loss``: what early stopping and the best checkpoint use) and
    the share of pairs whose chosen reply the model now prefers more than the reference
    did (``eval_reward_accuracy``), over all ranks."""
    run.loss_module.eval()
    pairs: list[EncodedPair] = run.data.val
    bs = run.cfg.train.batch_size
    chunks = [pairs[i : i + bs] for i in range(0, len(pairs), bs)]
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    total = torch.zeros(3, dtype=torch.float64, device=run.accelerator.device)
    for chunk in chunks[rank::world]:
        batch = _batch(chunk, run.tokenizer.pad_token_id, run.accelerator.device)
        with run.accelerator.autocast():
            lp = log_probs(run.eval_module, batch).float()
        losses, margin = dpo_losses(lp, chunk, run.cfg.train.dpo_beta)
        total += torch.stack([losses.sum().double(), (margin > 0).sum().double(),
                              torch.tensor(float(len(chunk)), dtype=torch.float64,
                                           device=total.device)])  # fmt: skip
    total = run.accelerator.reduce(total, reduction="sum")
    run.loss_module.train()
    n = max(total[2].item(), 1.0)
    loss = total[0].item() / n
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)),
            "eval_reward_accuracy": total[1].item() / n}  # fmt: skip
