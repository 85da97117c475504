"""Hyper-parameter search over ``chattune train`` runs, on Optuna (``chattune tune``).

A search is an Optuna study; each trial is one training run, the base run (``--config``
plus its overrides) with the trial's values of the search space, scored by its best
validation loss::

    base RunConfig + {"train.lr": 3.1e-4, "adapter.r": 16}  ->  run_train  ->  best_eval_loss

What Optuna does, and how it is set up here:

- **sampling**: TPE, seeded with ``tune.seed`` (default ``train.seed``) plus the number of
  trials the study already holds, so a resumed search draws new points, not the old ones.
- **pruning**: every evaluation's loss is reported to the trial through
  :attr:`TrainHooks.after_evaluate`; the median pruner stops a trial whose loss is worse
  than the median of the complete trials at the same step, once ``startup_trials`` have
  completed and the trial has had ``warmup_evals`` evaluations.
- **storage**: an RDB URL, SQLite ``OUTPUT/study.db`` by default, PostgreSQL to share one
  study between machines; ``load_if_exists`` makes the same command resume. Each running
  trial writes a heartbeat; a trial whose process died (``kill -9``, a lost machine) is
  marked FAIL by the next process that starts a trial, once its heartbeat is two intervals
  old, and its parameters are queued again, once (``RetryHeartbeatStaleTrialCallback``).
- **counting**: ``--trials`` counts finished trials (complete, pruned, or failed with an
  error recorded); trials killed or interrupted do not count, so a search of 6 that had 4
  finished runs 2 more.
- **several processes per trial** (``accelerate launch -m chattune.cli tune ...``): rank 0
  alone opens the study, draws each trial and decides its pruning; it sends every other
  rank the trial's config before training (:func:`share`) and its prune decision at each
  evaluation, so all ranks train the same run in one DDP group and stop at the same step
  (:func:`follow_search` is the other ranks' loop).

The space's syntax is in :mod:`chattune.train.search_space`; the files a search writes
(``best.yaml``, ``trials.csv``, ``trials.png``) in :mod:`chattune.train.search_report`.

Example:
    >>> settings = SearchSettings(space=["train.lr=1e-5:1e-3:log adapter.r=8,16,32"])
    >>> settings.space  # one entry per dimension, whitespace separates them too
    ['train.lr=1e-5:1e-3:log', 'adapter.r=8,16,32']
"""

from __future__ import annotations

import logging
import os
import shutil
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from chattune.config import RunConfig, Section
from chattune.errors import ChattuneError, ConfigError
from chattune.train.search_space import Param, parse_space, with_values

if typing.TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


class SearchSettings(Section):
    """The ``tune`` section: what to search, for how long, and where the study lives."""

    space: list[str] = Field(
        min_length=1,
        description="the dimensions of the search, each key=low:high, key=low:high:log or "
        "key=a,b,c (put key=value settings of the base run before --space)",
        # `--space A B` takes every word after it (the syntax); repeating works too
        json_schema_extra={"nargs": "+"},
    )
    trials: int = Field(10, ge=1, description="finished trials to reach (resumed: counted)")
    timeout: float | None = Field(None, gt=0, description="seconds; no trial starts after")
    output: str | None = Field(
        None, description="folder of the search (default: train.output + '-tune')"
    )
    storage: str | None = Field(
        None, description="Optuna storage URL (default: sqlite:///OUTPUT/study.db)"
    )
    study_name: str | None = Field(None, description="the study (default: OUTPUT's name)")
    seed: int | None = Field(None, description="seeds the sampler (default: train.seed)")
    pruner: Literal["median", "none"] = Field("median", description="stop weak trials early")
    startup_trials: int = Field(2, ge=0, description="trials that finish before any is pruned")
    warmup_evals: int = Field(1, ge=0, description="evaluations a trial has before pruning")
    evals_per_trial: int = Field(
        4, ge=1, description="evaluations per trial when the base has no train.eval_every"
    )
    heartbeat: int = Field(
        60, ge=1, description="seconds between a trial's heartbeats; stale after two"
    )

    @field_validator("space", mode="after")
    @classmethod
    def _one_per_word(cls, entries: list[str]) -> list[str]:
        # `--space "train.lr=1e-5:1e-3:log adapter.r=8,16,32"` is two dimensions
        return [word for entry in entries for word in entry.split()]


# ----- the plan: everything checked before the first trial ---------------------------------


@dataclass(frozen=True)
class SearchPlan:
    """A search, resolved and checked: every value of its space passed the base's validation.

    Attributes:
        base: the run every trial starts from.
        settings: the ``tune`` section.
        space: the dimensions, parsed and checked.
        output: the search's folder (``study.db``, ``trials/``, ``best.yaml``, ...).
        eval_every: every trial's ``train.eval_every`` (the pruner compares these steps).
        storage: the Optuna storage URL.
        study_name: the study's name in it.
        seed: the sampler's seed before the study's trial count is added.
    """

    base: RunConfig
    settings: SearchSettings
    space: list[Param]
    output: Path
    eval_every: int
    storage: str
    study_name: str
    seed: int

    @property
    def trials_dir(self) -> Path:
        return self.output / "trials"

    def trial_config(
        self, number: int, params: dict[str, Any], output: str | None = None
    ) -> RunConfig:
        """The run of trial ``number`` with Optuna's ``params`` (in ``output`` if given)."""
        values = {p.name: p.decode(params[p.name]) for p in self.space if p.name in params}
        folder = output or str(self.trials_dir / f"trial-{number:04d}")
        fixed = {"train.output": folder, "train.eval_every": self.eval_every}
        if not self.base.train.save_every:  # a checkpoint per evaluation: a killed trial resumes
            fixed["train.save_every"] = self.eval_every
        return with_values(self.base, {**values, **fixed, "train.resume": False})


def plan_search(base: RunConfig, settings: SearchSettings) -> SearchPlan:
    """Check the space, the data and the validation set, and settle every default.

    Raises:
        ConfigError: a bad ``--space`` entry, or no validation data.
        DataError: problems in the data files (all of them, as ``FILE:LINE``).
    """
    from chattune.train.setup import count_steps, read_items, resolve_defaults

    space = parse_space(settings.space, base)
    if not base.data.val and not base.data.val_split:
        raise ConfigError(
            "a search compares trials on validation data: give --val-data FILE "
            "(data.val) or data.val_split=0.1"
        )
    train_items, _ = read_items(base)  # every data problem now, not in the first trial
    eval_every = base.train.eval_every
    if not eval_every:
        # the epochs a trial will run: unset, the number resolve_defaults picks (1-3), not 1
        # (each of several ranks per trial takes 1/world of every step's batches)
        world = world_size()
        unset_filled = resolve_defaults(base, len(train_items), world, has_val=False)
        steps = count_steps(unset_filled, len(train_items), world)
        eval_every = max(1, steps // settings.evals_per_trial)
        log.info(
            "the base run has no train.eval_every: evaluating every %d of its ~%d steps "
            "(tune.evals_per_trial=%d)",
            eval_every,
            steps,
            settings.evals_per_trial,
        )
    output = Path(settings.output or f"{base.train.output}-tune")
    storage = settings.storage or f"sqlite:///{(output / 'study.db').resolve()}"
    seed = base.train.seed if settings.seed is None else settings.seed
    name = settings.study_name or output.resolve().name
    return SearchPlan(base, settings, space, output, eval_every, storage, name, seed)


# ----- the study -----------------------------------------------------------------------------


def open_study(plan: SearchPlan) -> optuna.Study:
    """Create the study, or load it to resume: TPE, the pruner, heartbeats in the storage."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    plan.output.mkdir(parents=True, exist_ok=True)
    # SQLite: wait for a lock (another process, or our heartbeat thread) instead of failing
    engine = {"connect_args": {"timeout": 60}} if plan.storage.startswith("sqlite") else {}
    with warnings.catch_warnings():  # heartbeats and retries are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            storage = RDBStorage(
                plan.storage,
                engine_kwargs=engine,
                heartbeat_interval=plan.settings.heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except Exception as e:  # a bad URL, a missing driver, a refused connection, ...
            raise ConfigError(
                f"--storage {shown_url(plan.storage)}: cannot open it ({e}); "
                "give an Optuna storage URL, e.g. sqlite:///study.db or "
                "postgresql+psycopg://user:pw@host/db"
            ) from None
    study = optuna.create_study(
        storage=storage,
        study_name=plan.study_name,
        load_if_exists=True,
        direction="minimize",
        pruner=build_pruner(plan),
    )
    # Fresh draws after a resume: the same seed would replay the first trials' points.
    startup = min(10, max(3, plan.settings.trials // 3))
    study.sampler = optuna.samplers.TPESampler(
        seed=plan.seed + len(study.trials), n_startup_trials=startup
    )
    return study


def build_pruner(plan: SearchPlan) -> optuna.pruners.BasePruner:
    """The median pruner, armed after ``startup_trials`` and each trial's ``warmup_evals``.

    Optuna never prunes at a step below ``n_warmup_steps``: with evaluations every ``E``
    steps, ``warmup_evals * E + 1`` lets the first ``warmup_evals`` evaluations pass.
    """
    import optuna

    s = plan.settings
    if s.pruner == "none":
        return optuna.pruners.NopPruner()
    warmup = s.warmup_evals * plan.eval_every + 1
    return optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials, n_warmup_steps=warmup)


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for messages."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def count_finished(study: optuna.Study) -> int:
    """Trials that count toward ``--trials``: complete, pruned, or failed with an error
    recorded; a trial killed with its process or interrupted by Ctrl+C does not count."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    done = study.get_trials(deepcopy=False, states=states)
    return sum(t.state != TrialState.FAIL or "error" in t.user_attrs for t in done)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the lowest loss, or None before the first completes."""
    try:
        return study.best_trial
    except ValueError:
        return None


# ----- a trial -------------------------------------------------------------------------------


def make_objective(plan: SearchPlan) -> Callable[[optuna.Trial], float]:
    """Optuna's objective: a trial's config, its training run, its best validation loss.

    A :class:`ChattuneError` fails the trial with its message kept in the trial's
    ``error`` attribute, and the search goes on; Ctrl+C marks it ``interrupted``.
    """

    def objective(trial: optuna.Trial) -> float:
        try:
            cfg = plan.trial_config(trial.number, {p.name: p.suggest(trial) for p in plan.space})
            cfg = continue_killed_trial(cfg, trial, plan)
            trial.set_user_attr("output", cfg.train.output)
            return train_trial(cfg, trial)
        except ChattuneError as e:
            trial.set_user_attr("error", str(e))
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise

    return objective


def continue_killed_trial(cfg: RunConfig, trial: optuna.Trial, plan: SearchPlan) -> RunConfig:
    """``cfg``, resuming from the last checkpoint of the trial this one retries, if any.

    A trial whose process died is queued again with its parameters under a new number
    (:func:`open_study`'s retry callback); its folder still holds the checkpoints it saved
    at its evaluations, so the retry takes the folder over and resumes instead of training
    those steps again. A trial killed before its first checkpoint starts afresh.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():  # retried_trial_number is "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        origin = RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
    if origin is None:
        return cfg
    killed = plan.trials_dir / f"trial-{origin:04d}"
    if not any((killed / "checkpoints").glob("step-*")):
        return cfg
    target = Path(cfg.train.output)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(killed, target)
    trial.set_user_attr("resumed_from", origin)
    log.info("trial %d continues trial %d from its last checkpoint", trial.number, origin)
    return with_values(cfg, {"train.resume": True})


def train_trial(cfg: RunConfig, trial: optuna.Trial) -> float:
    """Train one trial's run, reporting every evaluation; its best validation loss. With
    several ranks, the run and each prune decision are sent to the others first.

    Raises:
        optuna.TrialPruned: the pruner stopped the run at an evaluation.
    """
    import optuna

    from chattune.train import TrainHooks, run_train

    if not cfg.train.resume:  # a new number: anything in its folder is another study's debris
        shutil.rmtree(cfg.train.output, ignore_errors=True)
    several = world_size() > 1
    if several:
        share(("train", cfg))
    pruned_at: list[int] = []

    def after_evaluate(step: int, metrics: dict[str, float]) -> bool:
        trial.report(metrics["eval_loss"], step)
        if not pruned_at and trial.should_prune():
            pruned_at.append(step)
        return share(bool(pruned_at)) if several else bool(pruned_at)

    summary = run_train(cfg, TrainHooks(after_evaluate=after_evaluate))
    trial.set_user_attr("steps", summary["steps"])
    trial.set_user_attr("best_step", summary.get("best_step"))
    if pruned_at:
        raise optuna.TrialPruned(f"at step {pruned_at[0]}: eval loss above the median")
    return float(summary["best_eval_loss"])


def keep_only_best(study: optuna.Study, root: Path) -> None:
    """Delete every trial's folder under ``root`` but the best's (and those still running):
    a search leaves one trained run, the best, in ``OUTPUT/trials/``."""
    from optuna.trial import TrialState

    alive = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    best = best_trial(study)
    keep = {t.number for t in alive} | ({best.number} if best else set())
    for folder in root.glob("trial-*"):
        number = folder.name.removeprefix("trial-")
        if number.isdigit() and int(number) not in keep:
            shutil.rmtree(folder, ignore_errors=True)


# ----- several ranks per trial ---------------------------------------------------------------


def world_size() -> int:
    """Processes per trial: ``WORLD_SIZE`` as ``accelerate launch`` (or torchrun) sets it."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def share(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (the others' is ignored): a pickled broadcast over
    the process group that training uses, which this call starts if needed."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from chattune.train.setup import without_accelerator

    PartialState(cpu=without_accelerator())  # the process group the trials' runs share
    return broadcast_object_list([value], from_process=0)[0]


def follow_search() -> None:
    """A rank other than 0: train each run rank 0 announces, with rank 0's prune decisions,
    until it says stop. The study, the report and the files are rank 0's alone.

    A :class:`ChattuneError` that every rank meets at the same point (a config or data
    problem: the same config fails the same way everywhere) fails the trial on rank 0 too,
    which announces the next one. An error on one rank alone (out of memory, a tracker only
    rank 0 opens) leaves the others in a collective: the launcher's timeout ends the job.
    Ctrl+C reaches every rank: this one stops its run and waits for rank 0's "stop".
    """
    import gc

    import torch

    from chattune.train import TrainHooks, run_train

    hooks = TrainHooks(after_evaluate=lambda step, metrics: bool(share(None)))
    while True:
        kind, cfg = share(None)
        if kind == "stop":
            return
        try:
            run_train(cfg, hooks)
        except ChattuneError as e:
            log.warning("rank %s: the trial failed: %s", os.environ.get("RANK"), e)
        except KeyboardInterrupt:
            log.info("rank %s: interrupted; waiting for rank 0", os.environ.get("RANK"))
        gc.collect()  # rank 0 gets this from Optuna (gc_after_trial); free the last run
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ----- the search ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchResult:
    """What a search left: the plan, the study, what this process ran, the files written."""

    plan: SearchPlan
    study: optuna.Study
    started: int
    interrupted: bool
    files: dict[str, Path]


def run_search(base: RunConfig, settings: SearchSettings) -> SearchResult | None:
    """Run (or resume) a search until ``settings.trials`` trials have finished.

    Checks everything first (:func:`plan_search`), then lets Optuna run the trials:
    ``n_trials`` bounds this process, the stop callback the study as a whole (other
    processes may share it). Ctrl+C stops the search after writing what finished.
    Under ``accelerate launch`` ranks other than 0 train rank 0's trials and return None.

    Example:
        >>> settings = SearchSettings(space=["train.lr=1e-5:1e-3:log"], trials=4)
        >>> run_search(build_config(yaml_path="run.yaml"), settings).files  # doctest: +SKIP
        {'best': PosixPath('runs/demo-tune/best.yaml'), ...}
    """
    if world_size() > 1:
        if int(os.environ.get("RANK", "0")) > 0:
            follow_search()
            return None
        try:
            result = _search(base, settings)  # Ctrl+C is caught in there: a clean return
        except ChattuneError:  # a bad plan or storage, before any trial: let the ranks go
            share(("stop", None))
            raise
        # Any other error may come mid-trial, with the other ranks inside a collective:
        # a broadcast now would pair with the wrong one, so it propagates and the launcher
        # ends the job.
        share(("stop", None))
        return result
    return _search(base, settings)


def _search(base: RunConfig, settings: SearchSettings) -> SearchResult:
    """:func:`run_search` in the process that holds the study."""
    import optuna

    from chattune.train.search_report import write_report

    plan = plan_search(base, settings)
    study = open_study(plan)
    before, remaining = len(study.trials), settings.trials - count_finished(study)
    interrupted = False

    def stop_when_finished(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        keep_only_best(study, plan.trials_dir)
        if count_finished(study) >= settings.trials:
            study.stop()

    if remaining > 0:
        try:
            study.optimize(
                make_objective(plan),
                n_trials=remaining,
                timeout=settings.timeout,
                catch=(ChattuneError,),
                callbacks=[stop_when_finished],
                gc_after_trial=True,
            )
        except KeyboardInterrupt:
            interrupted = True
    with warnings.catch_warnings():  # a trial killed meanwhile may be stale by now
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    keep_only_best(study, plan.trials_dir)
    files = write_report(study, plan)
    return SearchResult(plan, study, len(study.trials) - before, interrupted, files)
