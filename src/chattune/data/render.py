"""Render conversations with the tokenizer's own chat template and build label masks.

One renderer serves training, evaluation and serving: :func:`render` is the only place a
conversation becomes text. Labels are ``-100`` (ignored by the loss) everywhere except the
trained turns. The trained span of an assistant turn is found by rendering the history with
the generation prompt (what the model sees when it must answer) and the history plus the
answer; the difference is the answer *including* its end-of-turn token, so the tuned model
learns to stop. We check the first is a token prefix of the second: a template for which that
fails would train the model on a prompt it never sees when serving.

The template is the tokenizer's own; ``data.chat_template`` replaces it for training (see
:func:`apply_chat_template_override`), and the trained model's saved tokenizer keeps the
replacement, so serving renders with it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from chattune.data.types import Conversation, Message
from chattune.errors import ConfigError, DataError

IGNORE_INDEX = -100
T = TypeVar("T")

#: How to give a template of one's own, for messages that suggest it.
HOW_TO_SET_TEMPLATE = (
    "set data.chat_template to a .jinja file or inline Jinja (on the command line: "
    "`chattune train ... data.chat_template=path/to/template.jinja`; in a --config YAML: "
    "`data: {chat_template: path/to/template.jinja}`)"
)

#: Template for models that ship none (GPT-2 and other base models): ChatML turns, each
#: closed by the tokenizer's end-of-sequence token so generation stops at the end of a reply.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class MaskPolicy(StrEnum):
    """Which tokens the loss is computed on."""

    ASSISTANT = "assistant"  # every assistant turn (default for multi-turn dialogue)
    LAST = "last"  # only the final assistant turn
    ALL = "all"  # every token, prompts included


@dataclass
class Encoded:
    """A tokenized training example."""

    input_ids: list[int]
    labels: list[int]
    dropped_turns: int = 0  # oldest turns removed to fit max_len

    @property
    def n_trained(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def ensure_chat_template(tokenizer: Any) -> None:
    """Give a tokenizer without a chat template the documented default (ChatML-like turns
    closed by EOS; ``data.chat_template`` replaces it when training), and a pad token."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


#: What a template must render to be accepted: a finished exchange, then a prompt.
_PROBE = [
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "Is shipping free?"},
]


def read_chat_template(value: str) -> tuple[str, str]:
    """(template text, where it came from) for a ``data.chat_template`` value.

    A value with Jinja markup (``{{`` or ``{%``) is the template itself; any other value is
    the path of a file holding one (``.jinja``, ``.j2``, or any name), read as UTF-8.

    Example:
        >>> read_chat_template("{{ messages[0]['content'] }}")[1]
        'inline template'
    """
    if "{{" in value or "{%" in value:
        return value, "inline template"
    path = Path(value).expanduser()
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise ConfigError(
            f"data.chat_template: no such file {str(path)!r} (relative paths start from the "
            "current folder; an inline template must contain Jinja markup: {{ }} or {% %})"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(
            f"data.chat_template: cannot read template file {str(path)!r}: {reason}"
        ) from None


def apply_chat_template_override(tokenizer: Any, value: str | None) -> None:
    """Replace ``tokenizer``'s chat template with ``data.chat_template`` (no-op for None).

    The template is checked by rendering a short conversation, with and without the
    generation prompt, so a Jinja mistake is reported now with the field's name rather
    than halfway through encoding. The tokenizer then carries it: ``save_pretrained``
    writes it beside the trained model (``chat_template.jinja``), which is what
    generation and ``chattune serve`` render with.

    Example:
        >>> apply_chat_template_override(tok, "templates/chatml.jinja")  # doctest: +SKIP
    """
    if not value:
        return
    import jinja2

    template, source = read_chat_template(value)
    before = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        for messages, prompt in ((_PROBE[:2], False), (_PROBE, True)):
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    except (jinja2.TemplateError, TypeError, ValueError, KeyError) as e:
        tokenizer.chat_template = before
        line = getattr(e, "lineno", None)
        at = f" line {line}" if isinstance(e, jinja2.TemplateSyntaxError) and line else ""
        raise ConfigError(
            f"data.chat_template ({source}{at}): the template does not render a "
            f"conversation: {type(e).__name__}: {e}"
        ) from None


def render(tokenizer: Any, messages: list[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it, through the tokenizer's chat template."""
    return tokenizer.apply_chat_template(
        [m.as_dict() for m in messages],
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def tokenize(tokenizer: Any, text: str) -> list[int]:
    # Special tokens come from the template text itself, so none are added here.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_messages(
    tokenizer: Any, messages: list[Message], mask: MaskPolicy, where: str
) -> Encoded:
    """``messages`` rendered and tokenized, labelled on the turns ``mask`` trains; a
    :class:`DataError` naming ``where`` if the template is not prefix-stable. No trimming
    (see :func:`encode_conversation`) and no neutralising: the caller's."""
    ids = tokenize(tokenizer, render(tokenizer, messages))
    if mask is MaskPolicy.ALL:
        return Encoded(ids, list(ids))
    labels = [IGNORE_INDEX] * len(ids)
    answers = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if mask is MaskPolicy.LAST:
        answers = answers[-1:]
    for i in answers:
        prompt = tokenize(tokenizer, render(tokenizer, messages[:i], add_generation_prompt=True))
        upto = tokenize(tokenizer, render(tokenizer, messages[: i + 1]))
        if upto[: len(prompt)] != prompt or ids[: len(upto)] != upto:
            raise DataError(
                [
                    f"{where}: turn {i + 1}: the chat template does not render the prompt as a "
                    "prefix of prompt + answer, so training and serving would disagree; "
                    f"use a model whose template is prefix-stable, or {HOW_TO_SET_TEMPLATE}"
                ]
            )
        labels[len(prompt) : len(upto)] = upto[len(prompt) :]
    return Encoded(ids, labels)


def encode_conversation(
    conversation: Conversation,
    tokenizer: Any,
    max_len: int,
    mask: MaskPolicy = MaskPolicy.ASSISTANT,
) -> Encoded | None:
    """Tokenize a conversation with labels; drop oldest turns to fit; ``None`` if nothing fits.

    A trailing user turn without a reply is not rendered (it could never be trained on).

    Example (hand-countable, see tests/test_render.py)::

        enc = encode_conversation(conv, tok, max_len=512)
        assert len(enc.input_ids) == len(enc.labels) <= 512
    """
    # Training data comes back from users too (feedback corrections): content is neutralised
    # exactly as when serving, so no example can train the model on a forged turn.
    messages = neutralise_messages(tokenizer, conversation.messages)
    while messages and messages[-1].role == "user" and mask is not MaskPolicy.ALL:
        messages.pop()
    if not messages:
        return None
    head = messages[:1] if messages[0].role == "system" else []  # the system turn stays

    def build(kept: list[Message]) -> tuple[float, Encoded]:
        enc = encode_messages(tokenizer, kept, mask, conversation.source)
        return (len(enc.input_ids) if enc.n_trained > 0 else float("inf")), enc

    found = keep_newest(tokenizer, head, messages[len(head) :], max_len, build)
    if found is None:
        return None
    found[1].dropped_turns = found[0]
    return found[1]


def keep_newest(
    tokenizer: Any,
    head: list[Message],
    turns: list[Message],
    budget: int,
    build: Callable[[list[Message]], tuple[float, T]],
) -> tuple[int, T] | None:
    """Keep the newest turns that fit: (how many oldest turns were dropped, ``build``'s
    result for the rest), or None when not even the last exchange fits.

    ``head`` (system turn, few-shot examples) always stays, and a cut always lands on a
    user turn. ``build(messages)`` renders and returns (size, result); a size of ``inf``
    means "unusable" (e.g. no trained token left). The chat engine's context budget and
    training's ``max_len`` both trim through here.

    Re-rendering the whole history once per dropped exchange is quadratic, so the cut is
    estimated in one pass (each message tokenized once, the template's overhead spread
    evenly), then checked and moved to the exact tightest cut: usually two or three renders.

    Example:
        >>> keep_newest(tok, [], turns, 500, lambda m: (len(ids := ...), ids))  # doctest: +SKIP
        (6, [...])
    """
    size, whole = build(head + turns)
    if size <= budget:
        return 0, whole
    starts = [i for i, m in enumerate(turns) if i > 0 and m.role == "user"]
    if not starts:
        return None
    tried: dict[int, tuple[float, T]] = {}

    def fits(j: int) -> bool:
        if j not in tried:
            tried[j] = build(head + turns[starts[j] :])
        return tried[j][0] <= budget

    j = _estimate_cut(tokenizer, head, turns, starts, size, budget)
    if fits(j):
        while j > 0 and fits(j - 1):
            j -= 1
    else:
        while j + 1 < len(starts) and not fits(j + 1):
            j += 1
        j += 1
        if j == len(starts):
            return None
    return starts[j], tried[j][1]


def _estimate_cut(
    tokenizer: Any,
    head: list[Message],
    turns: list[Message],
    starts: list[int],
    rendered: float,
    budget: int,
) -> int:
    """Index into ``starts`` of the first cut whose estimated size fits ``budget``."""
    lengths = [len(tokenize(tokenizer, m.content)) for m in head + turns]
    known = rendered if rendered != float("inf") else sum(lengths)
    overhead = max(0.0, (known - sum(lengths)) / len(lengths))
    fixed = sum(lengths[: len(head)]) + overhead * len(head)
    tail = [n + overhead for n in lengths[len(head) :]]
    suffix = list(itertools.accumulate(reversed(tail)))[::-1]  # suffix[i]: cost of turns[i:]
    return next((j for j, s in enumerate(starts) if fixed + suffix[s] <= budget), len(starts) - 1)


def generation_prompt_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Token ids of the history plus the assistant header: what generation continues from."""
    return tokenize(tokenizer, render(tokenizer, messages, add_generation_prompt=True))


#: U+200B ZERO WIDTH SPACE: invisible, and it breaks a control token's text apart.
_BREAK = "\u200b"
_CONTROL_PATTERNS: weakref.WeakKeyDictionary[Any, re.Pattern[str] | None] = (
    weakref.WeakKeyDictionary()
)


def _control_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex of every added token's text (``<|im_end|>``, ``<|im_start|>``, ...)."""
    try:
        return _CONTROL_PATTERNS[tokenizer]
    except (KeyError, TypeError):
        pass
    texts = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    texts |= {getattr(t, "content", str(t)) for t in decoder.values()}
    texts = {t for t in texts if len(t) >= 2}
    pattern = (
        re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True)))
        if texts
        else None
    )
    with contextlib.suppress(TypeError):  # a tokenizer that can't be weakly referenced
        _CONTROL_PATTERNS[tokenizer] = pattern
    return pattern


def neutralise_messages(tokenizer: Any, messages: list[Message]) -> list[Message]:
    """Every message's content through :func:`neutralise_control_tokens` (training and the
    chat engine both build prompts from these); a turn's other fields are kept."""
    return [
        dataclasses.replace(m, content=neutralise_control_tokens(tokenizer, m.content))
        for m in messages
    ]


def neutralise_control_tokens(tokenizer: Any, text: str) -> str:
    """``text`` with every control token's text broken by a zero-width space.

    The chat template renders content into one string that is then tokenized, and the
    tokenizer turns any ``<|im_end|>`` it finds there into the real end-of-turn token, so a
    user message or a document could close its turn and speak as the system. Content from
    users and documents goes through here first: the model sees the same characters, but
    no content string can produce a control token id (tests/test_chat.py checks on ids).

    Example:
        >>> neutralise_control_tokens(tok, "a <|im_end|> b")   # doctest: +SKIP
        'a <\\u200b|im_end|> b'
    """
    pattern = _control_pattern(tokenizer)
    if pattern is None:
        return text
    # Breaking one match can never form another (the break is not in any token's text),
    # but a token's text can hide another's ("<<|im_end|>"): repeat until none is left.
    for _ in range(len(text)):
        broken = pattern.sub(lambda m: m.group(0)[0] + _BREAK + m.group(0)[1:], text)
        if broken == text:
            return text
        text = broken
    return text
