"""``chattune chat``: a terminal REPL on the chat engine (or one answer per stdin line)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from chattune.chat.engine import ChatEngine, PromptTooLong
from chattune.chat.routing import Decision
from chattune.data.jsonl import append_jsonl
from chattune.data.types import Message

HELP = (
    "commands: /reset (new conversation), /system TEXT (replace the system prompt; empty: "
    "the profile's), /save FILE (append the conversation as training JSONL), /quit"
)


def run_chat(
    engine: ChatEngine,
    lines: Iterable[str],
    write: Callable[[str], None],
    interactive: bool,
    verbose: bool = False,
) -> list[Message]:
    """Answer each user line, streaming; return the conversation when input ends.

    In interactive mode Ctrl+C stops the reply being generated and keeps the session.
    ``verbose`` prints each turn's routing decision under the reply. After a handoff the
    bot stops answering (a person would take over, as ``chattune serve`` does) until
    ``/reset``.
    """
    history: list[Message] = []
    system: str | None = None
    handed_off = False
    if interactive:
        write(f"chatting with {engine.profile.name}. {HELP}\n")
    for raw in lines:
        line = raw.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            command, _, arg = line.partition(" ")
            if command in ("/quit", "/exit"):
                break
            if command == "/reset":
                history, handed_off = [], False
                write("(new conversation)\n")
            elif command == "/system":
                system = arg.strip() or None
                write("(system prompt set)\n" if system else "(profile system prompt)\n")
            elif command == "/save" and arg.strip():
                save(history, arg.strip(), engine, system)
                write(f"(saved to {arg.strip()})\n")
            else:
                write(HELP + "\n")
            continue
        history.append(Message("user", line))
        if handed_off:
            write("(handed off: a person answers this conversation; /reset starts a new one)\n")
            continue
        answered = _answer(engine, history, system, write, interactive, verbose)
        if answered is None:
            history.pop()
        else:
            history.append(Message("assistant", answered[0]))
            handed_off = answered[1].handoff
    return history


def describe(decision: Decision) -> str:
    """One line for ``--verbose``: route, intent, entities, sentiment, knowledge gate.

    Example:
        >>> from chattune.nlu.types import Analysis
        >>> describe(Decision("template", "intent greeting (0.97)", Analysis("greeting", 0.97)))
        '[route template: intent greeting (0.97) | intent greeting 0.97 | sentiment +0.00]'
    """
    parts = [f"route {decision.route}: {decision.reason}"]
    a = decision.analysis
    if a is not None:
        if a.intent is not None:
            parts.append(f"intent {a.intent} {a.confidence:.2f}")
        if a.entities:
            parts.append("entities " + ", ".join(f"{e.type}={e.value}" for e in a.entities))
        parts.append(f"sentiment {a.sentiment:+.2f}")
    if decision.grounding is not None:
        parts.append(f"knowledge {decision.grounding.kind}")
    return "[" + " | ".join(parts) + "]"


def _answer(engine, history, system, write, interactive, verbose) -> tuple[str, Decision] | None:
    cancel = threading.Event()
    pieces: list[str] = []
    if interactive:
        write(f"{engine.profile.name}> ")
    decision = engine.decide(history)
    try:
        for piece in engine.stream(history, system=system, cancel=cancel, decision=decision):
            pieces.append(piece)
            write(piece)
    except PromptTooLong as e:
        write(f"(error: {e})\n")
        return None
    except KeyboardInterrupt:
        cancel.set()
        write(" (stopped)")
    write("\n")
    reply = "".join(pieces).strip()
    for s in decision.sources(reply) or []:
        write(f"  [{s['index']}] {s['source']}, {s['location']}\n")
    if verbose:
        write(f"  {describe(decision)}\n")
    return reply, decision


def save(history: list[Message], path: str, engine: ChatEngine, system: str | None) -> None:
    """Append the conversation in the training format (``{"messages": [...]}``)."""
    sys_msg = engine.profile.system_message(system)
    messages = ([sys_msg] if sys_msg else []) + history
    append_jsonl(path, {"messages": [m.as_dict() for m in messages]})
