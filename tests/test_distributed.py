"""Scale-out: the same training code under `accelerate launch` with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
