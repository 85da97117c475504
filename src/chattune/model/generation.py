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
    seed: int = Field(0, ge=0, le=2**63 - 1)


@dataclass
class Generated:
    text: str
    stopped: bool  # ended with the end-of-turn token within max_new_tokens
    n_tokens: int


class SeededSampler:
    """Draws the next token with a per-request ``torch.Generator``, as a logits processor.

    ``model.generate`` samples with the *global* RNG, so seeding it (``torch.manual_seed``)
    makes concurrent requests, and a generation in the middle of training, disturb each
    other. Instead generation runs greedy and this last processor makes the sampled token
    the only finite score, so greedy picks it: the same sampling, with the caller's RNG.
    """

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = torch.softmax(scores.float(), dim=-1)  # (batch, vocab)
        chosen = torch.multinomial(probs, 1, generator=self.generator)  # (batch, 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen, 0.0)


def decoding_kwargs(options: GenerationOptions) -> dict[str, Any]:
    """``generate()`` arguments for ``options``: greedy, or sampling seeded per request.

    Example:
        >>> decoding_kwargs(GenerationOptions())["do_sample"]
        False
    """
    if not options.do_sample:
        return {"do_sample": False}
    import torch
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    generator = torch.Generator().manual_seed(options.seed)
    warpers: list[Any] = [TemperatureLogitsWarper(options.temperature)]
    if options.top_k > 0:
        warpers.append(TopKLogitsWarper(options.top_k))
    if options.top_p < 1:
        warpers.append(TopPLogitsWarper(options.top_p))
    return {
        "do_sample": False,
        "logits_processor": LogitsProcessorList([*warpers, SeededSampler(generator)]),
    }


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
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=options.max_new_tokens,
            repetition_penalty=options.repetition_penalty,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **decoding_kwargs(options),
        )
    results = []
    for row in out[:, ids.shape[1] :].tolist():
        stop = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else None
        new = row if stop is None else row[:stop]
        text = tokenizer.decode(new, skip_special_tokens=True).strip()
        results.append(Generated(text, stop is not None, len(new)))
    return results
