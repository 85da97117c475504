"""Trackers (``train.report_to``): TensorBoard, W&B (offline) and MLflow receive the metrics
of ``metrics.jsonl`` under the same names and steps, read back through each tracker's own
files or client; a resumed run continues the same runs; a missing package is a clear error.

Nothing touches the network or the user's home: W&B runs offline with its config, cache and
data folders in ``tmp_path``; MLflow writes to the run's own SQLite file.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chattune.config import build_config
from chattune.errors import ConfigError
from chattune.runs import read_metrics
from chattune.train import TrainHooks, run_train
from chattune.train.tracking import TRACKERS_FILE, MetricsLogger

ALL = "train.report_to=[tensorboard,wandb,mlflow]"


@pytest.fixture(autouse=True)
def offline_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B offline and quiet, its folders in tmp_path; no MLflow telemetry; both trackers
    otherwise at their defaults (no URI, project or folder from the environment)."""
    home = tmp_path / "tracker-home"
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))  # MLflow's telemetry id file
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow 3 reports usage otherwise
    for var in ("WANDB_SILENT", "WANDB_DISABLE_GIT", "WANDB_DISABLE_CODE"):
        monkeypatch.setenv(var, "true")
    for var in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY", "MLFLOW_TRACKING_URI",
                "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)


def config(tiny_model_dir: Path, chat_files: tuple[Path, Path], out: Path, *overrides: str):
    flags = {
        "model.base": str(tiny_model_dir),
        "data.train": [str(chat_files[0])],
        "data.val": [str(chat_files[1])],
        "train.output": str(out),
        "train.progress": False,
    }
    return build_config(
        flags=flags, overrides=["train.batch_size=4", "train.eval_every=0", *overrides]
    )


def wandb_records(path: Path) -> Iterator[object]:
    """The protobuf records of a W&B ``.wandb`` file (wandb ships no Python reader of them).

    The file is LevelDB's log format after a 7-byte header (``:W&B``, a magic number, a
    version): 32 KiB blocks of chunks, each ``crc32 (4) | length (2) | type (1) | data``,
    type 1 a whole record, 2/3/4 its first/middle/last piece; a block's last < 7 bytes are
    padding. Each record is a ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pieces = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pieces, pos = pieces + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def wandb_history(run_dir: Path, key: str) -> dict[int, float]:
    """``{step: value}`` of ``key`` in the offline run folder ``run_dir``."""
    (path,) = run_dir.glob("run-*.wandb")
    history = {}
    for r in wandb_records(path):
        if r.WhichOneof("record_type") == "history":  # one row per step: its "_step" says which
            row = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item
            }
            if key in row:
                history[row["_step"]] = row[key]
    return history


def wandb_config(run_dir: Path) -> dict[str, object]:
    (path,) = run_dir.glob("run-*.wandb")
    config = {}
    for r in wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            updates = r.run.config.update if kind == "run" else r.config.update
            config |= {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in updates}
    return config


def mlflow_run(out: Path):
    from mlflow import MlflowClient

    saved = json.loads((out / TRACKERS_FILE).read_text())["mlflow"]
    client = MlflowClient(saved["tracking_uri"])
    return client, client.get_run(saved["run_id"])


def mlflow_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def tensorboard_history(out: Path, key: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(key)}


def test_every_tracker_gets_the_losses_of_metrics_jsonl(tiny_model_dir, chat_files, tmp_path):
    out = tmp_path / "run"
    run_train(config(tiny_model_dir, chat_files, out, "train.max_steps=3", ALL))
    records = read_metrics(out)
    loss = {r["step"]: r["loss"] for r in records if "loss" in r}
    eval_loss = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    assert sorted(loss) == [1, 2, 3] and sorted(eval_loss) == [3]

    assert tensorboard_history(out, "train/loss") == pytest.approx(loss, rel=1e-6)  # float32
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert wandb_history(run_dir, "train/loss") == loss
    assert wandb_history(run_dir, "eval/loss") == eval_loss
    assert wandb_config(run_dir)["train.max_steps"] == 3  # the run's config, flat

    client, run = mlflow_run(out)
    assert mlflow_history(client, run.info.run_id, "train/loss") == sorted(loss.items())
    assert mlflow_history(client, run.info.run_id, "eval/loss") == sorted(eval_loss.items())
    assert run.data.params["train.max_steps"] == "3"
    assert run.data.params["train.report_to"] == '["tensorboard", "wandb", "mlflow"]'
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert not (tmp_path / "mlruns").exists() and not Path("mlruns").exists()


def test_a_resumed_run_continues_the_same_runs(tiny_model_dir, chat_files, tmp_path):
    """Crash after step 3, resume from the step-2 checkpoint: step 3 is replayed, but
    MLflow keeps the value logged before the crash rather than a second point at step 3."""
    out = tmp_path / "run"
    settings = ("train.max_steps=4", "train.save_every=2", ALL)

    def crash_after_step_3(name: str, step: int) -> None:
        if (name, step) == ("step.end", 3):
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        run_train(config(tiny_model_dir, chat_files, out, *settings),
                  TrainHooks(point=crash_after_step_3))  # fmt: skip
    client, first = mlflow_run(out)
    assert first.info.status == "FAILED"
    before = dict(mlflow_history(client, first.info.run_id, "train/loss"))
    assert sorted(before) == [1, 2, 3]

    run_train(config(tiny_model_dir, chat_files, out, *settings, "train.resume=true"))
    client, run = mlflow_run(out)
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    loss = {r["step"]: r["loss"] for r in read_metrics(out) if "loss" in r}
    history = mlflow_history(client, run.info.run_id, "train/loss")
    assert [step for step, _ in history] == [1, 2, 3, 4]  # step 3 once, not twice
    assert dict(history) == pytest.approx(loss, rel=1e-6)  # the replay reproduced step 3
    assert tensorboard_history(out, "train/loss") == pytest.approx(loss, rel=1e-6)

    # W&B cannot resume offline runs: a second folder with the same run id holds step 4.
    wandb_id = json.loads((out / TRACKERS_FILE).read_text())["wandb"]["run_id"]
    first_dir, second_dir = sorted((out / "wandb").glob(f"offline-run-*-{wandb_id}*"))
    assert sorted(wandb_history(first_dir, "train/loss")) == [1, 2, 3]
    assert wandb_history(second_dir, "train/loss") == {4: loss[4]}


def test_tensorboard_alone_is_the_default(tiny_model_dir, chat_files, tmp_path) -> None:
    out = tmp_path / "run"
    cfg = config(tiny_model_dir, chat_files, out)
    assert cfg.train.report_to == ["tensorboard"]
    with MetricsLogger(out, config=cfg) as logger:
        logger.log({"step": 1, "epoch": 0.1, "loss": 2.5})
    assert tensorboard_history(out, "train/loss") == {1: 2.5}
    assert not (out / TRACKERS_FILE).exists() and not (out / "wandb").exists()


@pytest.mark.parametrize(("tracker", "package"), [("wandb", "wandb"), ("mlflow", "mlflow-skinny")])
@pytest.mark.parametrize("main", [True, False])
def test_a_tracker_that_is_not_installed_is_a_config_error(
    tiny_model_dir, chat_files, tmp_path, monkeypatch, tracker: str, package: str, main: bool
) -> None:
    """Every process refuses, the main one and the others, before anything is written."""
    monkeypatch.setitem(sys.modules, tracker, None)  # what `import wandb` sees uninstalled
    out = tmp_path / "run"
    cfg = config(tiny_model_dir, chat_files, out, f"train.report_to=[tensorboard,{tracker}]")
    pattern = rf"train\.report_to: {tracker} is not installed.*`pip install {package}`"
    with pytest.raises(ConfigError, match=pattern):
        MetricsLogger(out, None, main, config=cfg)
    assert not out.exists()


def test_missing_tracker_or_template_fails_before_the_model_loads(
    chat_files, tmp_path, monkeypatch
) -> None:
    """``model.base`` does not exist: had the model loaded first, that would be the error."""
    from chattune.train.setup import build_run

    monkeypatch.setitem(sys.modules, "wandb", None)
    nowhere = tmp_path / "no-model"
    cfg = config(nowhere, chat_files, tmp_path / "run", "train.report_to=[wandb]")
    with pytest.raises(ConfigError, match=r"train\.report_to: wandb is not installed"):
        build_run(cfg)
    missing = tmp_path / "nope.jinja"
    cfg = config(nowhere, chat_files, tmp_path / "run", f"data.chat_template={missing}")
    with pytest.raises(ConfigError, match=r"data\.chat_template: no such file"):
        build_run(cfg)
