"""Preference pairs: a conversation, the reply preferred, the reply rejected (for DPO).

One pair per JSONL line, in TRL's conversational format, which
``chattune data export-feedback --pairs`` writes (a correction chosen over the reply it
corrected)::

    {"prompt": [{"role": "user", "content": "Is shipping free?"}],
     "chosen": [{"role": "assistant", "content": "Over $40."}],
     "rejected": [{"role": "assistant", "content": "Over $60."}]}

``chosen``/``rejected`` may also be plain strings, and ``prompt`` a plain string (one user
turn). The prompt is validated like a training conversation (user and assistant
alternate, it ends with the user); every bad line is reported as ``FILE:LINE``.

Encoded, a pair is two examples whose only labelled tokens are the final reply (with its
end-of-turn token): the sequence log-probability of each reply given the prompt is then
minus the summed loss :class:`~chattune.model.loss.LabelledLoss` already computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chattune.data.batching import EncodeReport
from chattune.data.files import read_text_file
from chattune.data.jsonl import parse_jsonl
from chattune.data.render import Encoded, MaskPolicy, encode_conversation
from chattune.data.types import Conversation, Message
from chattune.data.validate import to_messages, validate_messages
from chattune.errors import DataError


@dataclass(frozen=True)
class Pair:
    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = "<memory>"

    def conversations(self) -> tuple[Conversation, Conversation]:
        """(prompt + chosen, prompt + rejected)."""
        return tuple(  # type: ignore[return-value]
            Conversation([*self.prompt, Message("assistant", reply)], self.source)
            for reply in (self.chosen, self.rejected)
        )


@dataclass
class EncodedPair:
    """A pair as two encoded examples, and the reference model's log-probabilities of each
    reply (filled in by training before the first step)."""

    chosen: Encoded
    rejected: Encoded
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0

    @property
    def input_ids(self) -> list[int]:
        """The longer member's ids: what length-grouped batching sorts pairs by."""
        longer = max(self.chosen, self.rejected, key=lambda e: len(e.input_ids))
        return longer.input_ids


def is_preference_record(record: Any) -> bool:
    return isinstance(record, dict) and {"prompt", "chosen", "rejected"} <= set(record)


def _reply(value: Any, field: str) -> tuple[str | None, str | None]:
    """(the reply's text, or None and the problem) of a ``chosen``/``rejected`` value."""
    if isinstance(value, str):
        text = value
    elif (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
          and value[0].get("role") == "assistant"):  # fmt: skip
        text = value[0].get("content")
    else:
        return None, f"{field}: expected a string or one assistant turn"
    if not isinstance(text, str) or not text.strip():
        return None, f"{field}: empty reply"
    return text, None


def _pair(record: Any) -> tuple[Pair | None, list[str]]:
    if not is_preference_record(record):
        return None, ["expected an object with 'prompt', 'chosen' and 'rejected'"]
    prompt = record["prompt"]
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    messages, problems = to_messages(turns)
    chosen, bad_chosen = _reply(record["chosen"], "chosen")
    rejected, bad_rejected = _reply(record["rejected"], "rejected")
    problems += [p for p in (bad_chosen, bad_rejected) if p]
    if not problems and chosen is not None:
        problems += validate_messages([*messages, Message("assistant", chosen)])
    if not problems and chosen == rejected:
        problems.append("chosen and rejected are the same reply: nothing to prefer")
    if problems or chosen is None or rejected is None:
        return None, problems
    return Pair(tuple(messages), chosen, rejected), []


def read_pairs(path: str | Path) -> list[Pair]:
    """Every pair of a JSONL file; DataError with every bad line (``FILE:LINE: ...``)."""
    p = Path(path)
    problems: list[str] = []
    pairs = []
    for line, record in parse_jsonl(read_text_file(p), p, problems):
        pair, found = _pair(record)
        problems += [f"{p}:{line}: {x}" for x in found]
        if pair is not None:
            pairs.append(Pair(pair.prompt, pair.chosen, pair.rejected, f"{p}:{line}"))
    if problems:
        raise DataError(problems)
    if not pairs:
        raise DataError([f"{p}: no preference pairs found"])
    return pairs


def read_many_pairs(paths: list[str]) -> list[Pair]:
    """Several files' pairs, every problem of all of them together."""
    pairs, problems = [], []
    for path in paths:
        try:
            pairs += read_pairs(path)
        except DataError as e:
            problems += e.problems
    if problems:
        raise DataError(problems)
    return pairs


def encode_pairs(
    pairs: list[Pair], tokenizer: Any, max_len: int
) -> tuple[list[EncodedPair], EncodeReport]:
    """Encode both members of each pair (labels on the final reply only); a pair whose
    reply does not fit ``max_len`` even without old turns is dropped."""
    report = EncodeReport(conversations=len(pairs))
    out = []
    for pair in pairs:
        chosen, rejected = (encode_conversation(c, tokenizer, max_len, MaskPolicy.LAST)
                            for c in pair.conversations())  # fmt: skip
        if chosen is None or rejected is None:
            report.dropped += 1
            continue
        report.truncated += (chosen.dropped_turns or rejected.dropped_turns) > 0
        report.tokens += len(chosen.input_ids) + len(rejected.input_ids)
        report.trained_tokens += chosen.n_trained + rejected.n_trained
        out.append(EncodedPair(chosen, rejected))
    report.encoded = len(out)
    return out, report
