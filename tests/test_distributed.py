"""Scale-out: the same training code under `accelerate launch` with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

WORKER = Path(__file__).parent / "ddp_worker.py"


def test_two_ranks_end_identical_and_only_rank_0_writes(tiny_model_dir, chat_files, tmp_path):
    out, digests = tmp_path / "run", tmp_path / "digests"
    digests.mkdir()
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    cmd = [
        accelerate,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(WORKER),
        str(digests),
        f"model.base={tiny_model_dir}",
        f"data.train=[{chat_files[0]}]",
        f"data.val=[{chat_files[1]}]",
        f"train.output={out}",
        "train.max_steps=3",
        "train.batch_size=2",
        "train.eval_every=2",
        "train.save_every=2",
        "train.progress=false",
        "train.lr=1e-2",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [json.loads((digests / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 and r["type"] == "DistributedType.MULTI_CPU" for r in ranks)
    assert ranks[0]["digest"] == ranks[1]["digest"]  # DDP kept the replicas identical
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3

    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3]  # one writer, not two
    assert len(list((out / "tensorboard").iterdir())) == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "best",
        "step-0000002",
        "step-0000003",
    ]


GRAD_WORKER = Path(__file__).parent / "ddp_grad_worker.py"


def launch(worker: Path, processes: int, *args: str, timeout: int = 300) -> None:
    """``worker args`` under ``accelerate launch`` with ``processes`` CPU ranks (gloo); the
    launcher and its ranks are killed together if they outlive ``timeout`` (a hang)."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    cmd = [accelerate, "launch", "--num_machines", "1", "--mixed_precision", "no"]
    cmd += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    cmd += ["--multi_gpu", "--num_processes", str(processes)] if processes > 1 else ["--cpu"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [*cmd, str(worker), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{worker.name} on {processes} ranks still running after {timeout} s")
    assert proc.returncode == 0, stderr[-3000:]


def preference_pairs(path: Path) -> Path:
    """Eight pairs of unequal lengths for the DPO variant."""
    rows = [
        {"prompt": f"Question {i}? " + "more words " * (i % 4),
         "chosen": "Yes. " * (1 + i % 5), "rejected": "No." + " really" * (i % 3)}
        for i in range(8)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("objective", ["chat", "preference"])
def test_two_unequal_ranks_give_the_gradient_of_one_process_on_their_union(
    objective, tiny_model_dir, chat_files, tmp_path
):
    """Rank 0 trains three examples, rank 1 one: after DDP's average the gradient (and the
    logged loss) must be the one a single process computes on all four. Normalising by
    each rank's own token count would average the two ranks' means instead."""
    import torch

    data = chat_files[0] if objective == "chat" else preference_pairs(tmp_path / "pairs.jsonl")
    overrides = [f"model.base={tiny_model_dir}", f"data.train=[{data}]"]
    overrides += [f"data.objective={objective}", "train.batch_size=1", "train.progress=false"]
    overrides += [f"train.output={tmp_path / 'run'}", "adapter.method=full"]
    launch(GRAD_WORKER, 2, str(tmp_path), *overrides)
    launch(GRAD_WORKER, 1, str(tmp_path), *overrides)
    ranks = [torch.load(tmp_path / f"grads-rank{r}-world2.pt") for r in (0, 1)]
    alone = torch.load(tmp_path / "grads-rank0-world1.pt")
    for record in ranks:
        assert record["loss"] == pytest.approx(alone["loss"], rel=1e-6)
        assert record["tokens"] == alone["tokens"]
        assert record["grads"].keys() == alone["grads"].keys()
        for name, grad in alone["grads"].items():
            torch.testing.assert_close(record["grads"][name], grad, rtol=1e-4, atol=1e-7)


def test_evaluation_does_not_hang_when_a_rank_gets_no_validation_batch(
    tiny_model_dir, chat_files, tmp_path
):
    """One validation conversation for two ranks: rank 1 has no batch to evaluate. It must
    still join every collective of the evaluation (and none of rank 0's forward passes may
    start one), or both ranks wait forever."""
    val = tmp_path / "one.jsonl"
    val.write_text(chat_files[1].read_text().splitlines()[0] + "\n")
    digests, out = tmp_path / "digests", tmp_path / "run"
    digests.mkdir()
    launch(
        WORKER, 2, str(digests), f"model.base={tiny_model_dir}", f"data.train=[{chat_files[0]}]",
        f"data.val=[{val}]", f"train.output={out}", "train.max_steps=3", "train.batch_size=2",
        "train.eval_every=1", "train.progress=false", timeout=180,
    )  # fmt: skip
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "eval_loss" in r] == [1, 2, 3]


RESUME_WORKER = Path(__file__).parent / "ddp_resume_worker.py"


def test_two_ranks_killed_and_resumed_end_where_the_uninterrupted_run_ends(
    tiny_model_dir, chat_files, tmp_path
):
    """Dropout draws from each rank's generator, and ranks with batches of other shapes draw
    different amounts, so after a step the two ranks' generators differ. A resume must give
    each rank its own back (restoring rank 0's on both changes rank 1's dropout masks, and
    so the weights)."""
    overrides = [f"model.base={tiny_model_dir}", f"data.train=[{chat_files[0]}]",
                 "adapter.dropout=0.3", "train.batch_size=1", "train.max_steps=4",
                 "train.save_every=2", "train.progress=false", "train.lr=1e-2"]  # fmt: skip
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for folder in (straight, resumed):
        folder.mkdir()
    launch(RESUME_WORKER, 2, str(straight), "0", *overrides, f"train.output={straight}/run")
    run = f"train.output={resumed}/run"
    launch(RESUME_WORKER, 2, str(resumed), "2", *overrides, run)  # both ranks die at step 2
    assert not list(resumed.glob("rank*.json"))
    assert (resumed / "run" / "checkpoints" / "step-0000002").is_dir()
    launch(RESUME_WORKER, 2, str(resumed), "0", *overrides, run, "train.resume=true")
    ends = {f: [json.loads((f / f"rank{r}.json").read_text()) for r in (0, 1)]
            for f in (straight, resumed)}  # fmt: skip
    assert ends[straight][0]["next_draw"] != ends[straight][1]["next_draw"]  # they differ
    assert ends[resumed] == ends[straight]
