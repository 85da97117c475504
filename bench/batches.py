"""How even are the training batches? chattune's length groups against Hugging Face's sampler.

A padded batch costs ``size x its longest example`` tokens of compute. Grouping similar
lengths saves padding; grouping too tightly makes every seed and epoch train the same
batches. Per strategy, over ``--seeds`` x ``--epochs`` of the support conversations
(SmolLM2's tokenizer, ``max_len`` 512): the heaviest / lightest batch cost ratio (full
batches only), the padded share of all tokens, and how many distinct batches (as index
sets) the runs trained, out of how many batches in all.

  chattune          length_grouped_batches as training uses it (data-sized windows)
  chattune-whole    the same with one window over the whole set (before the windows were
                    sized to the data: sorted once, so the same batches every seed)
  hf                transformers' LengthGroupedSampler (TRL's group_by_length), cut in 8s
  random            a plain shuffle

    python bench/batches.py [--batch-size 8] [--seeds 5] [--epochs 2]

No timing: the figures depend on the data and the tokenizer only, not the CPU.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "support" / "train.jsonl"

Batches = Callable[[list[int], int, int, int], list[list[int]]]


def chattune_batches(lengths: list[int], size: int, seed: int, epoch: int) -> list[list[int]]:
    from chattune.data.batching import length_grouped_batches

    return length_grouped_batches(lengths, size, seed, epoch)


def whole_set_batches(lengths: list[int], size: int, seed: int, epoch: int) -> list[list[int]]:
    from chattune.data.batching import length_grouped_batches

    return length_grouped_batches(lengths, size, seed, epoch, group=-(-len(lengths) // size))


def hf_batches(lengths: list[int], size: int, seed: int, epoch: int) -> list[list[int]]:
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = list(LengthGroupedSampler(size, lengths=lengths, generator=generator))
    return [order[i : i + size] for i in range(0, len(order), size)]


def random_batches(lengths: list[int], size: int, seed: int, epoch: int) -> list[list[int]]:
    order = list(range(len(lengths)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


STRATEGIES: dict[str, Batches] = {
    "chattune": chattune_batches,
    "chattune-whole": whole_set_batches,
    "hf": hf_batches,
    "random": random_batches,
}


def measure(lengths: list[int], batches: list[list[int]], size: int) -> tuple[float, float]:
    """(heaviest / lightest full batch's padded cost, padded share of the padded tokens)."""
    costs = [len(b) * max(lengths[i] for i in b) for b in batches if len(b) == size]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return max(costs) / min(costs), 1 - sum(lengths) / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from chattune.data.dataset import encode_conversations
    from chattune.data.readers import read_conversations
    from chattune.data.render import MaskPolicy
    from chattune.model.loading import base_folder, load_tokenizer, quiet_transformers

    quiet_transformers()
    tokenizer = load_tokenizer(base_folder("smollm2-135m-instruct"))
    examples, _ = encode_conversations(
        read_conversations(DATA), tokenizer, 512, MaskPolicy.ASSISTANT
    )
    lengths = [len(e.input_ids) for e in examples]
    size = args.batch_size
    print(f"{DATA.relative_to(ROOT)}: {len(lengths)} conversations, batch {size}, "
          f"{args.seeds} seeds x {args.epochs} epochs\n")  # fmt: skip
    print("| strategy | heaviest/lightest batch | padded share | distinct batches |")
    print("|---|---:|---:|---:|")
    for name, strategy in STRATEGIES.items():
        ratios, shares, seen, total = [], [], set(), 0
        for seed in range(args.seeds):
            for epoch in range(args.epochs):
                batches = strategy(lengths, size, seed, epoch)
                ratio, share = measure(lengths, batches, size)
                ratios.append(ratio)
                shares.append(share)
                seen |= {frozenset(b) for b in batches}
                total += len(batches)
        print(f"| {name} | {statistics.mean(ratios):.3f} | {statistics.mean(shares):.2%} "
              f"| {len(seen)} of {total} |")  # fmt: skip


if __name__ == "__main__":
    main()
