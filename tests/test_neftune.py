"""NEFTune: noise of the paper's scale on the input embeddings in train mode only, through
peft's wrapper, removable; and a training run that uses it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from chattune.config import build_config
from chattune.data.batching import collate
from chattune.model.loss import unwrap_peft
from chattune.runs import read_metrics
from chattune.train.loop import fit, validation_loss
from chattune.train.neftune import attach_neftune
from chattune.train.setup import build_run

ALPHA = 5.0


def config(tiny_model_dir: Path, chat_files: tuple[Path, Path], out: Path, *overrides: str):
    flags = {
        "model.base": str(tiny_model_dir),
        "data.train": [str(chat_files[0])],
        "data.val": [str(chat_files[1])],
        "train.output": str(out),
        "train.progress": False,
    }
    return build_config(flags=flags, overrides=["train.batch_size=4", *overrides])


@pytest.fixture
def lora_model(tiny_model_dir, chat_files, tmp_path):
    """The tiny Llama with a LoRA adapter: a peft ``PeftModel``, as chattune trains it."""
    model = build_run(config(tiny_model_dir, chat_files, tmp_path / "out")).model
    assert hasattr(model, "get_base_model")  # the hook must find the embeddings through peft
    return model


def embed(model, ids: torch.Tensor) -> torch.Tensor:
    return unwrap_peft(model).get_input_embeddings()(ids)


def test_noise_in_train_mode_has_the_papers_scale(lora_model) -> None:
    ids = torch.randint(0, 384, (4, 50))  # L = 50 positions of d = 32 dimensions
    clean = embed(lora_model, ids).detach()
    handle = attach_neftune(lora_model, ALPHA)
    lora_model.train()
    noise = embed(lora_model, ids).detach() - clean
    bound = ALPHA / math.sqrt(50 * 32)
    assert noise.abs().max() <= bound * (1 + 1e-5)
    assert noise.abs().max() > 0.99 * bound  # 6400 uniform draws reach the bound
    assert noise.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert noise.mean().abs() < 0.05 * bound
    # The noise is fresh on every forward.
    assert not torch.equal(embed(lora_model, ids) - clean, noise)
    handle.remove()
    assert torch.equal(embed(lora_model, ids), clean)  # removed: clean again


def test_no_noise_in_eval_mode(lora_model) -> None:
    ids = torch.randint(0, 384, (2, 10))
    clean = embed(lora_model, ids).detach()
    attach_neftune(lora_model, ALPHA)
    lora_model.eval()
    assert torch.equal(embed(lora_model, ids), clean)


def test_the_length_is_the_padded_length_of_the_batch(lora_model) -> None:
    """As transformers does: the hook sees [B, L, d], not the attention mask."""
    attach_neftune(lora_model, ALPHA)
    lora_model.train()
    for length in (8, 200):
        ids = torch.randint(0, 384, (8, length))
        noise = embed(lora_model, ids).detach() - embed(lora_model.eval(), ids).detach()
        lora_model.train()
        assert noise.abs().max() <= ALPHA / math.sqrt(length * 32) * (1 + 1e-5)
        assert noise.abs().max() > 0.95 * ALPHA / math.sqrt(length * 32)


def test_the_noise_is_transformers_own(lora_model) -> None:
    """The same draws as transformers' ``neftune_post_forward_hook`` under the same seed."""
    neftune = pytest.importorskip("transformers.integrations.neftune")
    embeddings = unwrap_peft(lora_model).get_input_embeddings()
    ids = torch.randint(0, 384, (3, 17))
    lora_model.train()
    handle = attach_neftune(lora_model, ALPHA)
    torch.manual_seed(7)
    ours = embeddings(ids).detach()
    handle.remove()
    embeddings.neftune_noise_alpha = ALPHA
    handle = embeddings.register_forward_hook(neftune.neftune_post_forward_hook)
    torch.manual_seed(7)
    theirs = embeddings(ids).detach()
    handle.remove()
    torch.testing.assert_close(ours, theirs)


def test_alpha_must_be_positive(lora_model) -> None:
    with pytest.raises(ValueError, match="alpha must be > 0"):
        attach_neftune(lora_model, 0.0)


def test_training_with_neftune_noises_the_steps_not_the_evaluation(
    tiny_model_dir, chat_files, tmp_path
) -> None:
    """Same seed and data: the first step's loss differs from a plain run's (noisy
    embeddings in the loop's forward); the validation loss stays deterministic (eval mode)."""
    settings = ("train.max_steps=3", "train.report_to=[]")
    plain = fit(build_run(config(tiny_model_dir, chat_files, tmp_path / "plain", *settings)))
    run = build_run(config(tiny_model_dir, chat_files, tmp_path / "noisy", *settings))
    attach_neftune(run.model, ALPHA)
    noisy = fit(run)
    assert plain["steps"] == noisy["steps"] == 3
    first = [read_metrics(tmp_path / name)[0] for name in ("plain", "noisy")]
    assert first[0]["step"] == first[1]["step"] == 1
    assert first[0]["loss"] != first[1]["loss"]
    assert validation_loss(run) == validation_loss(run)  # the hook is still attached
    batch = collate(run.data.train[:4], run.tokenizer.pad_token_id)
    run.loss_module.train()
    with torch.no_grad():
        losses = [run.loss_module(**batch)[0].item() for _ in range(2)]
    assert losses[0] != losses[1]  # train mode: fresh noise on every forward
