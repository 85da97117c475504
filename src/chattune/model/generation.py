"""Reply generation through the chat template, batched with left padding.

Shared by evaluation, the demo's side-by-side view and (next) the chat engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from chattune.data.render import generation_prompt_ids


class GenerationOptions(BaseModel):
    """How replies are sampled. Greedy unless ``do_sample``; the chat engine shares these."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(128, ge=1)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0, le=5)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(50, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int = 0


@dataclass
class Generated:
    text: str
    stopped: bool  # ended with the end-of-turn token within max_new_tokens
    n_tokens: int


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def generate_batch(
    model: Any, tokenizer: Any, histories: list[list[Any]], options: GenerationOptions
) -> list[Generated]:
    """Reply to each history; prompts are left-padded so every row continues at the end."""
    import torch

    rows = [generation_prompt_ids(tokenizer, list(h)) for h in histories]
    ids, mask = _left_pad(rows, tokenizer.pad_token_id)
    sampling = (
        {"temperature": options.temperature, "top_p": options.top_p, "top_k": options.top_k}
        if options.do_sample
        else {}
    )
    torch.manual_seed(options.seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=options.max_new_tokens,
            do_sample=options.do_sample,
            repetition_penalty=options.repetition_penalty,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
    results = []
    for row in out[:, ids.shape[1] :].tolist():
        stop = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else None
        new = row if stop is None else row[:stop]
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        results.append(Generated(text, stop is not None, len(new)))
    return results
