"""The one training loop, top to bottom.

``run_train(cfg)`` = ``build_run`` (train/setup.py) -> ``fit``: resume if asked, then
``run_step`` until done (``train_step``, then log / ``eval_and_log`` / ``save_checkpoint`` when
due), a last evaluation, the output folder. What happens at a checkpoint, at the best
evaluation or on Ctrl+C is in train/lifecycle.py; this file says when.

Scale-out is Hugging Face Accelerate: each rank trains on its own share of every epoch's
batches, DDP averages the gradients, and only rank 0 writes files.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

import torch

from chattune.config import RunConfig
from chattune.data.batching import collate, length_grouped_batches
from chattune.train.hooks import TrainHooks
from chattune.train.lifecycle import (
    catch_interrupts,
    progress_bar,
    resume_or_refuse,
    save_checkpoint,
    save_output,
    summarize,
    track_best,
)
from chattune.train.preference import preference_step, preference_validation
from chattune.train.setup import Run, build_run
from chattune.train.tracking import MetricsLogger


def run_train(cfg: RunConfig, hooks: TrainHooks | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.model.base`` on ``cfg.data``; write the result to ``cfg.train.output``.

    Returns a summary (steps, losses, tokens/s) that also goes into the model card.

    Example:
        >>> cfg = build_config(overrides=["data.train=[chats.jsonl]", "train.max_steps=2"])
        >>> run_train(cfg)["steps"]  # doctest: +SKIP
        2
    """
    return fit(build_run(cfg, hooks))


def fit(run: Run) -> dict[str, Any]:
    """Resume if asked, loop, evaluate, checkpoint and save the output of a built run."""
    resume_or_refuse(run)
    resumed_at = run.state.step if run.cfg.train.resume else None
    logger = MetricsLogger(run.output, resumed_at, run.is_main, config=run.cfg)
    with logger, catch_interrupts(run):
        started, start_tokens = time.perf_counter(), run.state.tokens_seen
        train_loop(run, logger)
        if run.stop_requested and run.state.step < run.total_steps:
            save_checkpoint(run)
            raise KeyboardInterrupt(f"checkpoint saved at step {run.state.step}")
        final = eval_and_log(run, logger, run.state.epoch) if run.data.val else {}
        save_checkpoint(run)
        tokens_per_s = (run.state.tokens_seen - start_tokens) / (time.perf_counter() - started)
        summary = summarize(run, final, tokens_per_s)
        save_output(run, summary)
    run.accelerator.wait_for_everyone()
    return summary


def train_loop(run: Run, logger: MetricsLogger) -> None:
    """Step until the last step, early stopping or Ctrl+C, epoch after epoch."""
    s = run.state
    with progress_bar(run) as bar:
        run.loss_module.train()
        while s.step < run.total_steps and not run.should_stop:
            batches = epoch_batches(run, s.epoch)
            while s.batch_in_epoch < len(batches) and s.step < run.total_steps:
                run_step(run, batches, logger, bar)
                if run.should_stop:
                    break
            if s.batch_in_epoch >= len(batches):  # the epoch is done (not merely the run)
                s.epoch, s.batch_in_epoch = s.epoch + 1, 0


def epoch_batches(run: Run, epoch: int) -> list[list[int]]:
    """This rank's batches for ``epoch``: the same on every resume, disjoint across ranks."""
    lengths = [len(e.input_ids) for e in run.data.train]
    batches = length_grouped_batches(lengths, run.cfg.train.batch_size, run.cfg.train.seed, epoch)
    world, rank = run.accelerator.num_processes, run.accelerator.process_index
    per_rank = len(batches) // world  # every rank must take the same number of steps
    return batches[rank::world][:per_rank]


def run_step(run: Run, batches: list[list[int]], logger: MetricsLogger, bar: Any) -> None:
    """One optimizer step, then what is due after it: log, evaluate, checkpoint."""
    cfg, s = run.cfg.train, run.state
    group = batches[s.batch_in_epoch : s.batch_in_epoch + cfg.grad_accum]
    lr = run.scheduler.get_last_lr()[0]  # the rate this step uses
    start = time.perf_counter()
    loss, tokens = train_step(run, group)
    tok_s = tokens / (time.perf_counter() - start)  # tokens of every rank
    s.step, s.batch_in_epoch = s.step + 1, s.batch_in_epoch + len(group)
    s.tokens_seen += tokens
    epoch = s.epoch + s.batch_in_epoch / len(batches)
    if s.step % cfg.log_every == 0 or s.step == run.total_steps:
        record = {"step": s.step, "epoch": round(epoch, 4), "loss": loss, "lr": lr}
        logger.log(record | {"tokens_per_s": round(tok_s, 1)})
    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:.0f}")
    bar.update(1)
    if run.data.val and cfg.eval_every and s.step % cfg.eval_every == 0:
        eval_and_log(run, logger, epoch)
    if cfg.save_every and s.step % cfg.save_every == 0:
        save_checkpoint(run)
    run.hooks.point("step.end", s.step)


def to_device(batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def train_step(run: Run, group: list[list[int]]) -> tuple[float, int]:
    """One optimizer step over ``group`` micro-batches; return (mean loss, real tokens):
    the backward passes of the objective (next-token loss, or DPO's for preference pairs:
    train/preference.py), then clipping, the update and the schedule."""
    if run.cfg.data.objective == "preference":
        loss, tokens = preference_step(run, group)
    else:
        loss, tokens = token_loss_backward(run, group)
    if run.cfg.train.max_grad_norm:
        run.accelerator.clip_grad_norm_(run.loss_module.parameters(), run.cfg.train.max_grad_norm)
    run.optimizer.step()
    run.hooks.point("step.after_update", run.state.step + 1)
    run.scheduler.step()
    if run.prepared.after_step is not None:
        run.prepared.after_step(run.state.step + 1)
    run.optimizer.zero_grad(set_to_none=True)
    return loss, tokens


def token_loss_backward(run: Run, group: list[list[int]]) -> tuple[float, int]:
    """The next-token loss's backward passes over ``group``: (mean loss, real tokens), both
    over every rank.

    The loss is the summed token loss over the labelled-token count of the whole step: all
    micro-batches of ``group``, on every rank. DDP averages the ranks' gradients, so each
    rank scales its sum by ``world / N`` with ``N`` the global count (all-reduced before the
    forward passes, as TRL does): the average of ``world * S_r / N`` is ``sum(S_r) / N``, the
    gradient of one process training the union. Dividing by the rank's own count instead
    would weight a rank's tokens by how few it has (length-grouped batches make ranks very
    unequal).
    """
    pad = run.tokenizer.pad_token_id
    world = run.accelerator.num_processes
    batches = [collate([run.data.train[i] for i in b], pad) for b in group]
    local_labelled = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    local_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    n_labelled, real_tokens = run.sum_over_ranks(local_labelled, local_tokens)
    scale = world / max(n_labelled, 1)
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.accelerator.device)
    for k, batch in enumerate(batches):
        last = k == len(batches) - 1
        # DDP averages gradients across ranks once, on the group's last backward.
        sync = nullcontext() if last else run.accelerator.no_sync(run.loss_module)
        with sync, run.accelerator.autocast():
            token_loss, _ = run.loss_module(**to_device(batch, run.accelerator.device))
            loss = token_loss * scale
            if run.prepared.regularizer is not None:
                loss = loss + run.prepared.regularizer() / len(batches)
            if run.anchor is not None:  # train.anchor: once per optimizer step in all
                loss = loss + run.anchor() / len(batches)
        run.accelerator.backward(loss)
        loss_sum += token_loss.detach().double()
    if world > 1:
        loss_sum = run.accelerator.reduce(loss_sum, reduction="sum")
    return loss_sum.item() / max(n_labelled, 1), real_tokens


def eval_and_log(run: Run, logger: MetricsLogger, epoch: float) -> dict[str, float]:
    """Evaluate (at most once per step), log the record, then keep the best / count patience.

    The record holds the validation loss and perplexity plus whatever ``hooks.on_evaluate``
    returns (generation metrics, for ``--eval-generate``).
    """
    s = run.state
    if s.last_eval_step != s.step:
        s.last_eval_step = s.step
        with eager_if_compiled(run):
            s.last_eval = validation_loss(run) | hook_metrics(run)
        logger.log({"step": s.step, "epoch": round(epoch, 4), **s.last_eval})
        track_best(run, s.last_eval)
        after = run.hooks.after_evaluate
        if after is not None and after(s.step, dict(s.last_eval)):
            run.early_stopped = True
    return s.last_eval


def eager_if_compiled(run: Run) -> Any:
    """With ``train.compile``, evaluate eagerly: the layers were compiled for the training
    step, and validation (no grad) or generation (a KV cache, whose per-layer index dynamo
    specialises on) would each compile again, the latter up to its recompile limit."""
    return torch.compiler.set_stance("force_eager") if run.cfg.train.compile else nullcontext()


@torch.no_grad()
def validation_loss(run: Run) -> dict[str, float]:
    """Token-weighted validation loss and perplexity, summed over all ranks (for preference
    pairs: DPO's loss and reward accuracy)."""
    if run.cfg.data.objective == "preference":
        return preference_validation(run)
    run.loss_module.eval()
    examples = run.data.val
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    bs = run.cfg.train.batch_size
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]
    rank, world = run.accelerator.process_index, run.accelerator.num_processes
    total = torch.zeros(2, dtype=torch.float64, device=run.accelerator.device)
    for b in batches[rank::world]:
        batch = collate([examples[i] for i in b], run.tokenizer.pad_token_id)
        with run.accelerator.autocast():
            loss, n = run.eval_module(**to_device(batch, run.accelerator.device))
        total += torch.stack([loss.double(), n.double()])
        run.hooks.point("eval.mid", run.state.step)
    total = run.accelerator.reduce(total, reduction="sum")
    run.loss_module.train()
    eval_loss = (total[0] / total[1].clamp(min=1)).item()
    return {"eval_loss": eval_loss, "eval_ppl": math.exp(min(eval_loss, 50.0))}


def hook_metrics(run: Run) -> dict[str, float]:
    """The caller's own evaluation metrics (``hooks.on_evaluate``), computed on rank 0."""
    on_evaluate = run.hooks.on_evaluate
    if on_evaluate is None or not run.is_main:
        return {}
    run.loss_module.eval()
    try:
        return dict(on_evaluate(run.model, run.tokenizer, run.state.step))
    finally:
        run.loss_module.train()
