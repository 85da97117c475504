"""Crash safety: a run killed with SIGKILL and resumed matches the uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chattune.train import checkpoint as ckpt
from tests.conftest import run_cli, train_args


def train(tiny_model_dir: Path, chat_files, out: Path, *extra: str, env: dict | None = None):
    args = [
        *train_args(tiny_model_dir, chat_files, out),
        "--max-steps",
        "6",
        "--save-every",
        "2",
        "--eval-every",
        "2",
        "train.batch_size=4",
        "adapter.dropout=0.1",
        "train.lr=1e-2",
        "train.progress=false",
        *extra,
    ]
    return run_cli(*args, env=env)


def records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_kill_9_then_resume_matches_the_uninterrupted_run(tiny_model_dir, chat_files, tmp_path):
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert train(tiny_model_dir, chat_files, straight).returncode == 0

    killed = train(tiny_model_dir, chat_files, crashed, env={"CHATTUNE_FAULT_KILL_AT_STEP": "5"})
    assert killed.returncode == -9  # SIGKILL: no cleanup ran
    assert [p.name for p in ckpt.complete_checkpoints(crashed / "checkpoints")] == [
        "step-0000002",
        "step-0000004",
    ]
    assert max(r["step"] for r in records(crashed)) == 5  # step 5 was logged, then lost

    resumed = train(tiny_model_dir, chat_files, crashed, "--resume")
    assert resumed.returncode == 0, resumed.stderr

    # Same steps, same losses (dropout is active, so RNG state was restored too).
    a, b = records(straight), records(crashed)
    assert [sorted(r) for r in a] == [sorted(r) for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["step"] == y["step"]
        for key in ("loss", "eval_loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-5), (x, y)
    wa = load_file(straight / "adapter_model.safetensors")
    wb = load_file(crashed / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6)


def test_half_written_checkpoint_is_ignored_and_swept(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    done = ckpt.write_atomically(root / "step-0000002", lambda d: (d / "x").write_text("1"))
    partial = root / ".tmp-step-0000004-123"
    partial.mkdir()
    (partial / "trainable.safetensors").write_bytes(b"trunc")
    no_marker = root / "step-0000006"
    no_marker.mkdir()
    assert ckpt.complete_checkpoints(root) == [done]
    ckpt.sweep_incomplete(root)
    assert not partial.exists()


def test_previous_version_is_restored_if_the_swap_was_interrupted(tmp_path) -> None:
    root = tmp_path / "checkpoints"
    aside = root / ".old-best-4242"  # died after moving the old "best" aside
    aside.mkdir(parents=True)
    (aside / ckpt.MARKER).write_text("ok")
    ckpt.sweep_incomplete(root)
    assert (root / "best" / ckpt.MARKER).exists() and not aside.exists()
