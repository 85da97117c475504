"""The loss, computed only where there are labels, exactly as the model's own forward would.

A causal LM's head maps every position to a vocabulary-sized row (49,152 floats for SmolLM2);
with assistant-only masks most positions are prompt, so most of that work is thrown away.
:class:`LabelledLoss` runs the decoder, keeps the hidden states at labelled positions, and
applies the head to those alone (the *fast path*). It is an ``nn.Module`` so that DDP
(through Accelerate) wraps it and its forward still synchronises gradients.

It lives in the model layer because training (the objective) and evaluation (perplexity of
reference replies) compute the same quantity and must agree on it.

**Other architectures.** Some models post-process the head's output in their
``ForCausalLM.forward`` (transformers 5.23):

* Gemma 2/3/3n/4, VaultGemma, NanoChat: ``tanh(logits / c) * c``, ``c =
  config.final_logit_softcapping`` (RecurrentGemma: ``logits_soft_cap``; xLSTM:
  ``output_logit_soft_cap``);
* Cohere, Cohere2 (+MoE): ``logits * config.logit_scale``;
* Granite, GraniteMoe*: ``logits / config.logits_scaling``;
* Falcon-H1: ``logits * config.lm_head_multiplier``.

:data:`HEAD_POST` reproduces these on the fast path, keyed on the config attribute. Because
an attribute name alone can mislead (HyperCLOVA X *multiplies* by ``logits_scaling``,
MiniCPM3 divides the hidden states by it, Inkling2 also trims the vocabulary), the fast path
is *verified* once, when the module is built: :func:`fast_path_matches` runs the model's own
forward on eight tokens with the head's output forced to known values far outside any cap,
and checks both that the head saw the decoder's last hidden state and that the returned
logits are the table's post-processing of the forced values. Any mismatch (or an error)
selects the *fallback*: the model's own forward on the whole batch, with the loss taken from
its full ``[B, T, V]`` logits. Slower and hungrier, but right for any head.

**Mixture-of-experts auxiliary loss.** Mixtral, Qwen2-MoE, OLMoE and others add
``coef * aux_loss`` (the router load-balancing loss, ``coef = router_aux_loss_coef``) to
their *mean* token loss when ``config.output_router_logits`` is true (it is false by
default, and then the fast path is exact). When it is true the fallback runs, and the
aux term is added to the *summed* loss as ``coef * aux_loss * n_labelled``: chattune divides
the summed loss by the labelled-token count, which gives exactly Hugging Face's
``mean + coef * aux_loss`` for one micro-batch on one process (with accumulation or several
processes: the token-weighted mean of each micro-batch's aux term). The aux term belongs to
the training objective only: it is added in training mode and never to ``per_example`` rows,
which are log-likelihoods (DPO's log-probabilities, perplexity), nor in eval mode
(validation loss stays a pure token loss and agrees with ``chattune eval``'s perplexity).
DPO asks for it beside its rows (``router_aux=True``) and adds it to its mean pair loss, as
TRL's ``DPOTrainer`` does (train/preference.py).

**The fused head loss.** Even at labelled positions only, the head is the largest single
tensor of a step: 841 labelled tokens x 49,152 words is 165 MB of float32 logits, plus the
log-softmax and its gradient of the same size, each a fresh allocation the kernel has to
page in. When the head is a frozen, bias-free linear layer with no post-processing (LoRA on
Llama, Qwen, SmolLM, Mistral ...), :class:`FusedHeadLoss` computes each token's loss and its
gradient in one pass over chunks of :data:`CHUNK_FLOATS` logits (``logsumexp`` for the loss,
``softmax - onehot`` times the head for the gradient), so no ``[N, V]`` tensor outlives its
chunk and no log-softmax is stored for backward. On a 2-core Xeon with AMX the log-softmax
and its backward alone were 11% of a bf16 LoRA step of SmolLM2-135M (``python
bench/profile_step.py``; docs/training.md has the measurement). It is written here because
no library has one for the CPU: Liger Kernel's fused linear cross-entropy and Apple's Cut
Cross-Entropy are Triton (GPU) kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from chattune.data.render import IGNORE_INDEX

log = logging.getLogger(__name__)

PostOp = Callable[[torch.Tensor, float], torch.Tensor]


def _softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(logits / cap) * cap


#: Head post-processing applied by ``ForCausalLM.forward`` after ``lm_head``: config
#: attribute -> operation, applied in this order when the attribute is set (not None).
HEAD_POST: dict[str, PostOp] = {
    "final_logit_softcapping": _softcap,  # Gemma 2/3/3n/4, VaultGemma, NanoChat
    "logits_soft_cap": _softcap,  # RecurrentGemma
    "output_logit_soft_cap": _softcap,  # xLSTM
    "logit_scale": lambda x, s: x * s,  # Cohere, Cohere2, Cohere2-MoE
    "logits_scaling": lambda x, s: x / s,  # Granite, GraniteMoe* (HyperCLOVA X differs)
    "lm_head_multiplier": lambda x, m: x * m,  # Falcon-H1
}


def unwrap_peft(model: Any) -> Any:
    """The transformers model inside a peft wrapper (adapter layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_post(config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The :data:`HEAD_POST` operations ``config`` sets, as one function of the raw logits.

    Example:
        >>> post = head_post(Gemma2Config(final_logit_softcapping=30.0))  # doctest: +SKIP
        >>> post(torch.tensor([300.0]))  # tanh(10) * 30  # doctest: +SKIP
        tensor([30.0000])
    """
    ops = [(op, getattr(config, k)) for k, op in HEAD_POST.items() if getattr(config, k, None)]

    def apply(logits: torch.Tensor) -> torch.Tensor:
        for op, value in ops:
            logits = op(logits, value)
        return logits

    return apply


def uses_router_aux_loss(config: Any) -> bool:
    """Whether the model's forward adds a router load-balancing loss to its loss."""
    return bool(getattr(config, "output_router_logits", False))


def fast_path_matches(lm: Any, post: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether ``post(head(decoder(x)))`` is what ``lm``'s own forward returns as logits.

    Runs ``lm`` on eight tokens in eval mode with hooks on the head: one records its input
    (which must equal the decoder's last hidden state), one replaces its output with a ramp
    from -60 to 60 (so caps and scales show, whatever the weights), whose post-processing
    must equal the logits the model returns.
    """
    head, decoder = lm.get_output_embeddings(), lm.get_decoder()
    if not isinstance(head, nn.Module) or decoder is None:
        return False
    vocab = getattr(lm.config, "vocab_size", None)
    if not vocab:  # a composite config (vision + text): not a head we know
        return False
    ids = (torch.arange(1, 9, device=next(lm.parameters()).device) % vocab)[None]  # [1, 8]
    mask = torch.ones_like(ids)
    seen: dict[str, torch.Tensor] = {}

    def record_input(_module: nn.Module, args: tuple[Any, ...]) -> None:
        if args:
            seen["input"] = args[0].detach()

    def force_output(_module: nn.Module, _args: Any, out: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-60.0, 60.0, out.numel(), device=out.device).view(out.shape)
        seen["raw"] = ramp.to(out.dtype)
        return seen["raw"]

    modes = [(m, m.training) for m in lm.modules()]  # restored one by one afterwards
    lm.eval()
    try:
        with torch.no_grad():
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            hooks = [head.register_forward_pre_hook(record_input),
                     head.register_forward_hook(force_output)]  # fmt: skip
            try:
                logits = lm(input_ids=ids, attention_mask=mask, use_cache=False).logits
            finally:
                for h in hooks:
                    h.remove()
    except (TypeError, ValueError, AttributeError, RuntimeError) as e:
        log.debug("fast-path probe failed: %s", e)
        return False
    finally:
        for module, training in modes:
            module.training = training
    if "input" not in seen or "raw" not in seen or seen["input"].shape != hidden.shape:
        return False
    expected = post(seen["raw"])
    tol = 1e-4 if logits.dtype == torch.float32 else 1e-2  # bf16 rounds a ramp coarsely
    return (
        torch.allclose(seen["input"].float(), hidden.float(), rtol=tol, atol=tol)
        and logits.shape == expected.shape
        and torch.allclose(logits.float(), expected.float(), rtol=tol, atol=tol)
    )


class LabelledLoss(nn.Module):
    """Wrap a causal LM; ``forward`` returns (summed token loss, number of labelled tokens).

    ``fast`` tells which path it took (see the module docstring); ``why_slow`` says why not
    the fast one.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        lm = unwrap_peft(model)
        self.post = head_post(lm.config)
        self.why_slow: str | None = None
        if uses_router_aux_loss(lm.config):
            self.why_slow = "the model adds a router auxiliary loss (output_router_logits)"
        elif not fast_path_matches(lm, self.post):
            self.why_slow = "its head post-processing is not one chattune reproduces"
        if self.why_slow:
            log.info("%s: loss from the model's own forward: %s", type(lm).__name__, self.why_slow)
        post_ops = any(getattr(lm.config, k, None) for k in HEAD_POST)
        #: whether the fast path uses :class:`FusedHeadLoss` (see the module docstring)
        self.fused = self.fast and fusable_head(lm.get_output_embeddings(), post_ops)
        self._tuners = [m for m in lm.modules() if hasattr(m, "cast_input_dtype_enabled")]

    @property
    def fast(self) -> bool:
        return self.why_slow is None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        per_example: bool = False,
        router_aux: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """Summed loss and labelled-token count; per row (``[B]`` each) if ``per_example``.

        The summed loss of a training forward includes the router term (see the module
        docstring); per-row sums never do. With ``router_aux`` (per-row mode, for losses
        built on the rows such as DPO's) a third item is that forward's ``coef * aux_loss``,
        or None when the model has none or the module is in eval mode.
        """
        if router_aux and not per_example:
            raise ValueError("router_aux=True is for per_example rows: the sum includes it")
        with self._inputs_left_to_autocast(input_ids.device.type):
            return self._forward(input_ids, attention_mask, labels, per_example, router_aux)

    @contextmanager
    def _inputs_left_to_autocast(self, device_type: str) -> Iterator[None]:
        """Under autocast, stop peft's adapter layers from casting their bf16 input to their
        float32 weights' dtype: autocast casts it straight back for the matmul, so the two
        copies per adapter and step (and their backward) change nothing but the time. Left
        on with gradient checkpointing, whose recomputation runs outside this block."""
        lm = unwrap_peft(self.model)
        checkpointing = getattr(lm, "is_activation_checkpointing", None)  # transformers >= 5.x
        if checkpointing is None:
            checkpointing = getattr(lm, "is_gradient_checkpointing", False)
        if not self._tuners or not torch.is_autocast_enabled(device_type) or checkpointing:
            yield
            return
        before = [m.cast_input_dtype_enabled for m in self._tuners]
        for m in self._tuners:
            m.cast_input_dtype_enabled = False
        try:
            yield
        finally:
            for m, was in zip(self._tuners, before, strict=True):
                m.cast_input_dtype_enabled = was

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        per_example: bool,
        router_aux: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        lm = unwrap_peft(self.model)
        targets = labels[:, 1:]  # position t predicts token t+1
        keep = targets != IGNORE_INDEX  # [B, T-1]
        aux = None
        if self.fast:
            hidden = lm.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state  # [B, T, H]
            head = lm.get_output_embeddings()
            if self.fused and not head.weight.requires_grad:  # a head unfrozen since: plain
                token_loss = FusedHeadLoss.apply(hidden[:, :-1][keep], head.weight, targets[keep])
                rows = _reduce(token_loss, keep, per_example)
                return (*rows, None) if router_aux else rows
            logits = self.post(head(hidden[:, :-1][keep]))  # [N, V]
        else:
            out = lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            logits = out.logits[:, :-1][keep]  # [N, V], from the full [B, T, V]
            if self.training and (router_aux or not per_example):
                aux = router_aux_term(lm, out)
        if not per_example:
            loss = F.cross_entropy(logits.float(), targets[keep], reduction="sum")
            n = keep.sum()
            return (loss if aux is None else loss + aux * n), n
        token_loss = F.cross_entropy(logits.float(), targets[keep], reduction="none")  # [N]
        rows = _reduce(token_loss, keep, per_example=True)
        return (*rows, aux) if router_aux else rows


def _reduce(
    token_loss: torch.Tensor, keep: torch.Tensor, per_example: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, count) of the labelled tokens' losses, or both per batch row."""
    if not per_example:
        return token_loss.sum(), keep.sum()
    rows = keep.nonzero()[:, 0]  # the batch row of each labelled token
    sums = torch.zeros(len(keep), device=token_loss.device).index_add_(0, rows, token_loss)
    return sums, keep.sum(dim=1)


#: Logits per chunk of :class:`FusedHeadLoss`: 2**22 floats (16 MB in float32) is 85 rows of
#: SmolLM2's 49,152 words. Small enough that glibc serves it from its heap rather than a fresh
#: mmap (its threshold grows to at most 32 MB); chunks of 2**20 to 2**23 floats measured the
#: same speed within noise.
CHUNK_FLOATS = 2**22


def fusable_head(head: Any, post_ops: bool) -> bool:
    """Whether :class:`FusedHeadLoss` computes exactly what ``post(head(h))`` + cross-entropy
    would: a bias-free linear head nothing trains, with no post-processing."""
    weight = getattr(head, "weight", None)
    return (
        isinstance(head, nn.Linear)
        and getattr(head, "bias", None) is None
        and isinstance(weight, torch.Tensor)
        and not weight.requires_grad
        and not post_ops
    )


class FusedHeadLoss(torch.autograd.Function):
    """Per-token cross-entropy of ``h @ weight.T`` against ``y``, chunk by chunk, with the
    gradient with respect to ``h`` computed in the forward pass (the head is frozen, so that
    is the only one): ``d loss_i / d h_i = (softmax(z_i) - onehot(y_i)) @ weight``. Backward
    multiplies it by the incoming per-token gradient, so any reduction (sum, per row, DPO's
    weighted rows) is exact. The loss is in float32 whatever the matmul's dtype."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if ctx.needs_input_grad[1]:
            raise RuntimeError("FusedHeadLoss computes no gradient for a trained head's weight")
        n, vocab = h.shape[0], weight.shape[0]
        rows = max(1, CHUNK_FLOATS // vocab)
        losses = torch.empty(n, dtype=torch.float32, device=h.device)
        grad = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        for i in range(0, n, rows):
            z = (h[i : i + rows] @ weight.t()).float()  # [rows, V]; bf16 matmul under autocast
            target = y[i : i + rows, None]
            picked = z.gather(1, target)
            # logsumexp and softmax in place: torch.logsumexp would allocate another [rows, V]
            top = z.amax(dim=1, keepdim=True)
            total = z.sub_(top).exp_().sum(dim=1, keepdim=True)
            losses[i : i + rows] = (top + total.log() - picked).squeeze(1)
            if grad is not None:
                z.div_(total)  # softmax
                z.scatter_add_(1, target, torch.full_like(target, -1.0, dtype=z.dtype))
                grad[i : i + rows] = z.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        if grad is None:
            return None, None, None
        return grad * grad_losses[:, None].to(grad.dtype), None, None


def router_aux_term(lm: Any, out: Any) -> torch.Tensor | None:
    """``coef * aux_loss`` as the model adds it to its mean loss, or None without one."""
    aux = getattr(out, "aux_loss", None)
    if aux is None:
        return None
    coef = next(
        (
            v
            for v in (
                getattr(lm, "router_aux_loss_coef", None),
                getattr(lm, "aux_loss_coef", None),  # JetMoE
                getattr(lm.config, "router_aux_loss_coef", None),
            )
            if v is not None
        ),
        None,
    )
    if coef is None:
        log.warning("%s returns aux_loss but no coefficient for it; ignored", type(lm).__name__)
        return None
    return coef * aux.float()
