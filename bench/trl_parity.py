"""Where chattune's and TRL's LoRA training part: the same start, the same batches, step by step.

The 5-seed comparison (bench/train_vs_trl.py --seeds) measures the gap in eval loss; this
script looks for its cause by removing every difference but the two training loops: TRL's
LoRA weights are overwritten with chattune's initialisation (sha256 of both printed), TRL's
sampler yields chattune's batches in chattune's order (144 of the 150 conversations: whole
batches only, so TRL's loader cuts them where chattune does), both in float32 with the same
recipe as bench/train_vs_trl.py. Per step it prints both losses and learning rates, then the
largest difference between the final LoRA weights and both eval losses (the shared function).
Identical runs mean the gap comes from what this removes (initialisation, batch order);
a difference at step 1 means the loss or its normalisation differ; later ones, the update.

    python bench/trl_parity.py [--steps 8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine
from train_vs_trl import ALPHA, BATCH, LR, MARKED_TEMPLATE, MAX_LEN, TRAIN, R, shared_eval_loss


def lora_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def digest(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode() + state[name].numpy().tobytes())
    return h.hexdigest()[:16]


def chattune_run(steps: int, subset: Path, seed: int):
    from chattune.config import build_config
    from chattune.train.loop import epoch_batches, fit
    from chattune.train.setup import build_run

    out = Path(tempfile.mkdtemp(prefix="parity-chattune-"))
    cfg = build_config(
        flags={"data.train": [str(subset)], "train.output": str(out / "run")},
        overrides=[f"train.max_steps={steps}", f"train.batch_size={BATCH}", f"train.lr={LR}",
                   f"adapter.r={R}", f"adapter.alpha={ALPHA}", f"data.max_len={MAX_LEN}",
                   "train.warmup_ratio=0", "train.progress=false", "train.precision=fp32",
                   f"train.seed={seed}", "train.log_every=1"],
    )  # fmt: skip
    run = build_run(cfg)
    init = lora_state(run.model)
    order = [i for b in epoch_batches(run, 0) for i in b]
    fit(run)
    records = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["loss"], r["lr"]) for r in records if "loss" in r]
    return run, init, order, losses


def trl_run(steps: int, subset: Path, init: dict, order: list[int], seed: int):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from chattune.data.readers import read_conversations
    from chattune.model.loading import load_base

    class Ordered(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return order  # a list is a sampler: chattune's batches, back to back

    seen: list[tuple[float, float | None]] = []

    class Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                seen.append((logs["loss"], logs.get("learning_rate")))

    model, tokenizer = load_base("smollm2-135m-instruct")
    tokenizer.chat_template = MARKED_TEMPLATE
    rows = [{"messages": c.as_dicts()} for c in read_conversations(subset)]
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="parity-trl-"), max_steps=steps,
        per_device_train_batch_size=BATCH, learning_rate=LR, lr_scheduler_type="cosine",
        warmup_steps=0, max_length=MAX_LEN, assistant_only_loss=True, bf16=False,
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, seed=seed,
        dataloader_num_workers=0,
    )  # fmt: skip
    lora = LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")  # fmt: skip
    data = Dataset.from_list(rows)
    trainer = Ordered(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                      peft_config=lora, callbacks=[Losses()])  # fmt: skip
    compare_masks(trainer.train_dataset, subset)
    params = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for name, value in init.items():
            params[name].copy_(value)
    start = lora_state(trainer.model)
    trainer.train()
    return trainer, start, seen


def compare_masks(trl_data, subset: Path) -> None:
    """Print how many conversations TRL and chattune tokenize to the same ids with the same
    labelled positions (TRL's assistant mask from the marked template, chattune's own)."""
    from chattune.data.dataset import encode_conversations
    from chattune.data.readers import read_conversations
    from chattune.data.render import MaskPolicy
    from chattune.model.loading import load_base

    tokenizer = load_base("smollm2-135m-instruct")[1]
    ours, _ = encode_conversations(
        read_conversations(subset), tokenizer, MAX_LEN, MaskPolicy.ASSISTANT
    )
    same_ids = same_labels = 0
    for row, example in zip(trl_data, ours, strict=True):
        if row["input_ids"] == example.input_ids:
            same_ids += 1
            same_labels += [x != -100 for x in row["labels"]] == [x != -100 for x in example.labels]
    print(f"tokens identical in {same_ids}/{len(ours)} conversations, labelled positions "
          f"in {same_labels}/{len(ours)}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(machine(), flush=True)
    subset = Path(tempfile.mkdtemp(prefix="parity-")) / "train144.jsonl"
    subset.write_text("".join(TRAIN.read_text().splitlines(keepends=True)[:144]))
    run, init, order, ours = chattune_run(args.steps, subset, args.seed)
    order = order * 2  # enough for more steps than one epoch
    trainer, start, theirs = trl_run(args.steps, subset, init, order, args.seed)
    print(f"LoRA init sha256: chattune {digest(init)}  TRL (after copy) {digest(start)}")
    print(f"{'step':>4}{'chattune loss':>15}{'TRL loss':>10}{'chattune lr':>13}{'TRL lr':>10}")
    for k, ((a, lr_a), (b, lr_b)) in enumerate(zip(ours, theirs, strict=False), 1):
        print(f"{k:>4}{a:>15.5f}{b:>10.5f}{lr_a:>13.3g}{lr_b or 0:>10.3g}")
    mine, other = lora_state(run.model), lora_state(trainer.model)
    worst = max((mine[n] - other[n]).abs().max().item() for n in mine)
    print(f"largest |difference| of the final LoRA weights: {worst:.3g}")
    print(f"eval loss: chattune {shared_eval_loss(run.model, run.tokenizer):.5f}  "
          f"TRL {shared_eval_loss(trainer.model.float(), run.tokenizer):.5f}")  # fmt: skip


if __name__ == "__main__":
    main()
