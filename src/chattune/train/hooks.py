"""What the caller hands the training loop: the loop calls these and imports nothing above it.

Training sits below evaluation and chat, so anything that needs them (generating replies at
each evaluation, say) comes in as a callback built by the caller. The same object carries
the test hook for crash tests, so no production code reads an environment variable to
decide to kill itself.

Example:
    >>> def extra(model, tokenizer, step):
    ...     return {"eval_answer_len": 12.0}
    >>> hooks = TrainHooks(on_evaluate=extra)
    >>> hooks.point("step.end", 3)  # the default: nothing happens
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: ``on_evaluate(model, tokenizer, step) -> {"eval_bleu": 0.21, ...}``
EvaluateHook = Callable[[Any, Any, int], dict[str, float]]
#: ``after_evaluate(step, metrics) -> stop?``: called on every rank after each evaluation
#: with the logged metrics (``eval_loss``, ...); returning True ends the run there, as early
#: stopping does (``chattune tune`` prunes weak trials with it).
AfterEvaluateHook = Callable[[int, dict[str, float]], bool]
#: ``point(name, step)``, called at each named moment of the run (see :data:`POINTS`).
PointHook = Callable[[str, int], None]

#: The named moments a crash is most likely to break resume; ``tests/test_resume.py`` kills
#: runs (``kill -9``: no ``finally``, no flush) at each of them and checks the resume.
POINTS: dict[str, str] = {
    "step.after_update": "weights updated in memory, schedule and step count not yet",
    "step.end": "after the step's log record, evaluation and checkpoint (if any)",
    "eval.mid": "evaluating; the step is logged, its evaluation is not",
    "checkpoint.between_files": "a temporary folder with weights but no optimizer state",
    "checkpoint.before_rename": "a temporary folder that looks complete, never published",
    "best.before_rename": "the same, for the best weights",
    "best.between_renames": "the old `best` moved aside, the new one not yet in place",
    "output.partial": "training done, the output folder half-written",
}


def nowhere(name: str, step: int) -> None:
    """The default point hook: production runs pass every point without stopping."""


@dataclass(frozen=True)
class TrainHooks:
    """Callbacks for one run.

    Attributes:
        on_evaluate: called on rank 0 after each evaluation's loss, with the model in eval
            mode and the step just trained; the metrics it returns are logged in the same
            record (name them ``eval_*``). None: loss and perplexity only.
        after_evaluate: called on every rank after each evaluation (and after the best
            weights are kept) with the step and the metrics; True stops the run there.
        point: called at every named point (:data:`POINTS`) with the step; crash tests pass
            one that sends ``SIGKILL`` to its own process at a chosen ``(name, step)``.
    """

    on_evaluate: EvaluateHook | None = None
    after_evaluate: AfterEvaluateHook | None = None
    point: PointHook = nowhere
