"""A run's life around the steps: resume, checkpoints, best weights, early stopping, Ctrl+C,
the progress bar and the output folder.

The loop (train/loop.py) says *when*; these functions say *what happens then*. Only the main
process writes files; every process waits for it, so all ranks leave each call together.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chattune.config import dump_config
from chattune.errors import ConfigError
from chattune.runs import META_FILE
from chattune.train import checkpoint as ckpt
from chattune.train.card import write_model_card
from chattune.train.setup import Run

log = logging.getLogger(__name__)


def checkpoint_root(run: Run) -> Path:
    return run.output / "checkpoints"


def resume_or_refuse(run: Run) -> None:
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


def save_checkpoint(run: Run) -> None:
    """Checkpoint this step (once, however often asked), keeping the newest few."""
    if run.last_saved_step == run.state.step:
        return
    run.last_saved_step = run.state.step
    if run.is_main:
        root = checkpoint_root(run)
        folder = root / f"step-{run.state.step:07d}"
        parts = (run.model, run.optimizer, run.scheduler, run.state, dump_config(run.cfg))
        ckpt.save_checkpoint(folder, *parts, point=run.hooks.point)
        ckpt.prune(root, run.cfg.train.keep_checkpoints)
        log.info("checkpoint saved: %s", folder)
    run.accelerator.wait_for_everyone()


def track_best(run: Run, metrics: dict[str, float]) -> None:
    """After an evaluation: keep the weights if they are the best so far, count patience."""
    s, cfg = run.state, run.cfg.train
    if s.best_eval_loss is None or metrics["eval_loss"] < s.best_eval_loss - cfg.min_delta:
        s.best_eval_loss, s.best_step, s.evals_without_gain = metrics["eval_loss"], s.step, 0
        if run.is_main:
            ckpt.save_best(checkpoint_root(run) / "best", run.model, s, run.hooks.point)
        run.accelerator.wait_for_everyone()
    else:
        s.evals_without_gain += 1
        if cfg.patience and s.evals_without_gain >= cfg.patience:
            log.info("early stopping: no gain in %d evaluations", s.evals_without_gain)
            run.early_stopped = True


@contextmanager
def catch_interrupts(run: Run) -> Iterator[None]:
    """First Ctrl+C: finish the step, save a checkpoint, exit. Second: stop at once.

    The handler only sets ``run.stop_requested``; the loop checks it between steps, so a
    checkpoint is never written from inside a half-done step.
    """

    def handler(signum: int, frame: Any) -> None:
        if run.stop_requested:
            raise KeyboardInterrupt
        run.stop_requested = True
        log.warning("interrupted: saving a checkpoint after this step (Ctrl+C again to abort)")

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl+C is not ours to catch
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def progress_bar(run: Run) -> Any:
    """A tqdm bar over the run's steps, on the main process when ``train.progress`` is on."""
    from tqdm.auto import tqdm

    return tqdm(
        total=run.total_steps,
        initial=run.state.step,
        desc="train",
        unit="step",
        disable=not (run.is_main and run.cfg.train.progress),
        dynamic_ncols=True,
    )


def summarize(run: Run, final: dict[str, float], tokens_per_s: float) -> dict[str, Any]:
    """What the run did, for ``chattune.json``, the model card and the caller."""
    r = run.data.train_report
    summary: dict[str, Any] = {
        "steps": run.state.step,
        "train_conversations": r.encoded,
        "train_tokens": r.tokens,
        "trained_tokens": r.trained_tokens,
        "truncated": r.truncated,
        "dropped": r.dropped,
        "tokens_per_s": round(tokens_per_s, 1),  # of every rank: the step counts are global
    }
    if final:
        summary.update(final_eval_loss=round(final["eval_loss"], 4))
        best = run.state.best_eval_loss
        summary.update(best_eval_loss=round(best, 4), best_step=run.state.best_step)
    return summary


def save_output(run: Run, summary: dict[str, Any]) -> None:
    """Write the best weights (or the last), tokenizer, config, metadata and model card."""
    best = checkpoint_root(run) / "best" / "trainable.safetensors"
    if best.exists():
        ckpt.load_trainable(run.model, best)
    if not run.is_main:
        return
    run.model.save_pretrained(run.output, safe_serialization=True)
    run.hooks.point("output.partial", run.state.step)
    run.tokenizer.save_pretrained(run.output)
    (run.output / "config.yaml").write_text(dump_config(run.cfg))
    meta = {"base": run.cfg.model.base, "method": run.cfg.adapter.method, **summary}
    (run.output / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    write_model_card(run.output, run.cfg, summary)
