"""Training metrics: one JSON object per line in ``metrics.jsonl``, mirrored to trackers.

``metrics.jsonl`` is the record of a run (:func:`chattune.runs.read_metrics` reads it back);
``train.report_to`` mirrors every numeric value to TensorBoard (the default), Weights &
Biases and/or MLflow under the same names and steps: ``train/loss``, ``train/lr``,
``eval/loss`` (from ``eval_loss``), ... .

Each tracker is one small adapter with ``log(scalars, step)`` and ``close(status)``.
Accelerate's trackers (``accelerate.tracking``) were read and not used: its MLflow tracker
drives MLflow's fluent API, whose tracking URI and active run are process-wide (pointing it
at ``OUTPUT/mlflow.db`` would redirect every other MLflow user in the process, and two runs
in one process share one active run), and its ``finish()`` marks every run FINISHED, crashed
or not; its TensorBoard tracker adds a run-name folder and writes hyperparameters into a
timestamped subfolder. The adapters below are as short as wrappers around those would be.

Resuming (``train.resume``): TensorBoard purges the steps after the checkpoint and replays
them. W&B and MLflow histories are append-only, so a resumed run continues the same run
(its id is kept in ``OUTPUT/trackers.json``) and sends them only the steps after the last one
already logged: the steps between the checkpoint and the crash keep the values logged before
it, which a resumed run reproduces (tests/test_resume.py), ``tokens_per_s`` aside.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from chattune.data.jsonl import append_jsonl, read_jsonl, write_jsonl
from chattune.errors import ConfigError
from chattune.runs import METRICS_FILE

if TYPE_CHECKING:
    from chattune.config import RunConfig

log = logging.getLogger(__name__)

TRACKERS_FILE = "trackers.json"  #: run ids that let a resumed training continue its runs
Status = Literal["finished", "failed", "killed"]
#: tracker -> (module it needs, what to install)
PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow-skinny"),
}


class Tracker(Protocol):
    """One experiment tracker; ``state`` is what ``trackers.json`` keeps to resume its run."""

    resumed: bool  # continues a run that saw earlier steps: replayed steps are not resent
    state: dict[str, str]

    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self, status: Status) -> None: ...


class MetricsLogger:
    """Append metric records; on resume, forget records past the checkpoint's step.

    A run killed after step 7 but resumed from the step-5 checkpoint logged steps 6 and 7
    already; they are dropped so the file reads as one uninterrupted run, and trackers that
    continue their run (W&B, MLflow) are not sent steps 6 and 7 again. Only the main
    process writes (``enabled``); the others log nothing. ``config`` (the run's) names the
    trackers (``train.report_to``; TensorBoard alone without it) and is logged to them as
    flat parameters (``train.lr``). A tracker that is not installed is a ``ConfigError`` on
    every process, before anything is written.

    Example:
        >>> with MetricsLogger(Path("runs/x")) as logger:  # doctest: +SKIP
        ...     logger.log({"step": 1, "loss": 2.5})
    """

    def __init__(
        self,
        output: Path,
        resume_step: int | None = None,
        enabled: bool = True,
        config: RunConfig | None = None,
    ):
        names = list(dict.fromkeys(config.train.report_to)) if config else ["tensorboard"]
        require_trackers(names)
        self.enabled = enabled
        self.path = output / METRICS_FILE
        self.trackers: list[Tracker] = []
        self.logged_through = 0  # the last step a previous attempt of this run logged
        if not enabled:
            return
        output.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            # A kill -9 can leave a torn last line: it is dropped with what came after the
            # checkpoint, and the file is replaced atomically (a kill now loses nothing).
            records = [r for _, r in read_jsonl(self.path, problems=[])]
            self.logged_through = max((r.get("step", 0) for r in records), default=0)
            write_jsonl(self.path, [r for r in records if r.get("step", 0) <= resume_step])
        params = flatten(config.model_dump(mode="json")) if config else {}
        self.trackers = open_trackers(names, output, resume_step, params)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        step, scalars = record["step"], tracker_scalars(record)
        for tracker in self.trackers:
            if step > self.logged_through or not tracker.resumed:
                tracker.log(scalars, step)

    def close(self, status: Status = "finished") -> None:
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close(status)
            except Exception:  # one tracker failing to close must not keep the others open
                log.exception("closing %s failed", type(tracker).__name__)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close("finished")
        else:
            self.close("killed" if issubclass(exc_type, KeyboardInterrupt) else "failed")


def tracker_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of a record under trackers' names.

    Example:
        >>> tracker_scalars({"step": 3, "epoch": 0.5, "loss": 2.0, "eval_loss": 2.5})
        {'train/loss': 2.0, 'eval/loss': 2.5}
    """
    return {
        f"{'eval' if k.startswith('eval_') else 'train'}/{k.removeprefix('eval_')}": v
        for k, v in record.items()
        if k not in ("step", "epoch") and isinstance(v, int | float)
    }


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config sections as dotted keys, as overrides spell them.

    Example:
        >>> flatten({"train": {"lr": 2e-4, "report_to": ["wandb"]}, "seed": 1})
        {'train.lr': 0.0002, 'train.report_to': ['wandb'], 'seed': 1}
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def require_trackers(names: Iterable[str]) -> None:
    """Raise a ``ConfigError`` naming the first tracker of ``names`` that is not installed.

    Only the main process opens trackers, but every process checks, so that all of them stop
    (one process stopping alone would leave the others waiting for it in DDP).
    """
    for name in names:
        if importlib.util.find_spec(PACKAGES[name][0]) is None:
            raise missing(name)


def missing(name: str, cause: BaseException | None = None) -> ConfigError:
    package = PACKAGES[name][1]
    why = f" ({cause})" if cause else ""
    return ConfigError(
        f"train.report_to: {name} is not installed{why}; `pip install {package}`, "
        f"or remove {name} from train.report_to"
    )


def import_tracker(name: str) -> Any:
    """Import the package of tracker ``name``; a failed import is the ``ConfigError``."""
    try:
        return importlib.import_module(PACKAGES[name][0])
    except ImportError as e:
        raise missing(name, e) from e


def open_trackers(
    names: list[str], output: Path, resume_step: int | None, params: dict[str, Any]
) -> list[Tracker]:
    """Open ``names``; continue the runs ``trackers.json`` names when resuming."""
    path = output / TRACKERS_FILE
    saved = json.loads(path.read_text()) if resume_step is not None and path.exists() else {}
    opened: dict[str, Tracker] = {}
    try:
        for name in names:
            opened[name] = OPENERS[name](output, resume_step, saved.get(name, {}), params)
    except BaseException:
        for tracker in opened.values():
            tracker.close("failed")
        raise
    states = {name: t.state for name, t in opened.items() if t.state}
    if states:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(states, indent=2) + "\n")
        os.replace(tmp, path)
    return list(opened.values())


class TensorBoardTracker:
    """``OUTPUT/tensorboard``; on resume the steps after the checkpoint are purged."""

    resumed = False  # the purge makes room for the replayed steps

    def __init__(
        self, output: Path, resume_step: int | None, saved: dict[str, str], params: dict
    ) -> None:
        import_tracker("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=purge)
        self.state: dict[str, str] = {}

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self, status: Status) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run under ``OUTPUT/wandb``, offline unless ``WANDB_MODE`` says otherwise.

    ``wandb sync OUTPUT/wandb/offline-run-*`` uploads it later. W&B does not resume offline
    runs: a resumed training writes a second offline folder with the same run id (online,
    ``WANDB_MODE=online``, the run itself is resumed). ``WANDB_PROJECT`` (default
    ``chattune``) and ``WANDB_DIR`` are honoured; W&B does not capture the console.
    """

    def __init__(
        self, output: Path, resume_step: int | None, saved: dict[str, str], params: dict
    ) -> None:
        wandb = import_tracker("wandb")
        run_id = saved.get("run_id")
        self.resumed = run_id is not None
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "chattune"),
            name=output.name,
            dir=None if os.environ.get("WANDB_DIR") else str(output),
            mode=None if os.environ.get("WANDB_MODE") else "offline",
            id=run_id,
            resume="allow" if run_id else None,
            config=params,
            settings=wandb.Settings(console="off"),
        )
        self.state = {"run_id": self.run.id}

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self, status: Status) -> None:
        self.run.finish(exit_code={"finished": 0, "failed": 1, "killed": 130}[status])


class MlflowTracker:
    """An MLflow run in ``MLFLOW_TRACKING_URI``, or else ``sqlite:///OUTPUT/mlflow.db``.

    Not a ``./mlruns`` folder: MLflow 3 deprecated its file store and, since 3.13, refuses
    it unless ``MLFLOW_ALLOW_FILE_STORE=true``. The experiment is ``MLFLOW_EXPERIMENT_NAME``
    (default ``chattune``); the run is named after the output folder. Through
    ``MlflowClient``, not the fluent API: nothing process-wide is set.
    """

    def __init__(
        self, output: Path, resume_step: int | None, saved: dict[str, str], params: dict
    ) -> None:
        import_tracker("mlflow")
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        default = f"sqlite:///{(output / 'mlflow.db').resolve().as_posix()}"
        uri = os.environ.get("MLFLOW_TRACKING_URI") or default
        self.client = MlflowClient(uri)
        run_id = saved.get("run_id") if saved.get("tracking_uri") == uri else None
        resumed = run_id is not None
        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
            except MlflowException as e:
                log.warning("mlflow run %s cannot be resumed (%s): starting a new one", run_id, e)
                run_id, resumed = None, False
        if not run_id:
            artifacts = (output / "mlartifacts").resolve().as_uri() if uri == default else None
            experiment = self.experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "chattune"),
                                         artifacts)  # fmt: skip
            run_id = self.client.create_run(experiment, run_name=output.name).info.run_id
            self.log_params(run_id, params)
        self.run_id, self.resumed = run_id, resumed
        self.state = {"run_id": run_id, "tracking_uri": uri}

    def experiment(self, name: str, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=artifact_location)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Log ``params`` as strings, cut to MLflow's length limit, 100 per request."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        items = [
            Param(k, (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_VAL_LENGTH])
            for k, v in params.items()
        ]
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=items[start : start + MAX_PARAMS_TAGS_PER_BATCH])

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: Status) -> None:
        self.client.set_terminated(self.run_id, status.upper())


OPENERS: dict[str, Callable[..., Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
}
