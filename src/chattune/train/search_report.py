"""What a search writes: ``best.yaml``, ``trials.csv`` and ``trials.png`` in its folder.

All three are derived from the study alone, so they are rewritten at the end of every
``chattune tune`` (a resumed or shared search's files cover every process's trials).

- ``best.yaml``: the base run with the best trial's values, a config ``chattune train
  --config`` accepts (its output: the base's ``train.output`` + ``-best``).
- ``trials.csv``: one row per trial: number, state, value, parameters, error.
- ``trials.png``: left, each trial's best eval loss and the best so far; right, every
  trial's evaluations (pruned trials dashed: where they stopped shows what pruning saved).

Example:
    >>> trial_rows(study, plan)[0]  # doctest: +SKIP
    {'trial': 0, 'state': 'COMPLETE', 'eval_loss': 2.31, ..., 'train.lr': 0.00031}
"""

from __future__ import annotations

import csv
import math
import typing
import warnings
from pathlib import Path
from typing import Any

from chattune.config import dump_config

if typing.TYPE_CHECKING:
    import optuna

    from chattune.train.search import SearchPlan


def write_report(study: optuna.Study, plan: SearchPlan) -> dict[str, Path]:
    """Write the three files (``best.yaml`` only once a trial completed); their paths."""
    rows = trial_rows(study, plan)
    files = {"trials": write_csv(rows, plan.output / "trials.csv")}
    best = write_best(study, plan, plan.output / "best.yaml")
    if best is not None:
        files["best"] = best
    plot = plot_trials(study, plan.output / "trials.png")
    if plot is not None:
        files["plot"] = plot
    return files


def trial_rows(study: optuna.Study, plan: SearchPlan) -> list[dict[str, Any]]:
    """One flat record per trial, in trial order: what the CSV and the summary table show."""
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry

    rows = []
    for t in study.get_trials(deepcopy=False):
        with warnings.catch_warnings():  # reading who a trial retries is "experimental"
            warnings.simplefilter("ignore", ExperimentalWarning)
            retry_of = Retry.retried_trial_number(t)
        duration = t.duration.total_seconds() if t.duration else None
        last = t.intermediate_values[t.last_step] if t.last_step is not None else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "eval_loss": t.value,
                "last_eval_loss": last,
                "last_step": t.last_step,
                "seconds": None if duration is None else round(duration, 1),
                **{p.name: t.params.get(p.name) for p in plan.space},
                "retry_of": retry_of,
                "error": _why_failed(t),
            }
        )
    return rows


def _why_failed(trial: optuna.trial.FrozenTrial) -> str:
    """A failed trial's error; or whether Ctrl+C or a dead process ended it (not counted)."""
    if trial.state.name != "FAIL":
        return ""
    if "error" in trial.user_attrs:
        return trial.user_attrs["error"]
    if trial.user_attrs.get("interrupted"):
        return "interrupted (Ctrl+C); not counted"
    return "its process died (no heartbeat); not counted"


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """``rows`` as CSV (a header even when there are none)."""
    columns = list(rows[0]) if rows else ["trial", "state", "eval_loss"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_best(study: optuna.Study, plan: SearchPlan, path: Path) -> Path | None:
    """The best trial's run as a runnable config, or None while no trial has completed."""
    from chattune.train.search import best_trial, shown_url

    best = best_trial(study)
    if best is None:
        return None
    cfg = plan.trial_config(best.number, best.params, output=best_output(plan))
    header = (
        f"# chattune tune: the best of study {plan.study_name!r} ({shown_url(plan.storage)}):\n"
        f"# trial {best.number}, eval loss {best.value:.4f}. Its weights: "
        f"{plan.trials_dir / f'trial-{best.number:04d}'}\n"
        f"# Train it again: chattune train --config {path}\n"
    )
    path.write_text(header + dump_config(cfg), encoding="utf-8")
    return path


def best_output(plan: SearchPlan) -> str:
    """Where ``best.yaml`` trains: the base's ``train.output`` + ``-best`` (``runs/demo`` ->
    ``runs/demo-best``), or ``OUTPUT/best`` when the base left ``train.output`` unset."""
    from chattune.config import TrainConfig

    output = plan.base.train.output
    if output == TrainConfig.model_fields["output"].default:
        return str(plan.output / "best")
    return f"{output}-best"


def plot_trials(study: optuna.Study, path: Path) -> Path | None:
    """The search as a figure: loss per trial and best so far; evaluation curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    left.scatter([t.number for t in done], [t.value for t in done], label="complete")
    left.scatter(
        [t.number for t in pruned],
        [min(t.intermediate_values.values()) for t in pruned],
        marker="x",
        color="tab:gray",
        label="pruned (its best eval)",
    )
    best, steps = math.inf, []
    for t in done:
        best = min(best, t.value)
        steps.append(best)
    xs = [t.number for t in done]
    if done and trials[-1].number > xs[-1]:  # carry the best on to the last trial
        xs, steps = [*xs, trials[-1].number], [*steps, steps[-1]]
    left.step(xs, steps, where="post", color="tab:red", label="best so far")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set(xlabel="trial", ylabel="best eval loss", title="trials")
    left.legend()
    for t in trials:
        xs = sorted(t.intermediate_values)
        style = "--" if t.state == TrialState.PRUNED else "-"
        right.plot(
            xs, [t.intermediate_values[x] for x in xs], style, marker=".", label=f"{t.number}"
        )
    right.set(xlabel="step", ylabel="eval loss", title="evaluations (dashed: pruned)")
    if len(trials) <= 12:
        right.legend(title="trial", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
