"""``chattune <verb>``: the command line, the only layer that prints.

One flat table (:data:`COMMANDS`): each command has a pydantic config model, one flag table
(flag -> field) and a function whose docstring is its help. Every command reads its
settings the same way, later layers winning::

    defaults  <  --config FILE (YAML)  <  named flags  <  key=value overrides

and validates them all at once, naming field and flag, before any model loads. Heavy
imports (torch, transformers, the knowledge stack) happen inside the commands, so
``chattune --help`` is instant.

Example:
    >>> command, cfg = parse(["train", "--data", "chats.jsonl", "train.lr=1e-4"])
    >>> command.name, cfg.data.train, cfg.train.lr
    ('train', ['chats.jsonl'], 0.0001)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from chattune.cli import chat, data, export, generate, kb, learn, models, nlu, serve, train, tune
from chattune.cli import eval as evaluation
from chattune.cli.command import Command, add_parser, resolve
from chattune.errors import ChattuneError

#: The command modules, in the order ``chattune --help`` lists their commands.
VERBS = (data, train, tune, export, generate, chat, serve, evaluation, kb, nlu, models, learn)
#: Every command, in that order.
COMMANDS: dict[str, Command] = {c.name: c for module in VERBS for c in module.COMMANDS}

DESCRIPTION = "Fine-tune, evaluate and serve a chatbot; `chattune VERB --help` for each verb."

#: Help of the command groups (``chattune data ...``, ``chattune kb ...``).
GROUPS = {
    "data": "check and describe data files; export feedback as training data",
    "kb": "knowledge base: documents and FAQs the bot answers from",
    "nlu": "intents, entities and sentiment: train, evaluate and try the NLU",
    "models": "the model registry: each bot's versions, promote and roll back",
}

_QUIET = ("httpx", "urllib3", "transformers", "accelerate", "peft", "absl", "matplotlib",
          "sentence_transformers", "faiss", "bm25s")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`, grouped by their first word."""
    parser = argparse.ArgumentParser(prog="chattune", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True)
    groups: dict[str, Any] = {}
    for name, command in COMMANDS.items():
        first, _, rest = name.partition(" ")
        if not rest:
            add_parser(verbs, command, first)
            continue
        if first not in groups:
            group = verbs.add_parser(first, help=GROUPS[first], description=GROUPS[first])
            groups[first] = group.add_subparsers(dest=f"{first}_verb", required=True)
        add_parser(groups[first], command, rest)
    return parser


def parse(argv: list[str]) -> tuple[Command, Any]:
    """The command ``argv`` names and its validated config; runs nothing.

    Raises:
        SystemExit: on an unknown command or flag (argparse prints why).
        ConfigError: on bad settings, every one named with its field and flag.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [word for word in extra if word.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args._words = [*args._words, *extra]  # positionals after a flag land in ``extra``
    return args._command, resolve(args._command, args)


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit status 2 on a usage or data error, 130 on Ctrl+C."""
    # chattune never downloads; make sure no library behind it tries (or phones home).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    argv = sys.argv[1:] if argv is None else argv
    verbose = argv[:1] in (["-v"], ["--verbose"])  # a top-level flag: before the verb
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in _QUIET:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        command, cfg = parse(argv)
        return command.func(cfg)
    except ChattuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        detail = f" ({e})" if str(e) else ""
        print(f"interrupted{detail}; resume with --resume", file=sys.stderr)
        return 130
