"""Where one chattune training step spends its time: a torch.profiler table, kernel by kernel.

Builds the run bench/train_vs_trl.py builds (SmolLM2-135M-Instruct, LoRA r=16 on every linear
layer, batch 8, max length 512, examples/support/train.jsonl), trains ``--warmup`` steps
untimed, then ``--steps`` steps under the profiler, and prints the operators by self CPU time.
Before that it times the layer shapes' matmuls in bf16 and fp32, which tells how much of a
step the matmuls can be on this CPU. The CPU flags come first, as with every figure.

    python bench/profile_step.py [--precision bf16] [--steps 3] [--rows 25]

Run it from a worktree of another commit (``PYTHONPATH=WORKTREE/src``) to profile that code.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_vs_trl import ALPHA, BATCH, MAX_LEN, TRAIN, R, cpu_flags


def matmul_rates(tokens: int = 2400) -> None:
    """TFLOP/s of the decoder's matmul shapes (SmolLM2: hidden 576, MLP 1536)."""
    import torch

    for m, k, n in [(tokens, 576, 1536), (tokens, 1536, 576), (tokens, 576, 576)]:
        rates = []
        for dtype in (torch.bfloat16, torch.float32):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            for _ in range(3):
                a @ b
            start, reps = time.perf_counter(), 20
            for _ in range(reps):
                a @ b
            rates.append(2 * m * k * n * reps / (time.perf_counter() - start) / 1e12)
        print(f"matmul [{m}, {k}] x [{k}, {n}]: bf16 {rates[0]:.2f}, fp32 {rates[1]:.2f} TFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "auto"])
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=3, help="steps under the profiler")
    parser.add_argument("--rows", type=int, default=25, help="operators to print")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from chattune.config import build_config
    from chattune.train.loop import epoch_batches, train_step
    from chattune.train.setup import build_run

    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores; {torch.get_num_threads()} threads")
    matmul_rates()
    out = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    cfg = build_config(
        flags={"data.train": [str(TRAIN)], "train.output": str(out / "run")},
        overrides=[
            f"train.max_steps={args.warmup + args.steps}",
            f"train.batch_size={BATCH}",
            f"adapter.r={R}",
            f"adapter.alpha={ALPHA}",
            f"data.max_len={MAX_LEN}",
            f"train.precision={args.precision}",
            "train.progress=false",
        ],
    )
    run = build_run(cfg)
    batches = epoch_batches(run, 0)
    run.loss_module.train()
    start = time.perf_counter()
    tokens = sum(train_step(run, [batches[i]])[1] for i in range(args.warmup))
    print(f"{args.warmup} warm-up steps: {tokens / (time.perf_counter() - start):.1f} tokens/s")
    profiled = range(args.warmup, args.warmup + args.steps)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in profiled:
            train_step(run, [batches[i]])
    widths = [max(len(run.data.train[j].input_ids) for j in batches[i]) for i in profiled]
    print(f"profiled {args.steps} steps of {BATCH} (padded widths {widths}):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
