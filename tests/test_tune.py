"""``chattune tune``: the space's syntax and errors, a search end to end, pruning, resume.

Every search trains the tiny random Llama for a few steps; the kill test runs the command
as a user would (a subprocess, ``kill -9`` mid-trial) and resumes it with the same command.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from chattune.cli import main, parse
from chattune.config import RunConfig, build_config
from chattune.errors import ConfigError
from chattune.train.search import count_finished
from chattune.train.search_space import parse_space
from tests.conftest import run_cli, wait_until


def tune_args(
    model_dir: Path, chat_files: tuple[Path, Path], out: Path, *extra: str, steps: int = 4
) -> list[str]:
    """``chattune tune`` on the tiny model: 4 steps a trial (so an evaluation after each)."""
    train, val = chat_files
    return ["tune", "--data", str(train), "--val-data", str(val), "--base", str(model_dir),
            "--output", str(out), "--max-steps", str(steps), "train.batch_size=4",
            "train.progress=false", "train.report_to=[]", *extra]  # fmt: skip


def load(out: Path, name: str | None = None) -> optuna.Study:
    return optuna.load_study(storage=f"sqlite:///{out / 'study.db'}", study_name=name or out.name)


# ----- the space -----------------------------------------------------------------------------


def test_space_entries_become_ranges_and_choices() -> None:
    space = parse_space(
        ["train.lr=1e-5:1e-3:log", "adapter.r=8:64", "train.warmup_ratio=0:0.1",
         "adapter.alpha=16,32", "adapter.target_modules=all-linear,[q_proj,v_proj]",
         "train.scheduler=cosine,linear"],
        RunConfig(),
    )  # fmt: skip
    got = {p.name: (p.kind, p.low, p.high, p.log, p.choices) for p in space}
    assert got["train.lr"] == ("float", 1e-5, 1e-3, True, ())
    assert got["adapter.r"] == ("int", 8, 64, False, ())
    assert got["train.warmup_ratio"][:3] == ("float", 0, 0.1)
    assert got["adapter.alpha"][4] == (16, 32)  # numbers, as key=value overrides read them
    assert got["adapter.target_modules"][4] == ("all-linear", "[q_proj,v_proj]")
    lists = next(p for p in space if p.name == "adapter.target_modules")
    assert lists.decode("[q_proj,v_proj]") == ["q_proj", "v_proj"]  # a list, kept as its text
    assert got["train.scheduler"][4] == ("cosine", "linear")


def test_an_int_field_takes_an_int_range_from_whole_floats() -> None:
    (param,) = parse_space(["adapter.r=8.0:32.0"], RunConfig())
    assert param.kind == "int"


def test_every_bad_entry_is_named_with_how_to_fix_it() -> None:
    entries = ["train.lrr=1:2", "adapter.r=0,8", "train.lr=1e-3:1e-5", "adapter.r=8.5:16",
               "train.output=a,b", "train.lr=5", "adapter.method=lora,qlora",
               "adapter.dropout=0:1.5", "nothing"]  # fmt: skip
    with pytest.raises(ConfigError) as e:
        parse_space(entries, RunConfig())
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == len(entries)  # every problem at once, one line each, in order
    for entry, line in zip(entries, lines, strict=True):
        assert line.strip().startswith(f"--space {entry}:"), line
    text = str(e.value)
    assert "train.lrr is not a setting of chattune train" in text and "e.g. train.lr" in text
    assert "0 is rejected: adapter.r: Input should be greater than or equal to 1" in text
    assert "low must be below high" in text
    assert "adapter.r is a whole number" in text
    assert "train.output is set by the search" in text
    assert "one value is no search" in text
    assert "'qlora' is rejected" in text and "1.5 is rejected: adapter.dropout" in text
    assert "expected key=low:high[:log] or key=a,b,c" in text


def test_a_quoted_space_holds_several_dimensions() -> None:
    argv = ["tune", "--data", "x.jsonl", "--space", "train.lr=1e-5:1e-3:log adapter.r=8,16"]
    assert parse(argv)[1].tune.space == ["train.lr=1e-5:1e-3:log", "adapter.r=8,16"]


def test_one_space_flag_takes_every_dimension_after_it() -> None:
    """The issue's form: `--space A B C`; settings of the base run come before it."""
    argv = ["tune", "--data", "x.jsonl", "train.max_steps=4", "--space", "train.lr=1e-5:1e-3:log",
            "adapter.r=8,16", "--trials", "3", "--space", "adapter.alpha=16,32"]  # fmt: skip
    cfg = parse(argv)[1]
    assert cfg.tune.space == ["train.lr=1e-5:1e-3:log", "adapter.r=8,16", "adapter.alpha=16,32"]
    assert cfg.train.max_steps == 4 and cfg.tune.trials == 3


def test_bad_space_exits_2_before_any_training(chat_files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "search"
    argv = tune_args(tiny_model_dir, chat_files, out, "--space", "adapter.rank=8,16")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--space adapter.rank=8,16: adapter.rank is not a setting" in err
    assert not out.exists()  # no study, no trial folder: nothing started


def test_a_search_without_validation_data_is_refused(chat_files, tiny_model_dir, tmp_path, capsys):
    argv = tune_args(tiny_model_dir, chat_files, tmp_path / "s", "--space", "train.lr=1e-4:1e-3")
    argv.remove("--val-data")
    argv.remove(str(chat_files[1]))
    assert main(argv) == 2
    assert "a search compares trials on validation data: give --val-data" in capsys.readouterr().err
    assert main(["tune", "--data", "x.jsonl"]) == 2  # and a space is required
    assert "tune.space (--space): required" in capsys.readouterr().err


# ----- searches ------------------------------------------------------------------------------


def test_a_search_writes_the_best_run_as_a_config(chat_files, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "search"
    space = ["--space", "train.lr=1e-4:1e-1:log", "--space", "adapter.r=2,4"]
    assert main(tune_args(tiny_model_dir, chat_files, out, "--trials", "3", *space)) == 0
    study = load(out)
    assert count_finished(study) == len(study.trials) == 3
    best = study.best_trial
    cfg = build_config(yaml_path=out / "best.yaml")  # what `chattune train --config` reads
    assert (cfg.train.lr, cfg.adapter.r) == (best.params["train.lr"], best.params["adapter.r"])
    assert cfg.train.output == str(out / "best") and not cfg.train.resume
    assert cfg.train.max_steps == 4 and cfg.train.eval_every == 1  # 4 steps: ~4 evaluations
    assert parse(["train", "--config", str(out / "best.yaml")])[1].train.lr == cfg.train.lr
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    assert float(rows[best.number]["eval_loss"]) == pytest.approx(best.value)
    assert (out / "trials.png").read_bytes()[:4] == b"\x89PNG"
    # only the best trial keeps its weights
    assert [p.name for p in (out / "trials").iterdir()] == [f"trial-{best.number:04d}"]
    assert (out / "trials" / f"trial-{best.number:04d}" / "adapter_model.safetensors").exists()
    printed = capsys.readouterr().out
    assert f"best: trial {best.number}, eval loss {best.value:.4f}" in printed
    assert "3 finished of 3" in printed
    # a second run of the same command finds the search done and trains nothing
    assert main(tune_args(tiny_model_dir, chat_files, out, "--trials", "3", *space)) == 0
    assert len(load(out).trials) == 3 and "(0 started here)" in capsys.readouterr().out


def test_a_trial_worse_than_the_median_is_pruned(chat_files, tiny_model_dir, tmp_path):
    """A good learning rate first, then one too small to move the loss: the second trial's
    first evaluation is above the first trial's at the same step, so it stops there."""
    out = tmp_path / "search"
    out.mkdir()
    queued = optuna.create_study(storage=f"sqlite:///{out / 'study.db'}", study_name=out.name)
    queued.enqueue_trial({"train.lr": 0.05})
    queued.enqueue_trial({"train.lr": 1e-7})
    space = ["--space", "train.lr=1e-7:1e-1:log"]
    prune_early = ["--startup-trials", "1", "--warmup-evals", "0"]
    argv = tune_args(tiny_model_dir, chat_files, out, "--trials", "2", *space, *prune_early)
    assert main(argv) == 0
    good, weak = load(out).trials
    assert good.state == TrialState.COMPLETE and sorted(good.intermediate_values) == [1, 2, 3, 4]
    assert weak.state == TrialState.PRUNED
    assert sorted(weak.intermediate_values) == [1]  # stopped at its first evaluation
    assert weak.intermediate_values[1] > good.intermediate_values[1]
    assert not (out / "trials" / "trial-0001").exists()  # a pruned trial's weights are deleted


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retried_trial_number
def test_kill_9_mid_trial_then_the_same_command_finishes_the_search(
    chat_files, tiny_model_dir, tmp_path
):
    """SIGKILL in the middle of the second trial leaves it RUNNING; once its heartbeat is
    stale, the rerun marks it FAIL, runs its parameters again, and stops at 3 finished."""
    out = tmp_path / "search"
    argv = tune_args(tiny_model_dir, chat_files, out, "--trials", "3", "--heartbeat", "1",
                     "--space", "train.lr=1e-4:1e-2:log", steps=12)  # fmt: skip
    log = tmp_path / "first.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as err:
        command = [sys.executable, "-m", "chattune.cli", *argv]
        proc = subprocess.Popen(command, stderr=err, stdout=subprocess.DEVNULL, env=env)
    metrics = out / "trials" / "trial-0001" / "metrics.jsonl"
    try:
        started = wait_until(lambda: metrics.exists() and metrics.stat().st_size > 0, 240)
        assert started, log.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = load(out).trials
    assert [t.state for t in killed] == [TrialState.COMPLETE, TrialState.RUNNING]
    time.sleep(2 * 1 + 0.5)  # a heartbeat is stale after two intervals (--heartbeat 1)
    again = run_cli(*argv)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = load(out).trials
    assert count_finished(load(out)) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[1].state == TrialState.FAIL and "error" not in trials[1].user_attrs
    retry = trials[2]  # the killed trial's parameters, run again
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 1
    assert retry.params == trials[1].params and retry.state != TrialState.FAIL
    assert len(list((out / "trials").iterdir())) == 1  # the killed trial's debris is gone


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trial_killed_after_a_checkpoint_is_resumed_not_retrained(
    chat_files, tiny_model_dir, tmp_path
):
    """Killed once its step-3 checkpoint exists, the rerun's retry takes the killed trial's
    folder over and trains on from that checkpoint: every step logged once, in one folder."""
    out = tmp_path / "search"
    argv = tune_args(tiny_model_dir, chat_files, out, "--trials", "1", "--heartbeat", "1",
                     "--space", "train.lr=1e-4:1e-2:log", steps=12)  # fmt: skip
    command = [sys.executable, "-m", "chattune.cli", *argv]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    trial = out / "trials" / "trial-0000"
    try:
        saved = wait_until(lambda: any((trial / "checkpoints").glob("step-*")), 240)
        assert saved, "no checkpoint within 240 s"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(2 * 1 + 0.5)  # stale after two heartbeats
    again = run_cli(*argv)
    assert again.returncode == 0, again.stderr[-3000:]
    killed, retry = load(out).trials
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from"] == 0 and retry.params == killed.params
    resumed = out / "trials" / "trial-0001"
    assert not trial.exists() and retry.user_attrs["output"] == str(resumed)
    steps = [r["step"] for r in map(json.loads, (resumed / "metrics.jsonl").read_text().split())
             if "loss" in r]  # fmt: skip
    assert steps == list(range(1, 13))
    # evaluations every 3 steps: the killed trial reported 3 (and maybe more) before it
    # died; a retry trained afresh would report 3 again, the resumed one starts after it
    assert 3 in killed.intermediate_values
    assert min(retry.intermediate_values) > 3 and max(retry.intermediate_values) == 12


def test_evaluations_are_spread_over_the_epochs_a_trial_will_really_run(
    chat_files, tiny_model_dir, tmp_path
) -> None:
    """Unset ``train.epochs`` trains 1-3 epochs (resolve_defaults), so ~4 evaluations per
    trial must be counted over those, not over one epoch."""
    from chattune.train.search import SearchSettings, plan_search
    from chattune.train.setup import count_steps, read_items, resolve_defaults

    flags = {"model.base": str(tiny_model_dir), "data.train": [str(chat_files[0])],
             "data.val": [str(chat_files[1])], "train.batch_size": 1,
             "train.output": str(tmp_path / "run")}  # fmt: skip
    base = build_config(flags=flags)
    assert base.train.epochs is None and base.train.eval_every is None
    n = len(read_items(base)[0])
    epochs = resolve_defaults(base, n, 1, has_val=True).train.epochs
    assert epochs > 1  # a few tiny conversations: more than one pass
    plan = plan_search(base, SearchSettings(space=["train.lr=1e-4:1e-3"]))
    steps = count_steps(base, n, 1, epochs)
    assert plan.eval_every == max(1, steps // 4) > count_steps(base, n, 1, 1.0) // 4


def test_under_accelerate_launch_both_ranks_train_each_trial_and_stop_together(
    chat_files, tiny_model_dir, tmp_path
):
    """Two CPU ranks (gloo): rank 0 draws the trials and prunes; rank 1 trains each of them
    in the same DDP group and stops at the pruned trial's step with it. Either going wrong
    hangs or breaks DDP (another run's shapes), which ``launch`` turns into a failure."""
    import chattune.cli
    from tests.test_distributed import launch

    out = tmp_path / "search"
    out.mkdir()
    queued = optuna.create_study(storage=f"sqlite:///{out / 'study.db'}", study_name=out.name)
    queued.enqueue_trial({"train.lr": 0.05, "adapter.r": 4})
    queued.enqueue_trial({"train.lr": 1e-7, "adapter.r": 2})  # other shapes, then pruned
    queued.enqueue_trial({"train.lr": 0.05, "adapter.r": 4})  # the first again, after a prune
    space = ["--space", "train.lr=1e-7:1e-1:log", "--space", "adapter.r=2,4"]
    prune_early = ["--startup-trials", "1", "--warmup-evals", "0"]
    argv = tune_args(tiny_model_dir, chat_files, out, "--trials", "3", *space, *prune_early)
    launch(Path(chattune.cli.__file__).parent / "__main__.py", 2, *argv, timeout=400)
    good, weak, third = load(out).trials
    assert good.state == third.state == TrialState.COMPLETE
    assert sorted(good.intermediate_values) == [1, 2, 3, 4]
    assert weak.state == TrialState.PRUNED and sorted(weak.intermediate_values) == [1]
    assert third.intermediate_values == pytest.approx(good.intermediate_values)  # in step again
    batches = [json.loads(p.read_text()) for p in out.rglob("batches.json")]
    assert batches and all(b["processes"] == 2 for b in batches)  # trained as one DDP run
    assert (out / "best.yaml").exists() and (out / "trials.csv").exists()
