"""``chattune chat``: a terminal REPL on the chat engine (or one answer per stdin line)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from chattune.chat.engine import ChatEngine, PromptTooLong
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
) -> list[Message]:
    """Answer each user line, streaming; return the conversation when input ends.

    In interactive mode Ctrl+C stops the reply being generated and keeps the session.
    """
    history: list[Message] = []
    system: str | None = None
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
                history = []
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
        reply = _answer(engine, history, system, write, interactive)
        if reply is None:
            history.pop()
        else:
            history.append(Message("assistant", reply))
    return history


def _answer(engine, history, system, write, interactive) -> str | None:
    cancel = threading.Event()
    pieces: list[str] = []
    if interactive:
        write(f"{engine.profile.name}> ")
    grounding = engine.ground(history)
    try:
        for piece in engine.stream(history, system=system, cancel=cancel, grounding=grounding):
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
    for s in grounding.sources(reply) if grounding else []:
        write(f"  [{s['index']}] {s['source']}, {s['location']}\n")
    return reply


def save(history: list[Message], path: str, engine: ChatEngine, system: str | None) -> None:
    """Append the conversation in the training format (``{"messages": [...]}``)."""
    sys_msg = engine.profile.system_message(system)
    messages = ([sys_msg] if sys_msg else []) + history
    append_jsonl(path, {"messages": [m.as_dict() for m in messages]})
