"""The one training loop: read top to bottom, every part a small named function.

``run_train(cfg)`` = build_data -> build_model -> (resume) -> train_step x N with evaluate /
save_checkpoint along the way -> save_output. Scale-out is Hugging Face Accelerate: the same
code runs as one process or under ``accelerate launch`` (DDP); each rank trains on its own
share of every epoch's batches and only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chattune.config import RunConfig, dump_config
from chattune.data.batching import EncodeReport, collate, length_grouped_batches
from chattune.data.dataset import (
    encode_conversations,
    encode_documents,
    require_trainable,
    split_validation,
)
from chattune.data.readers import read_many
from chattune.data.render import Encoded
from chattune.errors import ConfigError
from chattune.model.adapters import Prepared, prepare
from chattune.model.loading import load_base
from chattune.train import checkpoint as ckpt
from chattune.train.card import write_model_card
from chattune.train.metrics import MetricsLogger
from chattune.train.optim import build_optimizer, build_scheduler
from chattune.train.step import LabelledLoss, unwrap_peft

log = logging.getLogger(__name__)


@dataclass
class Data:
    train: list[Encoded]
    val: list[Encoded]
    train_report: EncodeReport
    val_report: EncodeReport | None
    val_conversations: list[Any] = field(default_factory=list)  # for --eval-generate


@dataclass
class Run:
    """What the loop works with; built once by ``run_train``."""

    cfg: RunConfig
    accelerator: Any
    prepared: Prepared
    loss_module: Any  # LabelledLoss, wrapped by Accelerate (DDP) when distributed
    optimizer: Any
    scheduler: Any
    tokenizer: Any
    data: Data
    total_steps: int
    output: Path
    state: ckpt.TrainState = field(default_factory=ckpt.TrainState)
    stop_requested: bool = False  # Ctrl+C: checkpoint and exit
    early_stopped: bool = False
    last_saved_step: int = -1

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def model(self) -> Any:
        return self.prepared.model


def build_data(cfg: RunConfig, tokenizer: Any) -> Data:
    """Read, validate and encode the train and validation sets."""
    d = cfg.data
    if not d.train:
        raise ConfigError("data.train (--data): give at least one training file")
    items = read_many(d.train, d.format, d.objective)
    val_items = read_many(d.val, d.format, d.objective) if d.val else []
    if d.val_split:
        items, val_items = split_validation(items, d.val_split, cfg.train.seed)

    def encode(xs: list[Any]) -> tuple[list[Encoded], EncodeReport]:
        if d.objective == "lm":
            return encode_documents(xs, tokenizer, d.block_size)
        return encode_conversations(xs, tokenizer, d.max_len, d.mask)

    train, train_report = encode(items)
    require_trainable(train, train_report, ", ".join(d.train), d.max_len)
    val, val_report = encode(val_items) if val_items else ([], None)
    if train_report.truncated or train_report.dropped:
        log.warning(
            "max_len %d: %d conversations lost their oldest turns, %d did not fit at all",
            d.max_len,
            train_report.truncated,
            train_report.dropped,
        )
    chats = val_items if d.objective == "chat" else []
    return Data(train, val, train_report, val_report, chats)


def epoch_batches(run: Run, epoch: int) -> list[list[int]]:
    """This rank's batches for ``epoch``: the same on every resume, disjoint across ranks."""
    lengths = [len(e.input_ids) for e in run.data.train]
    batches = length_grouped_batches(lengths, run.cfg.train.batch_size, run.cfg.train.seed, epoch)
    world, rank = run.accelerator.num_processes, run.accelerator.process_index
    per_rank = len(batches) // world  # every rank must take the same number of steps
    return batches[rank::world][:per_rank]


def count_steps(cfg: RunConfig, n_examples: int, world: int) -> int:
    batches = math.ceil(n_examples / cfg.train.batch_size) // world
    if batches == 0:
        raise ConfigError(f"{n_examples} examples are too few for {world} processes")
    if cfg.train.max_steps:
        return cfg.train.max_steps
    per_epoch = math.ceil(batches / cfg.train.grad_accum)
    return max(1, math.ceil(cfg.train.epochs * per_epoch))


def to_device(batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def train_step(run: Run, group: list[list[int]]) -> tuple[float, int]:
    """One optimizer step over ``group`` micro-batches; return (mean loss, real tokens).

    The loss is normalised by the labelled-token count of the whole group, so accumulating
    micro-batches gives the same gradient as one large batch.
    """
    pad = run.tokenizer.pad_token_id
    batches = [collate([run.data.train[i] for i in b], pad) for b in group]
    n_labelled = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
    loss_sum = 0.0
    for k, batch in enumerate(batches):
        last = k == len(batches) - 1
        sync = nullcontext() if last else run.accelerator.no_sync(run.loss_module)
        with sync, run.accelerator.autocast():
            token_loss, _ = run.loss_module(**to_device(batch, run.accelerator.device))
            loss = token_loss / max(n_labelled, 1)
            if run.prepared.regularizer is not None:
                loss = loss + run.prepared.regularizer() / len(batches)
        run.accelerator.backward(loss)
        loss_sum += token_loss.item()
    if run.cfg.train.max_grad_norm:
        run.accelerator.clip_grad_norm_(run.loss_module.parameters(), run.cfg.train.max_grad_norm)
    run.optimizer.step()
    ckpt.fault_point("step.after_update", run.state.step + 1)
    run.scheduler.step()
    if run.prepared.after_step is not None:
        run.prepared.after_step(run.state.step + 1)
    run.optimizer.zero_grad(set_to_none=True)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return loss_sum / max(n_labelled, 1), real_tokens


def run_eval(run: Run, logger: MetricsLogger, epoch: float) -> dict[str, float]:
    """Evaluate once per step at most; log; track the best and early stopping."""
    s = run.state
    if s.last_eval_step != s.step:
        s.last_eval_step = s.step
        s.last_eval = evaluate(run) | generation_metrics(run)
        logger.log({"step": s.step, "epoch": round(epoch, 4), **s.last_eval})
        after_eval(run, s.last_eval)
    return s.last_eval


@torch.no_grad()
def evaluate(run: Run) -> dict[str, float]:
    """Token-weighted validation loss and perplexity, summed over all ranks."""
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
            loss, n = run.loss_module(**to_device(batch, run.accelerator.device))
        total += torch.stack([loss.double(), n.double()])
        ckpt.fault_point("eval.mid", run.state.step)
    total = run.accelerator.reduce(total, reduction="sum")
    run.loss_module.train()
    eval_loss = (total[0] / total[1].clamp(min=1)).item()
    return {"eval_loss": eval_loss, "eval_ppl": math.exp(min(eval_loss, 50.0))}


def generation_metrics(run: Run) -> dict[str, float]:
    """With ``--eval-generate N``: score greedy replies to N validation turns (rank 0 only)."""
    n = run.cfg.train.eval_generate
    if not n or not run.data.val_conversations or not run.is_main:
        return {}
    from chattune.evaluate.examples import turn_examples
    from chattune.evaluate.generation import generate_replies
    from chattune.evaluate.scoring import aggregate, make_records
    from chattune.model.generation import GenerationOptions

    examples = turn_examples(run.data.val_conversations, n)
    run.loss_module.eval()
    replies = generate_replies(
        run.model,
        run.tokenizer,
        examples,
        GenerationOptions(),
        run.cfg.train.batch_size,
        progress=False,
    )
    run.loss_module.train()
    records = make_records(
        [e.id for e in examples],
        [e.reference for e in examples],
        [r.text for r in replies],
        [r.stopped for r in replies],
        [(0.0, 0)] * len(examples),
    )
    scores = aggregate(records)
    keys = ("bleu", "rouge_l", "f1", "distinct_1", "distinct_2", "avg_len", "non_stop_rate")
    return {f"eval_{k}": scores[k] for k in keys}


def checkpoint_root(run: Run) -> Path:
    return run.output / "checkpoints"


def save_checkpoint(run: Run) -> None:
    if run.last_saved_step == run.state.step:
        return
    run.last_saved_step = run.state.step
    if run.is_main:
        root = checkpoint_root(run)
        folder = root / f"step-{run.state.step:07d}"
        ckpt.save_checkpoint(
            folder, run.model, run.optimizer, run.scheduler, run.state, dump_config(run.cfg)
        )
        ckpt.prune(root, run.cfg.train.keep_checkpoints)
        log.info("checkpoint saved: %s", folder)
    run.accelerator.wait_for_everyone()


def maybe_resume(run: Run) -> None:
    """Continue from the newest complete checkpoint, or refuse to overwrite an old run."""
    root = checkpoint_root(run)
    if run.is_main:
        ckpt.sweep_incomplete(root)
    found = ckpt.complete_checkpoints(root)
    if not run.cfg.train.resume:
        if found:
            raise ConfigError(
                f"train.output (--output) {run.output} already holds checkpoints of a run; "
                "pass --resume to continue it or choose another --output"
            )
        return
    if not found:
        log.warning("--resume: no complete checkpoint in %s; starting from scratch", root)
        return
    run.state = ckpt.load_checkpoint(found[-1], run.model, run.optimizer, run.scheduler)
    run.last_saved_step = run.state.step  # that checkpoint is this step's: no need to rewrite it
    log.info("resumed from %s (step %d)", found[-1], run.state.step)


def after_eval(run: Run, metrics: dict[str, float]) -> None:
    """Track the best evaluation: keep its weights, count patience."""
    s, cfg = run.state, run.cfg.train
    if s.best_eval_loss is None or metrics["eval_loss"] < s.best_eval_loss - cfg.min_delta:
        s.best_eval_loss, s.best_step, s.evals_without_gain = metrics["eval_loss"], s.step, 0
        if run.is_main:
            ckpt.save_best(checkpoint_root(run) / "best", run.model, s)
        run.accelerator.wait_for_everyone()
    else:
        s.evals_without_gain += 1
        if cfg.patience and s.evals_without_gain >= cfg.patience:
            log.info("early stopping: no gain in %d evaluations", s.evals_without_gain)
            run.early_stopped = True


def save_output(run: Run, summary: dict[str, Any]) -> None:
    """Write the best weights (or the last), tokenizer, config, metadata and model card."""
    best = checkpoint_root(run) / "best" / "trainable.safetensors"
    if best.exists():
        ckpt.load_trainable(run.model, best)
    if not run.is_main:
        return
    model = run.model
    model.save_pretrained(run.output, safe_serialization=True)
    ckpt.fault_point("output.partial", run.state.step)
    run.tokenizer.save_pretrained(run.output)
    (run.output / "config.yaml").write_text(dump_config(run.cfg))
    meta = {"base": run.cfg.model.base, "method": run.cfg.adapter.method, **summary}
    (run.output / "chattune.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_model_card(run.output, run.cfg, summary)


def install_interrupt_handler(run: Run) -> Any:
    """First Ctrl+C: finish the step, save a checkpoint, exit. Second: stop at once."""

    def handler(signum: int, frame: Any) -> None:
        if run.stop_requested:
            raise KeyboardInterrupt
        run.stop_requested = True
        log.warning("interrupted: saving a checkpoint after this step (Ctrl+C again to abort)")

    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        return None


def progress_bar(run: Run) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=run.total_steps,
        initial=run.state.step,
        desc="train",
        unit="step",
        disable=not (run.is_main and run.cfg.train.progress),
        dynamic_ncols=True,
    )


def train_loop(run: Run, logger: MetricsLogger) -> bool:
    """Step until done, early-stopped or interrupted; return True if interrupted."""
    cfg, s = run.cfg.train, run.state
    bar = progress_bar(run)
    run.loss_module.train()
    while s.step < run.total_steps and not (run.stop_requested or run.early_stopped):
        batches = epoch_batches(run, s.epoch)
        while s.batch_in_epoch < len(batches) and s.step < run.total_steps:
            group = batches[s.batch_in_epoch : s.batch_in_epoch + cfg.grad_accum]
            lr = run.scheduler.get_last_lr()[0]  # the rate this step uses
            start = time.perf_counter()
            loss, tokens = train_step(run, group)
            elapsed = time.perf_counter() - start
            s.step, s.batch_in_epoch = s.step + 1, s.batch_in_epoch + len(group)
            s.tokens_seen += tokens
            epoch = s.epoch + s.batch_in_epoch / len(batches)
            tok_s = tokens * run.accelerator.num_processes / elapsed
            if s.step % cfg.log_every == 0 or s.step == run.total_steps:
                logger.log(
                    {
                        "step": s.step,
                        "epoch": round(epoch, 4),
                        "loss": loss,
                        "lr": lr,
                        "tokens_per_s": round(tok_s, 1),
                    }
                )
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:.0f}")
            bar.update(1)
            if run.data.val and cfg.eval_every and s.step % cfg.eval_every == 0:
                run_eval(run, logger, epoch)
            if cfg.save_every and s.step % cfg.save_every == 0:
                save_checkpoint(run)
            ckpt.fault_point("step.end", s.step)
            if run.stop_requested or run.early_stopped:
                break
        if s.batch_in_epoch >= len(batches):  # the epoch is done (not merely the run)
            s.epoch, s.batch_in_epoch = s.epoch + 1, 0
    bar.close()
    return run.stop_requested and s.step < run.total_steps


def build_run(cfg: RunConfig) -> Run:
    """Everything the loop needs: model with its method applied, data, optimizer, schedule."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    # Without a GPU, train on the CPU: under `accelerate launch`/torchrun that is DDP over gloo.
    on_cpu = not (torch.cuda.is_available() or torch.backends.mps.is_available())
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=resolve_precision(cfg.train.precision))
    set_seed(cfg.train.seed)
    with accelerator.main_process_first():  # rank 0 converts/caches the GGUF once
        model, tokenizer = load_base(
            cfg.model.base, cfg.model.attn_implementation, cfg.model.trust_remote_code
        )
    data = build_data(cfg, tokenizer)
    total = count_steps(cfg, len(data.train), accelerator.num_processes)
    prepared = prepare(model, cfg.adapter, total)
    if cfg.train.gradient_checkpointing:
        unwrap_peft(prepared.model).gradient_checkpointing_enable()
        if prepared.is_peft:
            unwrap_peft(prepared.model).enable_input_require_grads()
    optimizer = build_optimizer(prepared.model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total)
    # The scheduler is stepped by hand once per optimizer step: Accelerate's wrapper would
    # step it once per process, which changes the schedule with the number of processes.
    loss_module, optimizer = accelerator.prepare(LabelledLoss(prepared.model), optimizer)
    return Run(
        cfg,
        accelerator,
        prepared,
        loss_module,
        optimizer,
        scheduler,
        tokenizer,
        data,
        total,
        Path(cfg.train.output),
    )


def run_train(cfg: RunConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.model.base`` on ``cfg.data``; write the result to ``cfg.train.output``.

    Returns a summary (steps, losses, tokens/s) that also goes into the model card.
    """
    return train(build_run(cfg))


def train(run: Run) -> dict[str, Any]:
    """Resume if asked, loop, evaluate, checkpoint and save the output of a built run."""
    cfg = run.cfg
    maybe_resume(run)
    logger = MetricsLogger(run.output, run.state.step if cfg.train.resume else None, run.is_main)
    previous = install_interrupt_handler(run)
    try:
        started, start_tokens = time.perf_counter(), run.state.tokens_seen
        if train_loop(run, logger):
            save_checkpoint(run)
            raise KeyboardInterrupt(f"checkpoint saved at step {run.state.step}")
        final = run_eval(run, logger, run.state.epoch) if run.data.val else {}
        save_checkpoint(run)
        tokens_per_s = (run.state.tokens_seen - start_tokens) / (time.perf_counter() - started)
        summary = summarize(run, final, tokens_per_s)
        save_output(run, summary)
        run.accelerator.wait_for_everyone()
        return summary
    finally:
        logger.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def summarize(run: Run, final: dict[str, float], tokens_per_s: float) -> dict[str, Any]:
    r = run.data.train_report
    summary: dict[str, Any] = {
        "steps": run.state.step,
        "train_conversations": r.encoded,
        "train_tokens": r.tokens,
        "trained_tokens": r.trained_tokens,
        "truncated": r.truncated,
        "dropped": r.dropped,
        "tokens_per_s": round(tokens_per_s * run.accelerator.num_processes, 1),
    }
    if final:
        summary.update(final_eval_loss=round(final["eval_loss"], 4))
        best = run.state.best_eval_loss
        summary.update(best_eval_loss=round(best, 4), best_step=run.state.best_step)
    return summary


def resolve_precision(precision: str) -> str:
    """Accelerate's mixed-precision mode: bf16 autocast over fp32 weights, or none.

    ``auto`` uses bf16 only where the hardware computes it natively. On CPUs without native
    bf16 (AVX2-only, like this project's 2-core CI machines) oneDNN emulates it and a LoRA
    step on SmolLM2-135M ran about 10x slower than float32 (measured: docs/training.md).
    """
    if precision == "bf16":
        return "bf16"
    if precision == "fp32":
        return "no"
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"
