"""The PyTorch backend: ``model.generate`` from Hugging Face transformers.

Streaming runs ``generate`` in a worker thread with a ``TextIteratorStreamer``; batches are
left-padded so every row continues at the end. Sampling uses a per-request
``torch.Generator`` (:class:`~chattune.model.generation.SeededSampler`), never the global
RNG, and generation stops at every end-of-turn id the model declares.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any

from chattune.data.render import render, tokenize
from chattune.data.types import Message
from chattune.errors import ChattuneError
from chattune.model.generation import Generated, GenerationOptions, decoding_kwargs

log = logging.getLogger(__name__)


class BackendTimeout(ChattuneError):
    """The backend produced no token for ``token_timeout`` seconds: generation is abandoned."""


def end_of_turn_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a reply: the generation config's EOS list, the tokenizer's EOS,
    and the token the chat template puts after an assistant turn.

    Using only ``tokenizer.eos_token_id`` would let Llama 3 (``<|eot_id|>``) or Gemma
    (``<end_of_turn>``) run on past the end of their turn.
    """
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids += _template_end_ids(tokenizer)
    return list(dict.fromkeys(int(i) for i in ids))


def _template_end_ids(tokenizer: Any) -> list[int]:
    """The first special token the template writes after an assistant reply, if any."""
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


class TransformersBackend:
    """Generate with ``model.generate``; every failure ends the stream and reaches the caller.

    Every failure in the worker (a bad option, out of memory, a broken model) ends the
    stream and is re-raised in the consumer's thread; and the consumer waits at most
    ``token_timeout`` seconds for each piece, so no failure can leave a caller waiting.
    """

    def __init__(self, model: Any, tokenizer: Any, token_timeout: float = 120.0) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.token_timeout = token_timeout
        config = getattr(model, "config", None)
        self.context_window = int(getattr(config, "max_position_embeddings", 2048))
        self.end_ids = end_of_turn_ids(model, tokenizer)

    def stream(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
    ) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.token_timeout
        )
        errors: list[BaseException] = []

        def work() -> None:
            try:  # everything, seeding included: a worker that dies must still end the stream
                self._generate([prompt_ids], options, stop, cancel, streamer)
            except BaseException as e:  # surfaced in the caller's thread below
                errors.append(e)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            yield from streamer
        except queue.Empty:
            raise BackendTimeout(
                f"no token for {self.token_timeout:g} s; generation abandoned"
            ) from None
        finally:
            cancel.set()  # a consumer that stops early frees the worker at the next token
            thread.join(self.token_timeout)
            if thread.is_alive():
                log.error("generation worker still running %gs after cancel", self.token_timeout)
        if errors:
            raise errors[0]

    def generate(
        self, prompts: list[list[int]], options: GenerationOptions, stop: list[str]
    ) -> list[Generated]:
        """Replies for ``prompts`` in one left-padded batch (rows continue at the end)."""
        out = self._generate(prompts, options, stop)
        width = max(len(p) for p in prompts)
        results = []
        for row in out[:, width:].tolist():
            end = next((i for i, t in enumerate(row) if t in self.end_ids), None)
            new = row if end is None else row[:end]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            results.append(Generated(text, end is not None, len(new)))
        return results

    def _generate(
        self,
        prompts: list[list[int]],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event | None = None,
        streamer: Any = None,
    ) -> Any:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
                return cancel is not None and cancel.is_set()

        pad = self.tokenizer.pad_token_id
        ids, mask = _left_pad(prompts, pad if pad is not None else self.end_ids[0])
        kwargs: dict[str, Any] = dict(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=options.max_new_tokens,
            repetition_penalty=options.repetition_penalty,
            pad_token_id=pad,
            eos_token_id=self.end_ids,
            stopping_criteria=StoppingCriteriaList([Cancelled()]),
            **decoding_kwargs(options),
        )
        if streamer is not None:
            kwargs["streamer"] = streamer
        if stop:
            kwargs.update(stop_strings=stop, tokenizer=self.tokenizer)
        with torch.no_grad():
            return self.model.generate(**kwargs)


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    """(ids, attention mask), each row right-aligned: generation continues every row."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask
