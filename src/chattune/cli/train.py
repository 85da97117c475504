"""``chattune train``: fine-tune a base model (config: :class:`chattune.config.RunConfig`).

With ``--kb DIR`` (grounded fine-tuning, :mod:`chattune.data.grounded`) this command hands
training a :class:`~chattune.chat.grounded_training.KbGrounder`: the chat engine's grounding
step and prompt head, which training (below the chat layer) cannot import itself.
"""

from __future__ import annotations

from pydantic import Field

from chattune.cli.command import Command
from chattune.config import DataConfig, RunConfig


class TrainData(DataConfig):
    """:class:`DataConfig` as ``chattune train`` needs it: with training files."""

    train: list[str] = Field(min_length=1, description="training file (repeatable)")
    val: list[str] = Field(default_factory=list, description="validation file (repeatable)")


class TrainRun(RunConfig):
    """:class:`RunConfig` whose required fields are checked before any model loads."""

    data: TrainData = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]


#: Named flags of ``chattune train``; every other field is ``section.key=value``.
TRAIN_FLAGS: dict[str, str] = {
    "--data": "data.train",
    "--val-data": "data.val",
    "--val-split": "data.val_split",
    "--format": "data.format",
    "--objective": "data.objective",
    "--max-len": "data.max_len",
    "--mask": "data.mask",
    "--kb": "data.kb",
    "--base": "model.base",
    "--method": "adapter.method",
    "--output": "train.output",
    "--epochs": "train.epochs",
    "--max-steps": "train.max_steps",
    "--lr": "train.lr",
    "--batch-size": "train.batch_size",
    "--eval-every": "train.eval_every",
    "--save-every": "train.save_every",
    "--patience": "train.patience",
    "--eval-generate": "train.eval_generate",
    "--seed": "train.seed",
    "--resume": "train.resume",
    "--resume-force": "train.resume_force",
}


def cmd_train(cfg: TrainRun) -> int:
    """Fine-tune a base model on conversations (or raw text with --objective lm); with --kb,
    each reply on the grounded prompt the chat engine builds with that knowledge base."""
    from chattune.chat.grounded_training import kb_grounder
    from chattune.evaluate.during_training import eval_generate_callback
    from chattune.model.loading import quiet_transformers
    from chattune.train import TrainHooks
    from chattune.train.loop import fit
    from chattune.train.setup import build_run

    quiet_transformers()
    grounder = kb_grounder(cfg)
    hooks = TrainHooks(on_evaluate=eval_generate_callback(cfg))
    summary = fit(build_run(cfg, hooks, grounder))
    print(f"done: {cfg.train.output}")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    return 0


TRAIN = Command("train", TrainRun, TRAIN_FLAGS, cmd_train)
COMMANDS = [TRAIN]
