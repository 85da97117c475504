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

from chattune.backends.base import BackendTimeout
from chattune.model.generation import (
    Generated,
    GenerationOptions,
    decoding_kwargs,
    drop_cut_character,
    end_of_turn_ids,
)

log = logging.getLogger(__name__)


def _releases_text(cp: int) -> bool:
    """Whether a decoded text may be streamed up to a character ``cp`` ending it: an
    ideograph (TextIteratorStreamer's own rule), or kana, Hangul, CJK or full-width
    punctuation. Those scripts have no spaces to wait for, so without them an all-kana
    Japanese reply would arrive in one piece at its end. A character still missing bytes
    decodes as U+FFFD, which is none of these, so it is always held back."""
    return (
        0x3000 <= cp <= 0x30FF  # CJK punctuation, hiragana, katakana
        or 0x31F0 <= cp <= 0x31FF  # katakana extensions
        or 0xAC00 <= cp <= 0xD7AF  # Hangul syllables
        or 0x1100 <= cp <= 0x11FF  # Hangul jamo
        or 0xFF01 <= cp <= 0xFF9F  # full-width forms, half-width katakana
    )


def reply_streamer(tokenizer: Any, ends: set[int] | list[int], timeout: float) -> Any:
    """A ``TextIteratorStreamer`` for one reply (see :class:`ReplyStreamer` inside)."""
    from transformers import TextIteratorStreamer

    end_ids = set(ends)

    class ReplyStreamer(TextIteratorStreamer):
        """Drops the end-of-turn token itself: it ends the reply, but is not always a
        special token that ``skip_special_tokens`` would hide. Drops a character cut off at
        the reply's end: the streamer holds a character's first bytes back until its last
        arrive, but ``end()`` flushes what it holds, whole or not. And releases text at
        kana and CJK punctuation as it does at ideographs (:func:`_releases_text`)."""

        def put(self, value: Any) -> None:
            if not self.next_tokens_are_prompt and int(value.reshape(-1)[-1]) in end_ids:
                return
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if stream_end:  # no byte follows: an incomplete character stays incomplete
                text = drop_cut_character(text)
            super().on_finalized_text(text, stream_end)

        def _is_chinese_char(self, cp: int) -> bool:
            return super()._is_chinese_char(cp) or _releases_text(cp)

    return ReplyStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)


class TransformersBackend:
    """Generate with ``model.generate``; every failure ends the stream and reaches the caller.

    Every failure in the worker (a bad option, out of memory, a broken model) ends the
    stream and is re-raised in the consumer's thread; and the consumer waits at most
    ``token_timeout`` seconds for each piece, so no failure can leave a caller waiting.
    """

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, token_timeout: float = 120.0) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.token_timeout = token_timeout
        config = getattr(model, "config", None)
        self.context_window = int(getattr(config, "max_position_embeddings", 2048))
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.end_ids = end_of_turn_ids(tokenizer, eos)

    def stream(
        self,
        prompt_ids: list[int],
        options: GenerationOptions,
        stop: list[str],
        cancel: threading.Event,
    ) -> Iterator[str]:
        streamer = reply_streamer(self.tokenizer, self.end_ids, self.token_timeout)
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
            for piece in streamer:
                if cancel.is_set():  # nothing more once cancelled, even what was queued
                    break
                if piece:
                    yield piece
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
            text = drop_cut_character(self.tokenizer.decode(new, skip_special_tokens=True))
            results.append(Generated(text, end is not None, len(new)))
        return results

    def close(self) -> None:
        """Nothing to give back: the model is freed with the backend."""

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
