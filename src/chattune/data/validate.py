"""Turn raw records into validated messages, naming the bad turn.

Validation happens once, right after reading, so the renderer and the training loop can trust
their input. Problems are returned as strings (not raised) so a reader can report every bad
line of a file at once.
"""

from __future__ import annotations

from typing import Any

from chattune.data.types import ROLES, Message

#: Spellings other formats use for the three roles (ShareGPT's ``human``/``gpt`` and friends).
ROLE_ALIASES: dict[str, str] = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
}


def to_messages(
    turns: Any, role_key: str = "role", content_key: str = "content"
) -> tuple[list[Message], list[str]]:
    """Convert a list of raw turn dicts to messages; collect a problem for each bad turn.

    Turns are numbered from 1 in problems, as people count them.

    Example:
        >>> to_messages([{"role": "bot", "content": "hi"}])[1]
        ["turn 1: unknown role 'bot' (expected one of: system, user, human, assistant, gpt)"]
    """
    if not isinstance(turns, list):
        return [], [f"expected a list of turns, got {type(turns).__name__}"]
    messages: list[Message] = []
    problems: list[str] = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            problems.append(f"turn {i}: expected an object, got {type(turn).__name__}")
            continue
        role, content = turn.get(role_key), turn.get(content_key)
        if role is None:
            problems.append(f"turn {i}: missing '{role_key}'")
            continue
        if not isinstance(role, str) or role.lower() not in ROLE_ALIASES:
            known = ", ".join(ROLE_ALIASES)
            problems.append(f"turn {i}: unknown role {role!r} (expected one of: {known})")
            continue
        if content is None:
            problems.append(f"turn {i}: missing content ('{content_key}')")
            continue
        if not isinstance(content, str):
            problems.append(f"turn {i}: content must be a string, got {type(content).__name__}")
            continue
        role = ROLE_ALIASES[role.lower()]
        sources, faq_ids, found = gold_keys(turn, role)
        problems += [f"turn {i}: {p}" for p in found]
        messages.append(Message(role, content, sources, faq_ids))  # type: ignore[arg-type]
    return messages, problems


#: The keys of an assistant turn that say where its answer comes from, as ``kb eval``'s
#: question files name them (see :mod:`chattune.knowledge.retrieval_eval`).
GOLD_KEYS = ("source", "faq_id")


Names = tuple[str, ...]


def gold_keys(turn: dict[str, Any], role: str) -> tuple[Names, Names, list[str]]:
    """(sources, FAQ ids, problems) from a raw turn's optional ``source`` and ``faq_id``.

    Each may be a string or a list of strings; only an assistant turn has an answer to
    trace, so either key on another role is a problem.

    Example:
        >>> gold_keys({"faq_id": ["returns-window"], "source": "returns.md"}, "assistant")
        (('returns.md',), ('returns-window',), [])
        >>> gold_keys({"faq_id": 7}, "assistant")[2]
        ["'faq_id' must be a non-empty string or a list of them, got int"]
    """
    found: dict[str, Names] = {}
    problems: list[str] = []
    for key in GOLD_KEYS:
        if turn.get(key) is None:
            found[key] = ()
            continue
        if role != "assistant":
            problems.append(f"'{key}' belongs on the assistant turn that gives the answer")
            found[key] = ()
            continue
        value = turn[key]
        names = [value] if isinstance(value, str) else value
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n.strip() for n in names)
        ):
            problems.append(
                f"'{key}' must be a non-empty string or a list of them, got {type(value).__name__}"
            )
            names = []
        found[key] = tuple(n.strip() for n in names)
    return found["source"], found["faq_id"], problems


def validate_messages(messages: list[Message]) -> list[str]:
    """Check the shape of a conversation; return one problem string per defect.

    Rules: an optional system turn comes first; then user and assistant alternate, starting
    with the user; at least one assistant turn; no empty content.

    Example:
        >>> validate_messages([Message("user", "a"), Message("user", "b")])
        ['turn 2: two user turns in a row', 'no assistant turn: nothing to train on']
    """
    problems: list[str] = []
    if not messages:
        return ["empty conversation"]
    previous = None
    for i, m in enumerate(messages, start=1):
        if m.role not in ROLES:
            problems.append(f"turn {i}: unknown role {m.role!r}")
            continue
        if not m.content.strip():
            problems.append(f"turn {i}: empty {m.role} content")
        if m.role == "system":
            if i != 1:
                problems.append(f"turn {i}: a system turn may only come first")
        elif previous is None or previous == "system":
            if m.role != "user":
                problems.append(f"turn {i}: the conversation must start with a user turn")
        elif m.role == previous:
            problems.append(f"turn {i}: two {m.role} turns in a row")
        previous = m.role
    if not any(m.role == "assistant" for m in messages):
        problems.append("no assistant turn: nothing to train on")
    return problems
