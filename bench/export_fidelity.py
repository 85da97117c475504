"""How far each GGUF export type drifts from transformers, in greedy tokens.

Exports the embedded SmolLM2-135M-Instruct (or ``--model``) once per type with ``chattune
export``, then for each prompt compares the first ``--tokens`` greedy tokens of llama.cpp on
the export with transformers' float32 ones (the reference: what chattune trains and
evaluates with), and prints where they first differ.

    .venv/bin/python bench/export_fidelity.py [--model SPEC] [--tokens 32]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

PROMPTS = [
    "Write a short story about a tent in the mountains.",
    "Is there a time limit on returns?",
    "What is the capital of France?",
    "Explain photosynthesis to a child.",
    "Hi!",
]
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_k_m"]


def cpu_flags() -> str:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    with open("/proc/cpuinfo") as f:
        flags = next((line.split()[2:] for line in f if line.startswith("flags")), [])
    return " ".join(f"{w}{'+' if w in flags else '-'}" for w in wanted)


def greedy_ids(spec: str, tokens: int, **settings: object) -> list[list[int]]:
    """Each prompt's greedy reply as token ids, through the chat engine."""
    from chattune.backends.registry import BackendSettings, open_backend
    from chattune.chat.engine import ChatEngine
    from chattune.data.types import Message
    from chattune.model.generation import GenerationOptions

    engine = ChatEngine(open_backend(spec, BackendSettings(**settings)))
    replies = engine.generate([[Message("user", p)] for p in PROMPTS],
                              GenerationOptions(max_new_tokens=tokens))  # fmt: skip
    ids = [engine.tokenizer(r.text, add_special_tokens=False)["input_ids"] for r in replies]
    engine.backend.close()
    return ids


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Where two replies first differ; None if one is a prefix of the other."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    from chattune.model.export import export_model
    from chattune.model.loading import quiet_transformers

    quiet_transformers()
    print(f"cpu: {cpu_flags()}; model {args.model}; {args.tokens} greedy tokens, "
          f"{len(PROMPTS)} prompts; reference: transformers float32")  # fmt: skip
    reference = greedy_ids(args.model, args.tokens, name="transformers")
    print(f"{'type':8} first differing token per prompt (= : same to the end)")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in TYPES:
            gguf = export_model(args.model, "gguf", Path(tmp) / f"m-{kind}.gguf", quant=kind)
            got = greedy_ids(str(gguf), args.tokens, name="llama.cpp", slots=len(PROMPTS),
                             context=1024)  # fmt: skip
            cells = [first_difference(r, g) for r, g in zip(reference, got, strict=True)]
            same = sum(c is None for c in cells)
            shown = " ".join(f"{'=' if c is None else c:>3}" for c in cells)
            print(f"{kind:8} {shown}   ({same}/{len(PROMPTS)} identical)")


if __name__ == "__main__":
    main()
