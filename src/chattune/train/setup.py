"""Build a run: data, model with its method applied, optimizer, schedule, accelerator.

Everything the loop needs is made here, once, and handed over as one :class:`Run`::

    run = build_run(cfg)          # reads and encodes the data, loads the base model...
    run.total_steps, run.model    # ...and the loop (train/loop.py) takes it from there

Scale-out is Hugging Face Accelerate: the same code runs as one process or under
``accelerate launch`` (DDP); :class:`Run` knows its rank and whether it is the main one.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chattune.config import RunConfig
from chattune.data.batching import EncodeReport
from chattune.data.dataset import (
    encode_conversations,
    encode_documents,
    read_splits,
    require_trainable,
)
from chattune.data.grounded import GroundedOptions, Grounder, encode_grounded, require_known_gold
from chattune.data.render import Encoded, MaskPolicy, apply_chat_template_override
from chattune.errors import ConfigError
from chattune.model.adapters import Prepared, prepare, resume_adapter
from chattune.model.loading import load_base
from chattune.model.loss import LabelledLoss, unwrap_peft
from chattune.train.checkpoint import TrainState
from chattune.train.hooks import TrainHooks
from chattune.train.optim import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class Data:
    """The encoded training and validation sets, with what encoding had to cut."""

    train: list[Encoded]
    val: list[Encoded]
    train_report: EncodeReport
    val_report: EncodeReport | None


@dataclass
class Run:
    """What the loop works with: built once by :func:`build_run`, then changed only by it."""

    cfg: RunConfig
    accelerator: Any
    prepared: Prepared
    loss_module: Any  # LabelledLoss, wrapped by Accelerate (DDP) when distributed
    optimizer: Any
    scheduler: Any
    tokenizer: Any
    data: Data
    total_steps: int
    output: Path
    hooks: TrainHooks = field(default_factory=TrainHooks)
    #: the pull toward the starting weights (``train.anchor``), or None
    anchor: Any = None
    state: TrainState = field(default_factory=TrainState)
    stop_requested: bool = False  # Ctrl+C: checkpoint and exit
    early_stopped: bool = False
    last_saved_step: int = -1

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def model(self) -> Any:
        return self.prepared.model

    @property
    def should_stop(self) -> bool:
        return self.stop_requested or self.early_stopped

    @property
    def eval_module(self) -> Any:
        """The loss module without its DDP wrapper, for forward passes without gradients.

        DDP's forward broadcasts buffers from rank 0 before each pass: in an evaluation where
        ranks run different numbers of batches (a rank can get none), a pass through the
        wrapper would wait for a partner that never comes.
        """
        return self.accelerator.unwrap_model(self.loss_module)

    def sum_over_ranks(self, *counts: int) -> list[int]:
        """``counts`` summed over every rank: one all-reduce, none in a single process."""
        if self.accelerator.num_processes == 1:
            return list(counts)
        local = torch.tensor(counts, dtype=torch.float64, device=self.accelerator.device)
        return [int(x) for x in self.accelerator.reduce(local, reduction="sum").tolist()]


def read_items(cfg: RunConfig) -> tuple[list[Any], list[Any]]:
    """The training and validation items (conversations or documents), read and validated.

    With ``data.val_split`` the validation items are a seeded random share of the training
    files, the same on every run and every resume.
    """
    d = cfg.data
    if not d.train:
        raise ConfigError("data.train (--data): give at least one training file")
    if d.objective == "preference":
        from chattune.data.dataset import split_validation
        from chattune.data.preference import read_many_pairs

        pairs, val = read_many_pairs(d.train), read_many_pairs(d.val) if d.val else []
        if d.val_split:
            pairs, val = split_validation(pairs, d.val_split, cfg.train.seed)
        return pairs, val
    return read_splits(d.train, d.val, d.format, d.objective, d.val_split, cfg.train.seed)


def encode(
    cfg: RunConfig, items: list[Any], tokenizer: Any, grounder: Grounder | None = None
) -> tuple[list[Encoded], EncodeReport]:
    """Conversations through the chat template (each assistant turn on its grounded prompt
    with a ``grounder``), or documents packed into blocks (``lm``)."""
    d = cfg.data
    if d.objective == "lm":
        return encode_documents(items, tokenizer, d.block_size)
    if d.objective == "preference":
        from chattune.data.preference import encode_pairs

        return encode_pairs(items, tokenizer, d.max_len)  # type: ignore[return-value]
    if grounder is not None:
        return encode_grounded(items, tokenizer, d.max_len, grounder, grounded_options(cfg))
    return encode_conversations(items, tokenizer, d.max_len, d.mask)


def grounded_options(cfg: RunConfig) -> GroundedOptions:
    """The ``data.kb_*`` settings, seeded by ``train.seed``."""
    d = cfg.data
    return GroundedOptions(
        distractors=d.kb_distractors,
        no_gold_share=d.kb_no_gold_share,
        cite=d.kb_cite,
        shuffle=d.kb_shuffle,
        counterfactual=d.kb_counterfactual,
        seed=cfg.train.seed,
        last_only=d.mask is MaskPolicy.LAST,
    )


def check_grounding(cfg: RunConfig, grounder: Grounder | None, items: list[Any]) -> None:
    """A ``data.kb`` run needs the grounder ``chattune train`` builds (the knowledge base and
    the chat engine sit above training), and data whose sources that knowledge base has."""
    if cfg.data.kb is None:
        return
    if grounder is None:
        raise ConfigError(
            "data.kb (--kb): grounded fine-tuning needs the chat engine's grounding step, "
            "which `chattune train --kb DIR` hands in (build_run(cfg, hooks, grounder))"
        )
    require_known_gold(items, grounder)


def build_data(cfg: RunConfig, tokenizer: Any, grounder: Grounder | None = None) -> Data:
    """Read, validate and encode the train and validation sets; say what was cut."""
    items, val_items = read_items(cfg)
    check_grounding(cfg, grounder, [*items, *val_items])
    train, train_report = encode(cfg, items, tokenizer, grounder)
    require_trainable(train, train_report, ", ".join(cfg.data.train), cfg.data.max_len)
    val, val_report = encode(cfg, val_items, tokenizer, grounder) if val_items else ([], None)
    if train_report.truncated or train_report.dropped:
        log.warning(
            "max_len %d: %d conversations lost their oldest turns, %d did not fit at all",
            cfg.data.max_len,
            train_report.truncated,
            train_report.dropped,
        )
    return Data(train, val, train_report, val_report)


#: ``train.lr`` when unset, by ``adapter.method``. LoRA's 1e-3 (r 16, alpha 32) is the demo's,
#: measured against 2e-4 with bench/defaults.py (docs/training.md, Defaults); the others are
#: the usual starting points for their method (IA3 trains rescaling vectors, which need a
#: larger step; full fine-tuning a much smaller one).
DEFAULT_LR = {"lora": 1e-3, "adalora": 1e-3, "ia3": 3e-3, "freeze": 1e-4, "full": 2e-5}
#: ``train.lr`` when unset for DPO (``data.objective=preference``): bench/dpo_vs_trl.py's.
PREFERENCE_LR = 1e-4
#: Unset ``train.epochs``: enough passes for this many optimizer steps, at most MAX_EPOCHS.
TARGET_STEPS, MAX_EPOCHS = 100, 3
#: Unset ``train.eval_every`` with validation data: this many evaluations in the run.
DEFAULT_EVALS = 8


def resolve_defaults(cfg: RunConfig, n_examples: int, world: int, has_val: bool) -> RunConfig:
    """``cfg`` with the settings the user left unset chosen from the method and data size.

    - ``train.lr``: :data:`DEFAULT_LR` for the method.
    - ``train.epochs`` (without ``max_steps``): small sets need more passes than one for an
      adapter to learn anything: enough for :data:`TARGET_STEPS` optimizer steps, between 1
      and :data:`MAX_EPOCHS` (300 conversations in batches of 8: 3 epochs, 114 steps; 10,000:
      1 epoch).
    - ``train.eval_every``: with validation data, :data:`DEFAULT_EVALS` evaluations, so that
      the weights of the best one are the result (a longer run cannot end overfitted);
      without it, none but at the end.

    The run's ``config.yaml`` holds the chosen values, so it reruns as it ran.
    """
    t = cfg.train
    chosen: dict[str, Any] = {}
    if t.lr is None:
        preference = cfg.data.objective == "preference"
        chosen["lr"] = PREFERENCE_LR if preference else DEFAULT_LR.get(cfg.adapter.method, 2e-4)
    if t.epochs is None and not t.max_steps:
        per_epoch = count_steps(cfg, n_examples, world, epochs=1.0)
        chosen["epochs"] = float(min(MAX_EPOCHS, max(1, math.ceil(TARGET_STEPS / per_epoch))))
    if t.eval_every is None:
        steps = count_steps(cfg, n_examples, world, chosen.get("epochs", t.epochs))
        chosen["eval_every"] = max(1, steps // DEFAULT_EVALS) if has_val else 0
    if chosen:
        log.info("unset, chosen: %s", ", ".join(f"train.{k}={v:g}" for k, v in chosen.items()))
    return cfg.model_copy(update={"train": t.model_copy(update=chosen)})


def count_steps(cfg: RunConfig, n_examples: int, world: int, epochs: float | None = None) -> int:
    """Optimizer steps of the whole run: ``train.max_steps``, or ``epochs`` worth of them."""
    batches = math.ceil(n_examples / cfg.train.batch_size) // world
    if batches == 0:
        raise ConfigError(f"{n_examples} examples are too few for {world} processes")
    if cfg.train.max_steps:
        return cfg.train.max_steps
    per_epoch = math.ceil(batches / cfg.train.grad_accum)
    return max(1, math.ceil((epochs or cfg.train.epochs or 1.0) * per_epoch))


def native_bf16() -> bool:
    """Whether this machine computes bf16 natively (not emulated).

    On CUDA: bf16 tensor cores (Ampere and newer), ``including_emulation=False``. On CPUs:
    the AVX512_BF16 or AMX instructions. oneDNN's own check
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is also true on AVX-512 CPUs without
    either, where it emulates bf16 about 10x slower than float32.
    """
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if torch.backends.mps.is_available():
        return False
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(precision: str) -> str:
    """Accelerate's mixed-precision mode: bf16 autocast over fp32 weights, or none.

    ``auto`` uses bf16 only where the hardware computes it natively (:func:`native_bf16`).
    On CPUs without it (AVX2-only, like some of this project's 2-core CI machines) a LoRA
    step on SmolLM2-135M ran about 10x slower in bf16 than in float32 (docs/training.md).

    Example:
        >>> resolve_precision("fp32")
        'no'
    """
    if precision == "bf16":
        return "bf16"
    if precision == "fp32":
        return "no"
    return "bf16" if native_bf16() else "no"


def frozen_weights_in_bf16(model: Any) -> int:
    """Store the frozen floating-point weights of ``model`` in bf16; return how many.

    For adapter training in bf16: autocast computes the matmuls in bf16 anyway, so fp32
    copies of weights that never change only double their memory, and autocast casts a
    frozen weight again at every use (its cast cache keeps only trained leaves). The trained
    parameters stay float32 (the optimizer's master copies), as do buffers (rotary
    frequencies). The residual stream, which starts at the embedding, becomes bf16 too, as
    in a model loaded in bf16.
    """
    frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
    with torch.no_grad():
        for p in frozen:
            p.data = p.data.to(torch.bfloat16)
    return len(frozen)


def without_accelerator() -> bool:
    """No GPU: train on the CPU; under `accelerate launch`/torchrun that is DDP over gloo.
    Accelerate's process state must be made with this same ``cpu`` flag everywhere (it is
    one shared state: made without it first, it reports a single process)."""
    return not (torch.cuda.is_available() or torch.backends.mps.is_available())


def build_accelerator(cfg: RunConfig) -> Any:
    """One process or one rank of many, on the GPU if there is one; seeded."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = Accelerator(
        cpu=without_accelerator(), mixed_precision=resolve_precision(cfg.train.precision)
    )
    set_seed(cfg.train.seed)
    return accelerator


def build_model(cfg: RunConfig, model: Any, total_steps: int) -> Prepared:
    """Apply the method (LoRA, full, ...) to the base model, or load the adapter to
    continue (``model.adapter``); gradient checkpointing if asked."""
    if cfg.model.adapter:
        prepared = resume_adapter(model, cfg.model.adapter)
    else:
        prepared = prepare(model, cfg.adapter, total_steps)
    if cfg.train.gradient_checkpointing:
        unwrap_peft(prepared.model).gradient_checkpointing_enable()
        if prepared.is_peft:
            unwrap_peft(prepared.model).enable_input_require_grads()
    if cfg.train.compile:
        compile_layers(unwrap_peft(prepared.model))
    return prepared


def compile_layers(lm: Any) -> int:
    """``torch.compile`` each decoder layer in place (``train.compile``); return how many.

    Layer by layer, not the whole model: a layer is one graph inductor fuses well (norms,
    rotary, activation, the adapters' scale-and-add), while the loss's data-dependent
    indexing would break a whole-model graph. ``dynamic=True`` compiles once for every
    sequence length instead of once per batch width. On a CPU inductor builds C++, so a
    missing compiler is reported before the model is touched.
    """
    if not torch.cuda.is_available() and not any(map(shutil.which, ("g++", "c++", "clang++"))):
        raise ConfigError(
            "train.compile: torch.compile on the CPU needs a C++ compiler (g++ or clang++) "
            "on PATH; install one or set train.compile=false"
        )
    decoder = lm.get_decoder()
    layers = getattr(decoder, "layers", None) or getattr(decoder, "h", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(
            f"train.compile: {type(lm).__name__} has no list of decoder layers chattune "
            "knows (decoder.layers or decoder.h); set train.compile=false"
        )
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def check_before_loading(cfg: RunConfig) -> None:
    """What fails without the model, failed before loading it (seconds to minutes): a
    missing chat template file, a tracker that is not installed."""
    from chattune.data.render import read_chat_template
    from chattune.train.tracking import require_trackers

    if cfg.data.chat_template:
        read_chat_template(cfg.data.chat_template)
    require_trackers(cfg.train.report_to)


def build_run(
    cfg: RunConfig, hooks: TrainHooks | None = None, grounder: Grounder | None = None
) -> Run:
    """Everything the loop needs: model with its method applied, data, optimizer, schedule.

    ``grounder`` (for ``data.kb``) retrieves passages and renders the engine's prompt head;
    ``chattune train --kb`` builds it, as the knowledge base sits above training."""
    hooks = hooks or TrainHooks()
    if cfg.train.eval_generate and hooks.on_evaluate is None:
        log.warning(
            "train.eval_generate=%d is ignored: generation metrics come from an on_evaluate "
            "hook (chattune train builds one)",
            cfg.train.eval_generate,
        )
    check_before_loading(cfg)
    accelerator = build_accelerator(cfg)
    with accelerator.main_process_first():  # rank 0 converts/caches the GGUF once
        model, tokenizer = load_base(
            cfg.model.base, cfg.model.attn_implementation, cfg.model.trust_remote_code
        )
    apply_chat_template_override(tokenizer, cfg.data.chat_template)  # saved with the output
    data = build_data(cfg, tokenizer, grounder)
    cfg = resolve_defaults(cfg, len(data.train), accelerator.num_processes, bool(data.val))
    total = count_steps(cfg, len(data.train), accelerator.num_processes)
    prepared = build_model(cfg, model, total)
    if accelerator.mixed_precision == "bf16" and prepared.is_peft:
        frozen_weights_in_bf16(prepared.model)
    optimizer = build_optimizer(prepared.model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total)
    # The scheduler is stepped by hand once per optimizer step: Accelerate's wrapper would
    # step it once per process, which changes the schedule with the number of processes.
    loss_module, optimizer = accelerator.prepare(LabelledLoss(prepared.model), optimizer)
    anchor = build_anchor(cfg, prepared, loss_module, tokenizer, data, accelerator.device)
    run = Run(
        cfg=cfg,
        accelerator=accelerator,
        prepared=prepared,
        loss_module=loss_module,
        optimizer=optimizer,
        scheduler=scheduler,
        tokenizer=tokenizer,
        data=data,
        total_steps=total,
        output=Path(cfg.train.output),
        hooks=hooks,
        anchor=anchor,
    )
    if cfg.data.objective == "preference":  # the starting model is DPO's reference
        from chattune.train.preference import fill_reference

        fill_reference(run, [*data.train, *data.val])
    return run


def build_anchor(
    cfg: RunConfig, prepared: Prepared, loss_module: Any, tokenizer: Any, data: Data, device: Any
) -> Any:
    """The ``train.anchor`` penalty at the starting weights (train/anchor.py), or None.

    ewc's Fisher comes from ``train.anchor_data`` (old conversations) or, without it, from
    the training set, in at most ``train.anchor_batches`` batches.
    """
    from chattune.data.batching import collate
    from chattune.train import anchor

    t = cfg.train
    if t.anchor == "none" or t.anchor_weight == 0:
        return None
    if t.anchor == "l2sp":
        return anchor.l2sp(prepared.model, t.anchor_weight)
    if t.anchor_data:
        items = read_splits(t.anchor_data, [], cfg.data.format, cfg.data.objective)[0]
        examples = encode(cfg, items, tokenizer)[0]
    else:
        examples = data.train
    if not examples:
        raise ConfigError("train.anchor_data: no example fits data.max_len to estimate ewc from")
    bs = t.batch_size
    chunks = [examples[i : i + bs] for i in range(0, len(examples), bs)][: t.anchor_batches]
    batches = (collate(c, tokenizer.pad_token_id) for c in chunks)
    return anchor.ewc(prepared.model, loss_module, batches, device, t.anchor_weight)
