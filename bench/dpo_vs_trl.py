"""chattune's DPO (its own loop) vs TRL's DPOTrainer: same pairs, model, recipe, in one run.

The pairs are what a learning round would get from corrections: for each turn of domain B
(examples/support/updates/b-*.jsonl: services the bot tuned on A has never seen), the
reference reply is *chosen* and the tuned bot's own greedy reply *rejected* (turns where it
already answers right are skipped). Both contenders continue the same LoRA adapter (the
bot tuned on A) with the same recipe (AdamW, constant learning rate, no warmup, batch 8,
beta 0.1, float32), with the adapter's starting weights as the reference model, each in its
own process (peak RSS is its own).

Reported per contender: training wall time and peak RSS, the first step's loss (both must
start at ln 2 = 0.693: policy == reference), and, computed afterwards by one shared
function on the held-out pairs: DPO loss, reward accuracy (share of pairs whose chosen reply
gained against the reference more than the rejected one) and the chosen replies' token loss.

    python bench/dpo_vs_trl.py [--run runs/bench/continual-A] [--epochs 2] [--only trl]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from machine import machine  # noqa: E402  (bench/machine.py)

UPDATES = ROOT / "examples" / "support" / "updates"
LR, BATCH, BETA, MAX_LEN = 1e-4, 8, 0.1, 512
CONTENDERS = ["chattune", "trl"]


def make_pairs(run: str, work: Path, limit: int) -> tuple[Path, Path]:
    """(train pairs, held-out pairs) from B's turns: the reference chosen, the tuned bot's
    greedy reply rejected; written once and reused."""
    train_out, val_out = work / "pairs-train.jsonl", work / "pairs-val.jsonl"
    if train_out.exists() and val_out.exists():
        return train_out, val_out
    from chattune.backends.transformers import TransformersBackend
    from chattune.chat.engine import ChatEngine
    from chattune.chat.profile import load_profile
    from chattune.data.jsonl import write_jsonl
    from chattune.data.readers import read_conversations
    from chattune.evaluate.examples import turn_examples
    from chattune.evaluate.generation import generate_replies
    from chattune.model.loading import load_model

    profile = load_profile(ROOT / "examples" / "support" / "bot.yaml")
    engine = ChatEngine(TransformersBackend(*load_model(run)), profile)
    for name, out, n in (("b-train", train_out, limit), ("b-val", val_out, limit // 3)):
        seen, examples = set(), []
        for e in turn_examples(read_conversations(UPDATES / f"{name}.jsonl")):
            key = json.dumps([m.as_dict() for m in e.history])
            if key not in seen:
                seen.add(key)
                examples.append(e)
        examples = examples[: 2 * n]  # some are answered right already and give no pair
        replies = generate_replies(engine, examples, profile.generation, progress=False)
        rows = [{"prompt": [m.as_dict() for m in e.history],
                 "chosen": [{"role": "assistant", "content": e.reference}],
                 "rejected": [{"role": "assistant", "content": r.text}]}
                for e, r in zip(examples, replies, strict=True)
                if r.text.strip() and r.text.strip() != e.reference.strip()][:n]  # fmt: skip
        write_jsonl(out, rows)
        print(f"{out}: {len(rows)} pairs", flush=True)
    return train_out, val_out


def run_chattune(run: str, pairs: Path, out: Path, epochs: float) -> dict[str, Any]:
    from chattune.config import build_config
    from chattune.runs import read_meta

    cfg = build_config(overrides=[
        f"model.base={read_meta(run)['base']}", f"model.adapter={run}",
        f"data.train=[{pairs}]", "data.objective=preference", f"data.max_len={MAX_LEN}",
        f"train.output={out}", f"train.lr={LR}", f"train.batch_size={BATCH}",
        f"train.epochs={epochs}", "train.scheduler=constant", "train.warmup_ratio=0",
        f"train.dpo_beta={BETA}", "train.precision=fp32", "train.progress=false",
    ])  # fmt: skip
    # Timed like TRL's trainer.train(): the reference pass and the loop, not model loading.
    import chattune.train.preference as preference
    from chattune.train.loop import fit
    from chattune.train.setup import build_run

    spent = {"reference": 0.0}
    fill = preference.fill_reference

    def timed_fill(run: Any, pairs: Any) -> None:
        start = time.perf_counter()
        fill(run, pairs)
        spent["reference"] += time.perf_counter() - start

    preference.fill_reference = timed_fill
    built = build_run(cfg)
    started = time.perf_counter()
    summary = fit(built)
    seconds = time.perf_counter() - started + spent["reference"]
    from chattune.runs import read_metrics

    first = next(r["loss"] for r in read_metrics(out) if "loss" in r)
    return {"seconds": seconds, "steps": summary["steps"], "first_loss": first}


def run_trl(run: str, pairs: Path, out: Path, epochs: float) -> dict[str, Any]:
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    from chattune.data.jsonl import read_jsonl
    from chattune.model.loading import load_base
    from chattune.runs import read_meta

    base = read_meta(run)["base"]
    model, tokenizer = load_base(base)
    model = PeftModel.from_pretrained(model, run, is_trainable=True)
    ref, _ = load_base(base)
    ref = PeftModel.from_pretrained(ref, run).merge_and_unload()  # the starting weights
    rows = [r for _, r in read_jsonl(pairs)]
    args = DPOConfig(
        output_dir=str(out), beta=BETA, learning_rate=LR, per_device_train_batch_size=BATCH,
        num_train_epochs=epochs, lr_scheduler_type="constant", warmup_steps=0,
        max_length=MAX_LEN, logging_steps=1, save_strategy="no", report_to=[], bf16=False,
        use_cpu=True, weight_decay=0.0, max_grad_norm=1.0, seed=42, disable_tqdm=True,
    )  # fmt: skip
    data = Dataset.from_list(rows)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data,
                         processing_class=tokenizer)  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model(str(out))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": seconds, "steps": trainer.state.global_step, "first_loss": losses[0]}


def shared_eval(run: str, adapter: Path, val: Path) -> dict[str, float]:
    """DPO loss, reward accuracy and the chosen replies' token loss on the held-out pairs,
    one function for every contender (reference: the starting adapter)."""
    import torch
    from peft import PeftModel

    from chattune.data.batching import collate
    from chattune.data.preference import encode_pairs, read_pairs
    from chattune.model.loading import load_base, load_model
    from chattune.model.loss import LabelledLoss
    from chattune.runs import read_meta
    from chattune.train.preference import dpo_losses

    def scores(model: Any, tokenizer: Any) -> tuple[list[Any], torch.Tensor, torch.Tensor]:
        encoded, _ = encode_pairs(read_pairs(val), tokenizer, MAX_LEN)
        loss = LabelledLoss(model).eval()
        sums, counts = [], []
        with torch.no_grad():
            for p in encoded:
                batch = collate([p.chosen, p.rejected], tokenizer.pad_token_id)
                s, n = loss(**batch, per_example=True)
                sums.append(s)
                counts.append(n)
        return encoded, torch.stack(sums), torch.stack(counts)

    ref_model, tokenizer = load_model(run)
    encoded, ref_sums, _ = scores(ref_model, tokenizer)
    del ref_model
    model, _ = load_base(read_meta(run)["base"])
    model = PeftModel.from_pretrained(model, adapter)
    _, sums, counts = scores(model, tokenizer)
    for p, (rc, rr) in zip(encoded, (-ref_sums).tolist(), strict=True):
        p.ref_chosen, p.ref_rejected = rc, rr
    policy = torch.cat([-sums[:, 0], -sums[:, 1]])
    losses, margin = dpo_losses(policy, encoded, BETA)
    chosen_loss = float(sums[:, 0].sum() / counts[:, 0].sum())
    return {"dpo_loss": float(losses.mean()), "reward_accuracy": float((margin > 0).float().mean()),
            "chosen_token_loss": chosen_loss, "pairs": len(encoded)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/bench/continual-A", help="the bot tuned on A")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--pairs", type=int, default=48, help="training pairs (at most)")
    parser.add_argument("--only", nargs="+", choices=CONTENDERS, default=CONTENDERS)
    parser.add_argument("--work", default="runs/bench/dpo")
    parser.add_argument("--_contender", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(ROOT)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from chattune.model.loading import quiet_transformers

    quiet_transformers()
    if args._contender:  # a child process: train one contender, print its numbers
        train_pairs = work / "pairs-train.jsonl"
        out = work / args._contender
        shutil.rmtree(out, ignore_errors=True)  # a fresh run each time
        fn = run_chattune if args._contender == "chattune" else run_trl
        result = fn(args.run, train_pairs, out, args.epochs)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result), flush=True)
        return
    print(f"cpu: {machine()}", flush=True)
    train_pairs, val_pairs = make_pairs(args.run, work, args.pairs)
    results = {}
    for name in args.only:
        cmd = [sys.executable, __file__, "--run", args.run, "--epochs", str(args.epochs),
               "--work", str(work), "--_contender", name]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(done.stdout[-3000:], done.stderr[-3000:])
            raise SystemExit(f"{name} failed")
        results[name] = json.loads(line[len("RESULT "):]) | shared_eval(args.run, work / name,
                                                                        val_pairs)  # fmt: skip
        print(f"{name}: {results[name]}", flush=True)
    (work / "results.json").write_text(json.dumps({"cpu": machine(), **results}, indent=2))
    print("\n| contender | steps | train s | peak RSS MB | first loss | held-out DPO loss "
          "| reward accuracy | chosen token loss |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['steps']} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['first_loss']:.4f} | {r['dpo_loss']:.4f} | {r['reward_accuracy']:.2f} | "
              f"{r['chosen_token_loss']:.4f} |")  # fmt: skip
    if len(results) == 2:
        a, b = results["chattune"], results["trl"]
        print(f"\ntrain time trl/chattune: {b['seconds'] / a['seconds']:.2f}x")


if __name__ == "__main__":
    main()
