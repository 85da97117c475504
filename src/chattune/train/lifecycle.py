"""A run's life around the steps: resume, checkpoints, best weights, early stopping, Ctrl+C,
the progress bar and the output folder.

The loop (train/loop.py) says *when*; these functions say *what happens then*. Only the main
process writes files; every process waits for it, so all ranks leave each call together.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from chattune.config import dump_config
from chattune.errors import ConfigError
from chattune.model.loss import unwrap_peft
from chattune.runs import META_FILE
from chattune.train import checkpoint as ckpt
from chattune.train.card import write_model_card
from chattune.train.setup import Run

log = logging.getLogger(__name__)


def checkpoint_root(run: Run) -> Path:
    return run.output / "checkpoints"


def batch_fingerprint(run: Run) -> dict[str, Any]:
    """What decides the batches a run trains on, and so what a checkpoint's position in an
    epoch means: batch size, accumulation, processes, seed and the encoded training data."""
    digest = hashlib.sha256()
    for example in run.data.train:
        ids = getattr(example, "input_ids", None)
        if ids is None:  # a preference pair
            ids = [*example.chosen.input_ids, -1, *example.rejected.input_ids]
        digest.update(array("q", ids).tobytes() + b"|")
    t = run.cfg.train
    return {
        "batch_size": t.batch_size,
        "grad_accum": t.grad_accum,
        "processes": run.accelerator.num_processes,
        "seed": t.seed,
        "examples": len(run.data.train),
        "data_sha256": digest.hexdigest(),
    }


def refuse_other_batches(run: Run, folder: Path) -> None:
    """Raise if the checkpoint in ``folder`` was trained on other batches than this run would
    make (``train.resume_force`` resumes anyway, with a warning)."""
    saved = ckpt.load_batches(folder)
    if saved is None:  # a checkpoint from before chattune recorded this
        return
    now = batch_fingerprint(run)
    changed = [k for k in now if saved.get(k) != now[k]]
    if not changed:
        return
    what = ", ".join(
        f"{k} {saved.get(k)} -> {now[k]}" if k != "data_sha256" else "the training data"
        for k in changed
    )
    if run.cfg.train.resume_force:
        log.warning("--resume-force: resuming %s although %s changed", folder, what)
        return
    raise ConfigError(
        f"--resume: {folder} was trained on other batches than this run would make ({what}): "
        "its place in the epoch would point into different data. Resume with the settings "
        "and data it was made with, or pass --resume-force (train.resume_force) to continue "
        "from its weights anyway"
    )


def resume_or_refuse(run: Run) -> None:
    """Continue from the newest complete checkpoint, or refuse to overwrite an old run."""
    root = checkpoint_root(run)
    if run.is_main:
        ckpt.sweep_incomplete(root)
    run.accelerator.wait_for_everyone()  # no rank lists checkpoints mid-sweep
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
    refuse_other_batches(run, found[-1])
    rank = run.accelerator.process_index
    run.state = ckpt.load_checkpoint(found[-1], run.model, run.optimizer, run.scheduler, rank)
    method_state = ckpt.load_method_state(found[-1])
    if method_state is not None and run.prepared.load_state is not None:
        run.prepared.load_state(method_state)
    run.last_saved_step = run.state.step  # that checkpoint is this step's: no need to rewrite it
    log.info("resumed from %s (step %d)", found[-1], run.state.step)


def save_checkpoint(run: Run) -> None:
    """Checkpoint this step (once, however often asked), keeping the newest few."""
    if run.last_saved_step == run.state.step:
        return
    run.last_saved_step = run.state.step
    rng_states = [ckpt.rng_state()]
    if run.accelerator.num_processes > 1:  # every rank's generators, in rank order
        from accelerate.utils import gather_object

        rng_states = gather_object(rng_states)
    if run.is_main:
        root = checkpoint_root(run)
        folder = root / f"step-{run.state.step:07d}"
        parts = (run.model, run.optimizer, run.scheduler, run.state, dump_config(run.cfg))
        save_state = run.prepared.save_state
        ckpt.save_checkpoint(
            folder,
            *parts,
            point=run.hooks.point,
            rng_states=rng_states,
            method_state=save_state() if save_state is not None else None,
            batches=batch_fingerprint(run),
        )
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
        # the settings chosen for what the user left unset (train/setup.py resolve_defaults)
        "lr": run.cfg.train.lr,
        "epochs": run.cfg.train.epochs,
    }
    if final:
        summary.update(final_eval_loss=round(final["eval_loss"], 4))
        best = run.state.best_eval_loss
        summary.update(best_eval_loss=round(best, 4), best_step=run.state.best_step)
    return summary


def embeddings_in_float32(model: Any) -> None:
    """Frozen bf16 input/output embeddings back to float32, before saving an adapter.

    bf16 training stores frozen weights in bf16 (``frozen_weights_in_bf16``); peft writes the
    base embedding and head into the adapter file when the adapter targets them
    (``save_embedding_layers="auto"``), and loading that adapter would then replace a float32
    base's weights with bf16-rounded ones. The upcast is exact, and only these two matrices
    (not the whole model, which could exhaust a GPU at the last step) are touched.
    """
    lm = unwrap_peft(model)
    for module in (lm.get_input_embeddings(), lm.get_output_embeddings()):
        weight = getattr(module, "weight", None)
        frozen = isinstance(weight, torch.Tensor) and not weight.requires_grad
        if frozen and weight.dtype == torch.bfloat16:
            weight.data = weight.data.float()


def save_output(run: Run, summary: dict[str, Any]) -> None:
    """Write the best weights (or the last), tokenizer, config, metadata and model card."""
    best = checkpoint_root(run) / "best" / "trainable.safetensors"
    if best.exists():
        ckpt.load_trainable(run.model, best)
    if not run.is_main:
        return
    embeddings_in_float32(run.model)
    run.model.save_pretrained(run.output, safe_serialization=True)
    run.hooks.point("output.partial", run.state.step)
    run.tokenizer.save_pretrained(run.output)
    (run.output / "config.yaml").write_text(dump_config(run.cfg))
    meta = {"base": run.cfg.model.base, "method": run.cfg.adapter.method, **summary}
    (run.output / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    write_model_card(run.output, run.cfg, summary)
