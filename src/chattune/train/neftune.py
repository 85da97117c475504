"""NEFTune: uniform noise on the input embeddings while training (``train.neftune_alpha``).

Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning": each training
forward adds ``Uniform(-1, 1) * alpha / sqrt(L * d)`` to the token embeddings (``L`` the
sequence length, ``d`` the embedding width), so the noise's total size stays about
``alpha / sqrt(3)`` whatever the shape. Evaluation and generation see clean embeddings. The
paper reports better *generated replies* (AlpacaEval, judged by a model) at alpha 5-15; it
does not claim a lower validation loss.

``L`` is the padded length of the batch, as in transformers' and TRL's hook: a forward hook
on the embedding sees the embeddings only, not the attention mask. chattune's batches are
grouped by length, so padding is a small share (bench/padding_vs_packing.py) and each
row's noise is within a few percent of the paper's per-row scale. Noise on the padding is
harmless: it is on the right, where no real token attends (causal attention) and no label is.

transformers has the same hook (``neftune_post_forward_hook``), but it moved between major
versions (``trainer_utils`` in 4.x, ``integrations.neftune`` in 5.x) and reads ``alpha`` from
an attribute it expects on the embedding module; this closure is as short and depends on
neither. tests/test_neftune.py checks that both draw the same noise.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from chattune.model.loss import unwrap_peft


def attach_neftune(model: nn.Module, alpha: float) -> RemovableHandle:
    """Add NEFTune noise of scale ``alpha`` to ``model``'s input embeddings in train mode.

    Args:
        model: a transformers causal LM, bare or wrapped by peft (not by DDP: attach before
            ``accelerator.prepare``, or pass the unwrapped model).
        alpha: the paper's alpha (5 is a common choice); must be > 0.

    Returns:
        The hook's handle: ``handle.remove()`` turns NEFTune off again.

    Example:
        >>> handle = attach_neftune(run.model, alpha=5.0)  # doctest: +SKIP
        >>> handle.remove()  # doctest: +SKIP
    """
    if not alpha > 0:
        raise ValueError(f"NEFTune alpha must be > 0, got {alpha} (0 means off: do not attach)")
    embeddings = unwrap_peft(model).get_input_embeddings()

    def add_noise(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        length, dim = output.shape[-2:]  # output: [B, L, d]
        bound = alpha / math.sqrt(length * dim)
        return output + torch.empty_like(output).uniform_(-bound, bound)

    return embeddings.register_forward_hook(add_noise)
