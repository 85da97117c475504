"""chattune vs TRL's SFTTrainer: LoRA fine-tuning speed, memory and quality, in one run.

Every contender trains the embedded SmolLM2-135M-Instruct with the same recipe: LoRA r=16,
alpha=32 on every linear layer, max length 512, effective batch 8, assistant-only loss, the
same conversations (examples/support/train.jsonl), the same learning rate and schedule, the
same number of optimizer steps. Each runs in its own process, so peak RSS is its own.

Reported per contender: trained tokens/s (real, unpadded tokens divided by the wall time of
the training loop alone), peak RSS, and the eval loss on examples/support/val.jsonl computed
afterwards by one shared function (assistant tokens only), so the numbers are comparable.

Contenders:
  chattune        chattune's defaults (train.precision=auto: bf16 where the CPU has AVX512_BF16
                  or AMX, else float32)
  chattune-fp32   chattune in float32
  chattune-bf16   chattune with bf16 autocast
  chattune-compile  chattune's defaults with train.compile=true (each decoder layer compiled
                  by torch.compile; the compile time counts in the training loop's time)
  chattune-hf-order  chattune-fp32 on batches in the order of Hugging Face's
                  LengthGroupedSampler (TRL's group_by_length): the other direction of
                  bench/trl_parity.py, which runs TRL on chattune's batches
  trl-defaults    TRL's defaults (bf16, gradient checkpointing, LoRA dropout 0.05)
  trl-tuned       TRL with every CPU knob: bf16, LoRA dropout 0, no gradient checkpointing,
                  length-grouped batches
  trl-tuned-fp32  trl-tuned in float32: on CPUs without native bf16 (AVX2-only, like the
                  2-core machines this project is built on) bf16 is emulated and slow, so this
                  is TRL's best configuration there
  trl-tuned-compile  trl-tuned with TrainingArguments.torch_compile (the whole model compiled)

With ``--seeds 42 1 2 3 4`` every contender runs once per seed (the seed of the LoRA
initialisation and of the batch order); the table shows mean ± sd and a Welch t-test of
each contender's eval loss against the first chattune contender's.

    python bench/train_vs_trl.py [--steps 6] [--only chattune trl-tuned-fp32] [--seeds 42 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is local
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "examples" / "support" / "train.jsonl"
VAL = ROOT / "examples" / "support" / "val.jsonl"
CONTENDERS = [
    "chattune",
    "chattune-fp32",
    "chattune-bf16",
    "chattune-compile",
    "chattune-hf-order",
    "trl-defaults",
    "trl-tuned",
    "trl-tuned-fp32",
    "trl-tuned-compile",
]
LR, R, ALPHA, MAX_LEN, BATCH = 2e-4, 16, 32, 512, 8

# SmolLM2's own ChatML template with TRL's {% generation %} markers around what the assistant
# says (reply + end-of-turn), which TRL needs for assistant-only loss. It renders the same text.
MARKED_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}"
    "{% endgeneration %}{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def shared_eval_loss(model, tokenizer) -> float:
    """Token-mean loss on the validation replies, the same function for every contender."""
    import torch

    from chattune.data.batching import collate
    from chattune.data.dataset import encode_conversations
    from chattune.data.readers import read_conversations
    from chattune.data.render import MaskPolicy
    from chattune.model.loss import LabelledLoss

    examples, _ = encode_conversations(
        read_conversations(VAL), tokenizer, MAX_LEN, MaskPolicy.ASSISTANT
    )
    module = LabelledLoss(model).eval()
    total = n = 0.0
    with torch.no_grad():
        for i in range(0, len(examples), BATCH):
            loss, count = module(**collate(examples[i : i + BATCH], tokenizer.pad_token_id))
            total, n = total + loss.item(), n + count.item()
    return total / n


def run_chattune(steps: int, seed: int, *extra: str) -> dict:
    """chattune's defaults for this recipe; ``extra`` overrides (``key=value``) on top."""
    from chattune.config import build_config
    from chattune.train.loop import fit
    from chattune.train.setup import build_run

    out = Path(tempfile.mkdtemp(prefix="bench-chattune-"))
    cfg = build_config(
        flags={"data.train": [str(TRAIN)], "train.output": str(out / "run")},
        overrides=[
            f"train.max_steps={steps}",
            f"train.batch_size={BATCH}",
            f"train.lr={LR}",
            f"adapter.r={R}",
            f"adapter.alpha={ALPHA}",
            f"data.max_len={MAX_LEN}",
            "train.warmup_ratio=0",
            "train.progress=false",
            f"train.seed={seed}",
            *extra,
        ],
    )
    run = build_run(cfg)
    summary = fit(run)
    run.model.float()  # bf16 training stores the frozen weights in bf16; evaluate in fp32
    return {
        "tokens_per_s": summary["tokens_per_s"],
        "eval_loss": shared_eval_loss(run.model, run.tokenizer),
    }


def run_trl(
    steps: int,
    seed: int,
    bf16: bool,
    dropout: float,
    checkpointing: bool,
    grouped: bool,
    compile: bool = False,
) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from chattune.data.readers import read_conversations
    from chattune.model.loading import load_base

    model, tokenizer = load_base("smollm2-135m-instruct")
    tokenizer.chat_template = MARKED_TEMPLATE
    rows = [{"messages": c.as_dicts()} for c in read_conversations(TRAIN)]
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_length=MAX_LEN,
        assistant_only_loss=True,
        bf16=bf16,
        gradient_checkpointing=checkpointing,
        train_sampling_strategy="group_by_length" if grouped else "random",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=seed,
        dataloader_num_workers=0,
        torch_compile=compile,
    )
    lora = LoraConfig(
        r=R,
        lora_alpha=ALPHA,
        lora_dropout=dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
    )
    counted = {"tokens": 0}
    collate = trainer.data_collator

    def counting_collator(examples):  # real tokens, before padding
        counted["tokens"] += sum(len(e["input_ids"]) for e in examples)
        return collate(examples)

    trainer.data_collator = counting_collator
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    trainer.model.to("cpu").float()
    return {
        "tokens_per_s": round(counted["tokens"] / elapsed, 1),
        "eval_loss": shared_eval_loss(trainer.model, tokenizer),
    }


def child(name: str, steps: int, seed: int) -> None:
    """Run one contender in this process and print its JSON result."""
    if name == "chattune":
        result = run_chattune(steps, seed)
    elif name == "chattune-hf-order":
        use_hf_batch_order()
        result = run_chattune(steps, seed, "train.precision=fp32")
    elif name == "chattune-compile":
        result = run_chattune(steps, seed, "train.compile=true")
    elif name.startswith("chattune-"):
        result = run_chattune(steps, seed, f"train.precision={name.removeprefix('chattune-')}")
    elif name == "trl-defaults":
        result = run_trl(steps, seed, bf16=True, dropout=0.05, checkpointing=True, grouped=False)
    elif name == "trl-tuned":
        result = run_trl(steps, seed, bf16=True, dropout=0.0, checkpointing=False, grouped=True)
    elif name == "trl-tuned-compile":
        tuned = dict(dropout=0.0, checkpointing=False, grouped=True)
        result = run_trl(steps, seed, bf16=True, compile=True, **tuned)
    else:
        result = run_trl(steps, seed, bf16=False, dropout=0.0, checkpointing=False, grouped=True)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print("RESULT " + json.dumps(result), flush=True)


def use_hf_batch_order() -> None:
    """Make chattune's loop take its batches in transformers' LengthGroupedSampler order:
    megabatches of similar lengths one after the other, longest batch first, each sorted
    longest to shortest (chattune shuffles the batches instead)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from chattune.train import loop

    def hf_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = get_length_grouped_indices(lengths, batch_size, generator=generator)
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    loop.length_grouped_batches = hf_batches


def cpu_flags() -> str:
    """The bf16-relevant instruction sets of this CPU, printed with every figure."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    return " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--only", nargs="*", choices=CONTENDERS, default=CONTENDERS)
    parser.add_argument("--seeds", nargs="*", type=int, default=[42])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps, args.seeds[0])

    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores", flush=True)
    results: dict[str, list[dict]] = {name: [] for name in args.only}
    for seed in args.seeds:  # seeds outermost: a stopped run still has every contender
        for name in args.only:
            print(f"running {name}, seed {seed} ({args.steps} steps of {BATCH}) ...", flush=True)
            cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps)]
            proc = subprocess.run([*cmd, "--seeds", str(seed)], capture_output=True, text=True)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"  {name} failed:\n{proc.stderr[-2000:]}")
                continue
            results[name].append(json.loads(line.removeprefix("RESULT ")) | {"seed": seed})
            print(f"  {results[name][-1]}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
    print_table({k: v for k, v in results.items() if v})


def mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def print_table(results: dict[str, list[dict]]) -> None:
    """Mean ± sd per contender; speed and RSS ratios and the eval-loss difference (Welch's
    t-test, with two or more seeds) against the first chattune contender."""
    from scipy.stats import ttest_ind

    base_name = next((n for n in results if n.startswith("chattune")), None)
    base = results.get(base_name) if base_name else None
    print(f"\nagainst {base_name}; CPU flags: {cpu_flags()}")
    print(
        f"{'contender':<16}{'seeds':>6}{'tokens/s':>16}{'peak RSS GB':>13}{'eval loss':>18}"
        f"{'speedup':>9}{'RSS':>7}{'loss diff':>11}{'Welch p':>9}"
    )
    for name, runs in results.items():
        tok, rss, loss = (
            mean_sd([r[k] for r in runs]) for k in ("tokens_per_s", "peak_rss_gb", "eval_loss")
        )
        speedup = ratio = diff = p = ""
        if base and name != base_name:
            base_tok, base_rss, base_loss = (
                mean_sd([r[k] for r in base])[0]
                for k in ("tokens_per_s", "peak_rss_gb", "eval_loss")
            )
            speedup, ratio = f"{base_tok / tok[0]:.2f}x", f"{base_rss / rss[0]:.2f}x"
            diff = f"{100 * (base_loss - loss[0]) / loss[0]:+.2f}%"
            if len(runs) > 1 and len(base) > 1:
                a, b = [r["eval_loss"] for r in base], [r["eval_loss"] for r in runs]
                p = f"{ttest_ind(a, b, equal_var=False).pvalue:.3f}"
        print(
            f"{name:<16}{len(runs):>6}{tok[0]:>9.1f} ±{tok[1]:>5.1f}{rss[0]:>13.2f}"
            f"{loss[0]:>10.4f} ±{loss[1]:.4f}{speedup:>9}{ratio:>7}{diff:>11}{p:>9}"
        )


if __name__ == "__main__":
    main()
