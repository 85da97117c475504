"""Length-grouped padded batches vs packing with a block-diagonal mask, on this CPU.

Both train the embedded SmolLM2-135M-Instruct with LoRA (r=16, all linear layers) on the
same 48 support conversations, forward + backward, and report real (unpadded) tokens/s:

  grouped   chattune's default: batches of 8 conversations of similar length, right padded
  packed    conversations concatenated into rows of up to 8 x the mean length, no padding
            inside a row, position ids restarting per conversation and a block-diagonal
            causal mask so conversations do not attend to each other

    python bench/padding_vs_packing.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from chattune.config import AdapterConfig
from chattune.data.batching import collate, length_grouped_batches
from chattune.data.dataset import encode_conversations
from chattune.data.readers import read_conversations
from chattune.data.render import MaskPolicy
from chattune.model.adapters import prepare
from chattune.model.loading import load_base
from chattune.model.loss import LabelledLoss, unwrap_peft

DATA = Path(__file__).resolve().parent.parent / "examples" / "support" / "train.jsonl"
N, BATCH = 48, 8


def packed_rows(examples, row_len: int):
    """Greedy first-fit packing into rows of at most ``row_len`` tokens."""
    rows: list[list] = []
    for e in sorted(examples, key=lambda e: -len(e.input_ids)):
        for row in rows:
            if sum(len(x.input_ids) for x in row) + len(e.input_ids) <= row_len:
                row.append(e)
                break
        else:
            rows.append([e])
    return rows


def packed_batch(row) -> dict[str, torch.Tensor]:
    ids = torch.tensor([t for e in row for t in e.input_ids])[None]
    labels = torch.tensor([t for e in row for t in e.labels])[None]
    pos = torch.cat([torch.arange(len(e.input_ids)) for e in row])[None]
    seg = torch.cat([torch.full((len(e.input_ids),), i) for i, e in enumerate(row)])
    n = ids.shape[1]
    allowed = (seg[:, None] == seg[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "mask": mask}


def packed_loss(model, batch) -> torch.Tensor:
    lm = unwrap_peft(model)
    hidden = lm.get_decoder()(
        input_ids=batch["input_ids"],
        attention_mask=batch["mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    # the last token of each conversation would predict the next conversation's first token
    boundary = batch["position_ids"][:, 1:] == 0
    keep &= ~boundary
    logits = lm.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")


def timed(fn, batches) -> float:
    start = time.perf_counter()
    for b in batches:
        fn(b).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model, tok = load_base("smollm2-135m-instruct")
    model = prepare(model, AdapterConfig(), total_steps=100).model
    examples, _ = encode_conversations(read_conversations(DATA)[:N], tok, 512, MaskPolicy.ASSISTANT)
    real = sum(len(e.input_ids) for e in examples)
    grouped = [
        collate([examples[i] for i in b], tok.pad_token_id)
        for b in length_grouped_batches([len(e.input_ids) for e in examples], BATCH, 0, 0)
    ]
    padded = sum(b["input_ids"].numel() for b in grouped)
    rows = packed_rows(examples, BATCH * real // len(examples))
    packed = [packed_batch(r) for r in rows]
    loss = LabelledLoss(model)
    results: dict[str, list[float]] = {"grouped": [], "packed": []}
    for _ in range(args.rounds):
        results["grouped"].append(timed(lambda b: loss(**b)[0], grouped))
        results["packed"].append(timed(lambda b: packed_loss(model, b), packed))
    g, p = min(results["grouped"]), min(results["packed"])
    print(f"{len(examples)} conversations, {real} real tokens")
    print(
        f"grouped: {len(grouped)} batches, {padded} positions ({1 - real / padded:.1%} padding),"
        f" {real / g:.0f} tokens/s"
    )
    print(f"packed:  {len(packed)} rows, {real} positions (0% padding), {real / p:.0f} tokens/s")
    print(f"grouped / packed speed: {p / g:.2f}x")


if __name__ == "__main__":
    main()
