"""Run under `accelerate launch` (or alone): one training step's gradients, written to a file.

Used by test_distributed.py. Under 2 ranks, rank r trains micro-batch r of ``BATCHES``; alone,
the process trains both as one step (two accumulated micro-batches). The gradients after
the backward passes (DDP's average, under 2 ranks) and the logged loss go to
``OUT/grads-rank{r}-world{w}.pt``.
"""

import sys
from pathlib import Path

import torch

from chattune.config import build_config
from chattune.train.loop import token_loss_backward
from chattune.train.preference import preference_step
from chattune.train.setup import build_run

#: Very unequal micro-batches: three examples against one.
BATCHES = [[0, 2, 4], [7]]


def main() -> None:
    out, *overrides = sys.argv[1:]
    run = build_run(build_config(overrides=overrides))
    world, rank = run.accelerator.num_processes, run.accelerator.process_index
    group = [BATCHES[rank]] if world == 2 else BATCHES
    step = preference_step if run.cfg.data.objective == "preference" else token_loss_backward
    loss, tokens = step(run, group)
    grads = {n: p.grad.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    record = {"loss": loss, "tokens": tokens, "grads": grads}
    torch.save(record, Path(out) / f"grads-rank{rank}-world{world}.pt")


if __name__ == "__main__":
    main()
