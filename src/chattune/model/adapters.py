"""What gets trained: a small registry of methods, each a function that prepares the model.

=======  ==========================================================================
lora     low-rank adapters on every linear layer but the head (peft)
adalora  LoRA whose rank budget is reallocated during training (peft)
ia3      learned rescaling vectors on keys, values and the MLP (peft)
freeze   train only the top ``train_layers`` blocks, the final norm and the head
full     train every parameter
=======  ==========================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chattune.config import AdapterConfig
from chattune.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """A model ready to train and the hooks its method needs from the training loop."""

    model: Any
    is_peft: bool
    #: extra loss term (AdaLoRA's orthogonal regulariser), or None
    regularizer: Callable[[], Any] | None = None
    #: called after each optimizer step with the global step (AdaLoRA's rank allocation)
    after_step: Callable[[int], None] | None = None
    #: what the method keeps besides the weights, for checkpoints: ``save_state() -> dict``
    #: and ``load_state(dict)`` (AdaLoRA's importance scores and rank pattern), or None
    save_state: Callable[[], dict[str, Any]] | None = None
    load_state: Callable[[dict[str, Any]], None] | None = None


def _lora(model: Any, cfg: AdapterConfig, total_steps: int) -> Prepared:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    return Prepared(get_peft_model(model, config), is_peft=True)


def _adalora(model: Any, cfg: AdapterConfig, total_steps: int) -> Prepared:
    from peft import AdaLoraConfig, get_peft_model

    # AdaLoRA prunes ranks between tinit and total_step - tfinal; keep both inside the run.
    tinit, tfinal = max(1, total_steps // 10), max(1, total_steps // 5)
    if total_steps <= tinit + tfinal:
        raise ConfigError(
            f"adapter.method=adalora needs more than {tinit + tfinal} optimizer steps to "
            f"reallocate ranks (this run has {total_steps}); train longer or use lora"
        )
    config = AdaLoraConfig(
        init_r=cfg.r,
        target_r=cfg.adalora_target_r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        total_step=total_steps,
        tinit=tinit,
        tfinal=tfinal,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    weight = config.orth_reg_weight
    name = peft_model.base_model.trainable_adapter_name

    def regularizer() -> Any:
        # peft adds this term inside AdaLoraModel.forward, but only when the model computes
        # the loss itself; chattune computes logits only at labelled positions (see
        # model/loss.py), so the same term is added here.
        import torch

        terms = []
        for name, p in peft_model.named_parameters():
            if p.requires_grad and ("lora_A" in name or "lora_B" in name):
                cov = p @ p.T if "lora_A" in name else p.T @ p
                eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
                terms.append(torch.linalg.matrix_norm(cov - eye))
        return weight * torch.stack(terms).mean() if terms else None

    def save_state() -> dict[str, Any]:
        # The rank allocator's smoothed importance scores decide which ranks survive the
        # budget phase, and the rank pattern masks the pruned ranks after it; neither is a
        # parameter, so a resumed run without them would re-score from zero, and crash once
        # the budget phase is over (``mask_using_rank_pattern`` on a pattern of None).
        allocator = peft_model.base_model.rankallocator
        return {
            "rank_pattern": peft_model.peft_config[name].rank_pattern,
            "ipt": allocator.ipt,
            "exp_avg_ipt": allocator.exp_avg_ipt,
            "exp_avg_unc": allocator.exp_avg_unc,
        }

    def load_state(state: dict[str, Any]) -> None:
        allocator = peft_model.base_model.rankallocator
        peft_model.peft_config[name].rank_pattern = state["rank_pattern"]
        allocator.ipt = state["ipt"]
        allocator.exp_avg_ipt = state["exp_avg_ipt"]
        allocator.exp_avg_unc = state["exp_avg_unc"]

    return Prepared(
        peft_model,
        is_peft=True,
        regularizer=regularizer,
        after_step=peft_model.base_model.update_and_allocate,
        save_state=save_state,
        load_state=load_state,
    )


def _ia3(model: Any, cfg: AdapterConfig, total_steps: int) -> Prepared:
    from peft import IA3Config, get_peft_model

    # peft knows the right key/value/feed-forward modules for common architectures.
    config = IA3Config(task_type="CAUSAL_LM")
    return Prepared(get_peft_model(model, config), is_peft=True)


def _decoder_layers(model: Any) -> Any:
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
    if layers is None:
        raise ConfigError(
            f"adapter.method=freeze: cannot find the transformer blocks of "
            f"{type(model).__name__}; use lora or full"
        )
    return layers


def _freeze(model: Any, cfg: AdapterConfig, total_steps: int) -> Prepared:
    for p in model.parameters():
        p.requires_grad_(False)
    layers = _decoder_layers(model)
    if cfg.train_layers > len(layers):
        raise ConfigError(
            f"adapter.train_layers={cfg.train_layers} but the model has {len(layers)} blocks"
        )
    trained = list(layers[len(layers) - cfg.train_layers :])
    decoder = model.get_decoder()
    norm = getattr(decoder, "norm", None) or getattr(decoder, "ln_f", None)
    trained += [norm] if norm is not None else []
    if cfg.train_head:
        # With tied embeddings this also trains the input embeddings (they are one tensor).
        trained.append(model.get_output_embeddings())
    for module in trained:
        for p in module.parameters():
            p.requires_grad_(True)
    return Prepared(model, is_peft=False)


def _full(model: Any, cfg: AdapterConfig, total_steps: int) -> Prepared:
    for p in model.parameters():
        p.requires_grad_(True)
    return Prepared(model, is_peft=False)


METHODS: dict[str, Callable[[Any, AdapterConfig, int], Prepared]] = {
    "lora": _lora,
    "adalora": _adalora,
    "ia3": _ia3,
    "freeze": _freeze,
    "full": _full,
}


def resume_adapter(model: Any, folder: str) -> Prepared:
    """Load the peft adapter in ``folder`` onto ``model``, trainable: continue training it
    (a learning round continues the current version rather than starting a new adapter).
    """
    import json
    from pathlib import Path

    from peft import PeftModel

    config = Path(folder) / "adapter_config.json"
    if not config.exists():
        raise ConfigError(f"model.adapter {folder}: no adapter_config.json (not a peft adapter)")
    kind = json.loads(config.read_text()).get("peft_type")
    if kind == "ADALORA":  # its rank schedule was planned for the first run's steps
        raise ConfigError(f"model.adapter {folder}: continuing an AdaLoRA adapter is not supported")
    peft_model = PeftModel.from_pretrained(model, folder, is_trainable=True)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    log.info("continuing the adapter in %s: %s parameters train", folder, f"{trainable:,}")
    return Prepared(peft_model, is_peft=True)


def prepare(model: Any, cfg: AdapterConfig, total_steps: int) -> Prepared:
    """Apply ``cfg.method`` to ``model``; log how many parameters will be trained."""
    if cfg.method not in METHODS:
        raise ConfigError(f"adapter.method: unknown {cfg.method!r}; one of {', '.join(METHODS)}")
    if cfg.dropout and cfg.method in ("freeze", "full"):
        # Attention modules copy config.attention_dropout at construction; set it on them.
        for module in model.modules():
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = cfg.dropout
    prepared = METHODS[cfg.method](model, cfg, total_steps)
    trainable = sum(p.numel() for p in prepared.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in prepared.model.parameters())
    log.info(
        "method %s: training %s of %s parameters (%.2f%%)",
        cfg.method,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return prepared
