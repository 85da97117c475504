"""LabelledLoss equals each architecture's own loss (model/loss.py's module docstring).

Tiny random models of families whose ``ForCausalLM.forward`` post-processes the head
(Gemma 2/3 soft-capping, Cohere's scale, Granite's divisor, HyperCLOVA X's multiplier) or
adds a router loss (Mixtral, Qwen2-MoE), with Llama as the control. Weights are drawn wide
(``initializer_range=0.2``) and the caps small, so a skipped post-processing step changes the
loss by several percent, not in the sixth digit.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers

from chattune.model import loss as loss_module
from chattune.model.loss import LabelledLoss

VOCAB = 256
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
MOE = dict(num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.5)

#: name -> (config class, its settings, whether the fast path is expected)
ARCHS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "llama": ("LlamaConfig", {}, True),
    "gemma2": ("Gemma2Config", dict(final_logit_softcapping=2.0, head_dim=8), True),
    "gemma3": ("Gemma3TextConfig", dict(final_logit_softcapping=2.0, head_dim=8), True),
    "cohere": ("CohereConfig", dict(logit_scale=4.0), True),
    "granite": ("GraniteConfig", dict(logits_scaling=0.25), True),
    # multiplies by ``logits_scaling`` where Granite divides: the probe must notice
    "hyperclovax": ("HyperCLOVAXConfig", dict(logits_scaling=4.0), False),
    "mixtral": ("MixtralConfig", dict(num_local_experts=4, **MOE), False),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=32, **MOE),
        False,
    ),
    "mixtral_no_aux": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2), True),
}


def tiny(name: str) -> Any:
    config_class, settings, _ = ARCHS[name]
    config = getattr(transformers, config_class)(**COMMON, **settings)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")


def batch() -> dict[str, torch.Tensor]:
    """Three rows, right-padded as chattune's collate does; prompt tokens unlabelled."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, VOCAB, (3, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    attention_mask[2, 6:] = 0
    input_ids[attention_mask == 0] = 0
    labels = input_ids.clone()
    labels[:, :4] = -100
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def reference(model: Any, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed cross entropy from the model's own full forward logits, and counts."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    targets = b["labels"][:, 1:]
    token = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, reduction="none", ignore_index=-100
    )  # [B, T-1], 0 where unlabelled
    return token.sum(dim=1), (targets != -100).sum(dim=1)


@pytest.mark.parametrize("name", list(ARCHS))
def test_loss_equals_the_models_own(name: str) -> None:
    model = tiny(name)
    scorer = LabelledLoss(model).eval()
    assert scorer.fast is ARCHS[name][2], scorer.why_slow
    b = batch()
    with torch.no_grad():
        rows, counts = reference(model, b)
        total, n = scorer(**b)
        sums, per_counts = scorer(**b, per_example=True)
    assert int(n) == int(counts.sum()) == 8 + 5 + 2  # tokens 5-12, 5-9, 5-6
    assert per_counts.tolist() == counts.tolist()
    torch.testing.assert_close(total, rows.sum(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sums, rows, rtol=1e-5, atol=1e-4)


def test_gemma2_softcapping_changes_the_loss() -> None:
    """The head alone (chattune before softcapping was applied) is several percent off."""
    model = tiny("gemma2").eval()
    b = batch()
    with torch.no_grad():
        hidden = model.get_decoder()(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"]
        ).last_hidden_state
        raw = model.get_output_embeddings()(hidden[:, :-1])
        uncapped = F.cross_entropy(raw.transpose(1, 2), b["labels"][:, 1:], reduction="sum")
        capped, _ = LabelledLoss(model).eval()(**b)
    assert abs(float(uncapped - capped)) / float(capped) > 0.02


def test_an_unlisted_post_processing_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """With softcapping missing from the table, the probe sends Gemma 2 to the fallback."""
    table = {k: v for k, v in loss_module.HEAD_POST.items() if k != "final_logit_softcapping"}
    monkeypatch.setattr(loss_module, "HEAD_POST", table)
    model = tiny("gemma2")
    scorer = LabelledLoss(model).eval()
    assert not scorer.fast
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(scorer(**b)[0], reference(model, b)[0].sum())


def test_probe_leaves_training_modes_alone() -> None:
    model = tiny("gemma2").train()
    model.model.layers[0].eval()
    LabelledLoss(model)
    assert model.training and model.model.layers[1].training
    assert not model.model.layers[0].training


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_moe_training_loss_adds_the_router_term_as_hugging_face_does(name: str) -> None:
    """Summed loss / labelled tokens == the model's own (mean + coef * aux) loss, and the
    gradients agree; eval mode and per_example rows leave the aux term out."""
    model = tiny(name).train()
    scorer = LabelledLoss(model).train()
    b = batch()
    hf = model(**b)
    assert hf.aux_loss is not None and float(hf.aux_loss.detach()) > 0
    total, n = scorer(**b)
    torch.testing.assert_close(total / n, hf.loss, rtol=1e-5, atol=1e-5)

    grads = []
    for loss in (total / n, hf.loss):
        model.zero_grad()
        loss.backward(retain_graph=True)
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any("gate" in k for k in grads[0])  # the router learns from the aux term
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)

    with torch.no_grad():
        rows, _ = reference(model, b)
        torch.testing.assert_close(scorer(**b, per_example=True)[0], rows)
        torch.testing.assert_close(scorer.eval()(**b)[0], rows.sum())


def test_fast_path_gradients_match_the_models_own_loss() -> None:
    """Gemma 2 (soft-capped, fast path): same gradients as its own forward's mean loss."""
    model = tiny("gemma2").train()
    scorer = LabelledLoss(model)
    b = batch()
    total, n = scorer(**b)
    grads = []
    for loss in (total / n, model(**b).loss):
        model.zero_grad()
        loss.backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    for k in grads[1]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)


def test_a_peft_wrapped_model_keeps_the_fast_path() -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny("gemma2"), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    scorer = LabelledLoss(model).eval()
    assert scorer.fast
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(scorer(**b)[0], reference(model, b)[0].sum())


def _dpo_run(model, beta: float = 0.1):
    """Two preference pairs on ``model`` and the parts of a run that ``preference_step``
    reads (one process, no autocast)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from chattune.data.preference import EncodedPair
    from chattune.data.render import Encoded

    g = torch.Generator().manual_seed(2)

    def encoded(n: int, prompt: int = 4) -> Encoded:
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        return Encoded(input_ids=ids, labels=[-100] * prompt + ids[prompt:])

    pairs = [EncodedPair(encoded(12), encoded(9), -40.0, -25.0),
             EncodedPair(encoded(7), encoded(11), -15.0, -33.0)]  # fmt: skip
    accelerator = SimpleNamespace(
        num_processes=1, device=torch.device("cpu"), autocast=nullcontext,
        no_sync=lambda _: nullcontext(), backward=lambda loss: loss.backward(),
    )  # fmt: skip
    return SimpleNamespace(
        cfg=SimpleNamespace(train=SimpleNamespace(dpo_beta=beta)), accelerator=accelerator,
        data=SimpleNamespace(train=pairs), tokenizer=SimpleNamespace(pad_token_id=0),
        loss_module=LabelledLoss(model).train(), anchor=None, sum_over_ranks=lambda *c: list(c),
    )  # fmt: skip


def _trl_dpo_loss(model, pairs, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TRL's DPO loss of one micro-batch: ``mean(-log σ(β·margin)) + coef * aux_loss``, the
    aux term from the policy's forward on the chosen and rejected rows together; and the
    DPO part alone."""
    from chattune.data.batching import collate

    b = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], 0)
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    assert out.aux_loss is not None and float(out.aux_loss.detach()) > 0
    logits = out.logits[:, :-1].float().transpose(1, 2)
    logp = -F.cross_entropy(logits, b["labels"][:, 1:], reduction="none").sum(dim=1)
    n = len(pairs)
    ref = torch.tensor([[p.ref_chosen for p in pairs], [p.ref_rejected for p in pairs]])
    margin = beta * ((logp[:n] - ref[0]) - (logp[n:] - ref[1]))
    dpo = -F.logsigmoid(margin).mean()
    return dpo + MOE["router_aux_loss_coef"] * out.aux_loss, dpo


def _grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_dpo_adds_the_router_term_as_trl_does() -> None:
    """A DPO step on Mixtral with a trained router: loss and gradients of TRL's loss."""
    from chattune.train.preference import preference_step

    model = tiny("mixtral").train()
    run = _dpo_run(model)
    model.zero_grad()
    loss, _ = preference_step(run, [[0, 1]])
    ours = _grads(model)

    expected, dpo = _trl_dpo_loss(model, run.data.train, 0.1)
    assert abs(loss - expected.item()) < 1e-5 and abs(loss - dpo.item()) > 1e-3
    model.zero_grad()
    expected.backward()
    assert any("gate" in k for k in ours)
    for k, v in _grads(model).items():
        torch.testing.assert_close(ours[k], v, rtol=1e-4, atol=1e-6)


def test_dpo_router_term_under_gradient_accumulation_is_trls() -> None:
    """Two accumulated micro-batches of one pair each: the gradient of TRL's
    ``gradient_accumulation_steps=2``, each micro-batch's loss (its DPO term plus its own
    router term) over 2; the logged loss is their mean."""
    from chattune.train.preference import preference_step

    model = tiny("mixtral").train()
    run = _dpo_run(model)
    model.zero_grad()
    loss, _ = preference_step(run, [[0], [1]])
    ours = _grads(model)

    model.zero_grad()
    total = torch.zeros(())
    for pair in run.data.train:
        micro, _ = _trl_dpo_loss(model, [pair], 0.1)
        (micro / 2).backward()
        total += micro.detach() / 2
    assert abs(loss - float(total)) < 1e-5
    for k, v in _grads(model).items():
        torch.testing.assert_close(ours[k], v, rtol=1e-4, atol=1e-6)
