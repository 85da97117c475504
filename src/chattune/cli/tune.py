"""``chattune tune``: hyper-parameter search over training runs (:mod:`chattune.train.search`).

The config is the base run, read exactly as ``chattune train`` reads it (``--config``,
named flags, ``key=value`` overrides), plus the ``tune`` section: the space, the budget and
the study's storage. Loose ``key=value`` words set the base run (``train.max_steps=40``);
search dimensions go after ``--space``, one per flag (or several in one quoted word).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import Field

from chattune.cli.command import Command
from chattune.cli.train import TrainRun
from chattune.config import RunConfig
from chattune.errors import ChattuneError
from chattune.train.search import SearchSettings

if TYPE_CHECKING:
    from chattune.train.search import SearchResult


class TuneRun(TrainRun):
    """The base run of every trial (``chattune train``'s config: training files required)
    and the ``tune`` section (:class:`SearchSettings`)."""

    tune: SearchSettings = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]


#: Named flags of ``chattune tune``; every other field is ``section.key=value``.
TUNE_FLAGS: dict[str, str] = {
    "--space": "tune.space",
    "--trials": "tune.trials",
    "--timeout": "tune.timeout",
    "--output": "tune.output",
    "--storage": "tune.storage",
    "--study-name": "tune.study_name",
    "--seed": "tune.seed",
    "--pruner": "tune.pruner",
    "--startup-trials": "tune.startup_trials",
    "--warmup-evals": "tune.warmup_evals",
    "--heartbeat": "tune.heartbeat",
    "--data": "data.train",
    "--val-data": "data.val",
    "--base": "model.base",
    "--max-steps": "train.max_steps",
}


def cmd_tune(cfg: TuneRun) -> int:
    """Search hyper-parameters: one training run per trial (Optuna: TPE, pruning, resumable).

    Each --space is one dimension: key=low:high (a float range, or int with whole bounds),
    key=low:high:log, or key=a,b,c (choices). Trials are scored by their best validation
    loss; weak ones stop early. The study is stored (default OUTPUT/study.db), so the same
    command resumes a killed search and processes with one --storage share it. Writes
    OUTPUT/best.yaml (for chattune train --config), trials.csv and trials.png.
    """
    import optuna

    from chattune.model.loading import quiet_transformers
    from chattune.train.search import run_search

    quiet_transformers()
    optuna.logging.disable_default_handler()  # Optuna's trial lines through our logging
    optuna.logging.enable_propagation()
    logging.getLogger("optuna.study._optimize").addFilter(no_traceback_for_user_errors)
    base = RunConfig.model_validate(cfg.model_dump(exclude={"tune"}))
    result = run_search(base, cfg.tune)
    if result is None:  # a rank other than 0 under accelerate launch: rank 0 reports
        return 0
    print_summary(result)
    if result.interrupted:
        print("interrupted: the finished trials are saved; run the same command to go on")
        return 130
    return 0


def no_traceback_for_user_errors(record: logging.LogRecord) -> bool:
    """A logging filter: Optuna logs a failed trial with its traceback; a ChattuneError (bad
    data, a model that will not load) is the user's to fix and its message says how, and
    Ctrl+C is no bug either."""
    if record.exc_info and isinstance(record.exc_info[1], ChattuneError | KeyboardInterrupt):
        record.exc_info, record.exc_text = None, None
    return True


def print_summary(result: SearchResult) -> None:
    """The trials as a table, then the best trial and the files written."""
    from chattune.train.search import best_trial, count_finished, shown_url
    from chattune.train.search_report import trial_rows

    plan, study = result.plan, result.study
    print(
        f"study {plan.study_name!r} in {shown_url(plan.storage)}: {count_finished(study)} "
        f"finished of {plan.settings.trials} ({result.started} started here)"
    )
    print_table(trial_rows(study, plan), [p.name for p in plan.space])
    best = best_trial(study)
    if best is not None:
        values = ", ".join(f"{k}={_number(v)}" for k, v in best.params.items())
        print(f"best: trial {best.number}, eval loss {best.value:.4f} ({values})")
        print(f"  weights: {plan.trials_dir / f'trial-{best.number:04d}'}")
    for name, path in result.files.items():
        print(f"  {name}: {path}")
    if "best" in result.files:
        print(f"  train it again: chattune train --config {result.files['best']}")


def print_table(rows: list[dict[str, Any]], params: list[str]) -> None:
    """One line per trial: number, state, loss, each parameter, and a note, aligned."""
    header = ["trial", "state", "eval loss", *params, "note"]
    table = [header, *(_cells(row, params) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _cells(row: dict[str, Any], params: list[str]) -> list[str]:
    values = [row["eval_loss"], *(row[p] for p in params)]
    return [str(row["trial"]), row["state"], *map(_number, values), _note(row)]


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _note(row: dict[str, Any]) -> str:
    """Why a trial ended as it did: its error, where it was pruned, whom it retries."""
    if row["error"]:
        return row["error"].splitlines()[0][:60]
    if row["state"] == "PRUNED":
        return f"pruned at step {row['last_step']} ({_number(row['last_eval_loss'])})"
    if row["retry_of"] is not None:
        return f"retry of trial {row['retry_of']}"
    return ""


TUNE = Command("tune", TuneRun, TUNE_FLAGS, cmd_tune)
COMMANDS = [TUNE]
