"""The fused head loss (model/loss.py: FusedHeadLoss) computes what the plain path computes.

The fused path replaces ``cross_entropy(head(h))`` by a chunked forward that also produces the
gradient; these tests pin it to autograd's own answer: losses, gradients (with chunk edges
inside the batch and uneven per-token weights, as DPO's rows give), and the trained
parameters' gradients through a LoRA model. They also pin when it is *not* used.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers

from chattune.config import AdapterConfig
from chattune.model import loss as loss_module
from chattune.model.adapters import prepare
from chattune.model.loss import FusedHeadLoss, LabelledLoss
from tests.test_loss_architectures import COMMON as SMALL
from tests.test_loss_architectures import VOCAB, batch


def tiny_llama(**settings: Any) -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**SMALL, **settings)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_losses_and_gradient_equal_autograds(monkeypatch, dtype) -> None:
    # 3 rows per chunk over 10 tokens: four chunks, the last one short
    monkeypatch.setattr(loss_module, "CHUNK_FLOATS", 3 * VOCAB)
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, 32, generator=g).to(dtype)
    weight = (torch.randn(VOCAB, 32, generator=g) * 0.5).to(dtype)
    y = torch.randint(0, VOCAB, (10,), generator=g)
    row_weights = torch.rand(10, generator=g)  # per-token upstream gradients, uneven

    h_ref = h.clone().requires_grad_(True)
    ref = F.cross_entropy((h_ref @ weight.t()).float(), y, reduction="none")
    (ref * row_weights).sum().backward()

    h_fused = h.clone().requires_grad_(True)
    fused = FusedHeadLoss.apply(h_fused, weight, y)
    (fused * row_weights).sum().backward()

    assert fused.dtype == torch.float32
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fused, ref, **tol)
    torch.testing.assert_close(h_fused.grad.float(), h_ref.grad.float(), **tol)


def test_no_gradient_is_computed_without_one_asked(monkeypatch) -> None:
    h, weight = torch.randn(4, 32), torch.randn(VOCAB, 32)
    with torch.no_grad():
        losses = FusedHeadLoss.apply(h, weight, torch.tensor([1, 2, 3, 4]))
    assert losses.shape == (4,) and not losses.requires_grad


def lora_model(model: Any) -> Any:
    return prepare(model, AdapterConfig(r=4, alpha=8), total_steps=1).model


def lora_grads(model: Any, scorer: LabelledLoss, per_example: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out, _ = scorer(**batch(), per_example=per_example)
    (out * torch.tensor([0.5, 2.0, 1.0]) if per_example else out).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("per_example", [False, True])
def test_lora_training_through_the_fused_head_matches_the_plain_path(per_example) -> None:
    model = lora_model(tiny_llama())
    scorer = LabelledLoss(model).train()
    assert scorer.fused
    fused_out = scorer(**batch(), per_example=per_example)
    fused = lora_grads(model, scorer, per_example)
    scorer.fused = False  # the plain path: head on the labelled rows, then cross_entropy
    plain_out = scorer(**batch(), per_example=per_example)
    plain = lora_grads(model, scorer, per_example)
    torch.testing.assert_close(fused_out, plain_out, rtol=1e-5, atol=1e-5)
    assert fused.keys() == plain.keys() and len(fused) > 0
    for name in fused:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_fused_head_is_used_only_where_it_is_exact() -> None:
    # a trained head (full fine-tuning): its gradient is not computed by the fused path
    assert not LabelledLoss(tiny_llama()).fused
    # a frozen head with post-processing (Gemma 2's soft-capping): not fused
    torch.manual_seed(0)
    gemma = transformers.AutoModelForCausalLM.from_config(
        transformers.Gemma2Config(**SMALL, final_logit_softcapping=2.0, head_dim=8),
        attn_implementation="eager",
    )
    gemma.requires_grad_(False)
    scorer = LabelledLoss(gemma)
    assert scorer.fast and not scorer.fused
    # a frozen bias-free head without post-processing: fused
    assert LabelledLoss(tiny_llama().requires_grad_(False)).fused


def test_adapter_inputs_are_left_to_autocast_and_the_flags_restored() -> None:
    model = lora_model(tiny_llama())
    scorer = LabelledLoss(model).train()
    tuners = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert tuners
    seen: list[bool] = []
    hook = tuners[0].register_forward_pre_hook(
        lambda m, _args: seen.append(m.cast_input_dtype_enabled)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with_toggle = lora_grads(model, scorer, per_example=False)
    scorer._tuners = []  # peft's own casting, as before
    with torch.autocast("cpu", dtype=torch.bfloat16):
        without = lora_grads(model, scorer, per_example=False)
    scorer(**batch())  # no autocast: nothing is switched off
    hook.remove()
    assert seen == [False, True, True]
    assert all(m.cast_input_dtype_enabled for m in tuners)
    for name in with_toggle:  # the casts peft skipped were exact round trips
        torch.testing.assert_close(with_toggle[name], without[name], msg=name)


def test_a_head_unfrozen_after_the_module_was_built_still_trains() -> None:
    model = tiny_llama().requires_grad_(False)
    scorer = LabelledLoss(model).train()
    assert scorer.fused
    model.lm_head.weight.requires_grad_(True)
    scorer(**batch())[0].backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    with pytest.raises(RuntimeError, match="trained head"):
        FusedHeadLoss.apply(torch.randn(2, 32), model.lm_head.weight, torch.tensor([1, 2]))


def test_an_adapter_saved_after_bf16_training_keeps_float32_embeddings(tmp_path) -> None:
    """peft saves the base embedding with an adapter that targets it: in float32, as loaded."""
    from safetensors.torch import load_file

    from chattune.train.lifecycle import embeddings_in_float32
    from chattune.train.setup import frozen_weights_in_bf16

    model = prepare(
        tiny_llama(), AdapterConfig(r=4, alpha=8, target_modules=["q_proj", "embed_tokens"]), 1
    ).model
    frozen_weights_in_bf16(model)
    embeddings_in_float32(model)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    base = {k: v.dtype for k, v in saved.items() if "lora_" not in k}
    assert base and set(base.values()) == {torch.float32}, base
