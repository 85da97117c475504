"""train.compile: decoder layers compiled by torch.compile train exactly like eager ones."""

from __future__ import annotations

import pytest
import torch

from chattune.config import AdapterConfig
from chattune.errors import ConfigError
from chattune.model.adapters import prepare
from chattune.model.loss import LabelledLoss
from chattune.train import setup
from tests.test_fused_head_loss import batch, tiny_llama


def loss_and_grads(scorer: LabelledLoss) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    scorer.model.zero_grad(set_to_none=True)
    loss, _ = scorer(**batch())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in scorer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_compiled_layers_give_the_eager_loss_and_gradients() -> None:
    # float32, so that only compilation differs (in bf16, inductor's fused chains round
    # differently from eager's op-by-op ones: about 2% on this tiny, wide-weight model)
    model = prepare(tiny_llama(), AdapterConfig(r=4, alpha=8), total_steps=1).model
    scorer = LabelledLoss(model).train()
    eager_loss, eager = loss_and_grads(scorer)
    assert setup.compile_layers(model.get_base_model()) == 2
    compiled_loss, compiled = loss_and_grads(scorer)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-4)
    assert any(g.abs().sum() > 0 for g in eager.values())
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5, msg=name)


def test_compile_without_a_cpp_compiler_says_so(monkeypatch) -> None:
    monkeypatch.setattr(setup.shutil, "which", lambda _name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler"):
        setup.compile_layers(tiny_llama())


def test_evaluation_after_compiled_training_steps_compiles_nothing_more() -> None:
    """Generation with a KV cache would recompile per layer; eager_if_compiled runs it eager."""
    from types import SimpleNamespace

    from torch._dynamo.utils import counters

    from chattune.train.loop import eager_if_compiled

    model = prepare(tiny_llama(), AdapterConfig(r=4, alpha=8), total_steps=1).model
    setup.compile_layers(model.get_base_model())
    loss_and_grads(LabelledLoss(model).train())  # the training step compiles
    compiled = counters["stats"]["unique_graphs"]
    assert compiled > 0
    run = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(compile=True)))
    model.eval()
    with eager_if_compiled(run), torch.no_grad():
        model.generate(batch()["input_ids"][:1, :6], max_new_tokens=3, do_sample=False)
        LabelledLoss(model).eval()(**batch())
    assert counters["stats"]["unique_graphs"] == compiled
