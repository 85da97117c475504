"""How replies are sampled: the options every backend takes, and seeded sampling.

Generation itself lives in :mod:`chattune.backends` (behind the chat engine); this module
holds what the model layer knows about it, so training, backends and profiles share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.generator: Any = None  # made on the first call, on the logits' device

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.generator is None:  # a CUDA multinomial refuses a CPU generator
            self.generator = torch.Generator(scores.device).manual_seed(self.seed)
        probs = torch.softmax(scores.float(), dim=-1)  # (batch, vocab)
        # Extreme settings (a near-zero temperature) can overflow a row to inf/nan; such a
        # row is as sharp as it gets, so it takes its argmax instead of crashing multinomial.
        # torch.where, not a Python branch: no device-to-host sync on every token.
        finite = torch.isfinite(probs).all(dim=-1, keepdim=True)  # (batch, 1)
        best = torch.nan_to_num(scores.float(), nan=float("-inf")).argmax(-1)  # (batch,)
        sharp = torch.nn.functional.one_hot(best, probs.shape[-1]).to(probs.dtype)
        probs = torch.where(finite, probs, sharp)
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
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    warpers: list[Any] = [TemperatureLogitsWarper(options.temperature)]
    if options.top_k > 0:
        warpers.append(TopKLogitsWarper(options.top_k))
    if options.top_p < 1:
        warpers.append(TopPLogitsWarper(options.top_p))
    return {
        "do_sample": False,
        "logits_processor": LogitsProcessorList([*warpers, SeededSampler(options.seed)]),
    }


def drop_cut_character(text: str) -> str:
    """``text`` without the U+FFFD its end decodes to when a reply stops inside a character.

    Byte-level tokens can hold part of a character (``"我"`` is two of SmolLM2's tokens, an
    emoji often three): a reply that ``max_new_tokens`` ends after some of them decodes that
    incomplete character as U+FFFD (one, or one per byte with byte-fallback tokenizers).
    A stream holds such bytes back until the character is whole, and drops them if it never
    is; a batched reply drops them here: both end with the last whole character.

    Example:
        >>> drop_cut_character("是的，\ufffd")
        '是的，'
    """
    return text.rstrip("\ufffd")


def end_of_turn_ids(tokenizer: Any, eos: int | list[int] | None = None) -> list[int]:
    """Every id that ends a reply: ``eos`` (a generation config's EOS id or list), the
    tokenizer's EOS, and the token the chat template puts after an assistant turn.

    Using only ``tokenizer.eos_token_id`` would let Llama 3 (``<|eot_id|>``) or Gemma
    (``<end_of_turn>``) run on past the end of their turn.
    """
    ids: list[int] = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    ids = [*ids, *_template_end_ids(tokenizer)]
    return list(dict.fromkeys(int(i) for i in ids))


def _template_end_ids(tokenizer: Any) -> list[int]:
    """The first special token the template writes after an assistant reply, if any."""
    from chattune.data.render import render, tokenize
    from chattune.data.types import Message

    try:
        user = [Message("user", "hi")]
        reply = "ok"
        prompt = tokenize(tokenizer, render(tokenizer, user, add_generation_prompt=True))
        full = tokenize(tokenizer, render(tokenizer, [*user, Message("assistant", reply)]))
    except Exception:  # a template that cannot render this probe: rely on EOS alone
        return []
    if full[: len(prompt)] != prompt:
        return []
    special = set(getattr(tokenizer, "all_special_ids", []))
    end = next((i for i in full[len(prompt) :] if i in special), None)
    return [end] if end is not None else []
