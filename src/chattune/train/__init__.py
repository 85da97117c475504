"""The training loop and its parts.

``run_train(cfg, hooks)`` is the entry point (``train/loop.py``); ``setup`` builds a run,
``loop`` steps and evaluates, ``lifecycle`` checkpoints, resumes, keeps the best weights and
stops early, ``checkpoint`` writes atomically, ``optim``, ``metrics`` and ``card`` do what
their names say. ``import chattune.train`` stays cheap: torch loads with ``run_train``.
"""

from __future__ import annotations

from typing import Any

from chattune.train.hooks import TrainHooks

__all__ = ["TrainHooks", "run_train"]


def __getattr__(name: str) -> Any:
    # `from chattune.train import run_train` loads the loop (and torch) only when asked.
    if name == "run_train":
        from chattune.train.loop import run_train

        return run_train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
