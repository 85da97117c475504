"""``chattune learn``: a learning round (the registry's verbs are in ``cli/models.py``).

The round's steps are in :mod:`chattune.learn.round`; this module reads feedback from the
server's store (the learn layer sits below serve and never reads it itself), prints, and
loops for ``--watch``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pydantic import Field, model_validator

from chattune.cli.command import Command
from chattune.cli.common import BOT_FLAGS, BotSection, load_bot
from chattune.config import FieldProblem, Section
from chattune.learn.registry import DEFAULT_REGISTRY, Bot, Registry
from chattune.learn.round import LearnSettings

log = logging.getLogger("chattune")

REGISTRY_HELP = "the model registry folder"


class LearnConfig(Section):
    """``chattune learn``: where the bot is, where the new conversations are, how to learn."""

    registry: str = Field(DEFAULT_REGISTRY, description=REGISTRY_HELP)
    bot_name: str = Field(min_length=1, description="the bot's name in the registry")
    db: str | None = Field(
        None, description="the server's database: its feedback and agents' answers are new data"
    )
    data: list[str] = Field(
        default_factory=list,
        description="more new conversations (files; preference pairs with --objective dpo)",
    )
    val_data: list[str] = Field(
        default_factory=list,
        description="the new data's evaluation set (default: learn.new_val_share of it)",
    )
    bot: BotSection = Field(default_factory=BotSection)
    learn: LearnSettings = Field(default_factory=LearnSettings)
    watch: bool = Field(False, description="keep running: a round whenever enough is new")
    interval: float = Field(60.0, gt=0, description="--watch: seconds between looks")
    max_rounds: int | None = Field(None, ge=1, description="--watch: stop after N rounds")

    @model_validator(mode="after")
    def _some_data(self) -> LearnConfig:
        if not self.db and not self.data:
            raise FieldProblem("db", "give --db (the server's feedback) and/or --data FILE")
        return self


# ----- learn ----------------------------------------------------------------------------


def gather_new(
    cfg: LearnConfig, bot: Bot, profile: Any = None
) -> tuple[list[Any], list[dict[str, Any]], list[str]]:
    """The new conversations: the store's feedback (written to the bot's
    ``feedback.jsonl`` and read back through the training data's validation) and the
    ``--data`` files, with a manifest entry for each source, and each conversation's
    group (its stored conversation's id; a file's line for ``--data``).

    The store keeps what was said, not the system prompt the server added from its
    profile; feedback conversations get ``profile``'s system turn back, so the bot learns
    from the prompt it answers under (without it, a chat template puts its own default
    system prompt there: SmolLM2's "You are a helpful AI assistant named SmolLM").
    """
    from chattune.data.jsonl import write_jsonl
    from chattune.data.readers import read_conversations
    from chattune.learn.registry import sha256_file
    from chattune.learn.round import read_new

    conversations, sources = read_new(cfg.data) if cfg.data else ([], [])
    groups = [c.source for c in conversations]
    if cfg.db:
        from chattune.serve.store import Store

        store = Store(existing_db(cfg.db))
        try:
            rows = list(store.feedback_conversations())
            path = bot.path / "feedback.jsonl"
            bot.path.mkdir(parents=True, exist_ok=True)
            count = write_jsonl(path, ({"messages": r["messages"]} for r in rows))
        finally:
            store.close()
        if count:
            conversations += [_with_system(c, profile) for c in read_conversations(path)]
            groups += [f"conversation:{r['conversation']}" for r in rows]
            sources.append({"store": "feedback", "file": str(path), "sha256": sha256_file(path),
                            "conversations": count})  # fmt: skip
    return conversations, sources, groups


def existing_db(db: str) -> str:
    """``db``, refused if it names an SQLite file that does not exist: ``learn`` reads the
    server's database, and a mistyped path would otherwise be created empty and the round
    would find nothing to learn, every time."""
    from pathlib import Path

    from chattune.errors import ConfigError

    path = db.removeprefix("sqlite:///") if db.startswith("sqlite:///") else db
    if "://" not in path and not Path(path).expanduser().exists():
        raise ConfigError(f"db (--db) {db}: no such database; give the one `chattune serve` "
                          "writes (its --db)")  # fmt: skip
    return db


def gather_pairs(cfg: LearnConfig, bot: Bot, profile: Any = None) -> tuple[list[Any], list[str]]:
    """``--objective dpo``: the preference pairs of the store (each correction chosen over
    the reply it corrected; written to the bot's ``pairs.jsonl`` and read back through the
    pairs' validation) and of the ``--data`` files (pairs files), with the profile's system
    prompt put back as in :func:`gather_new`; and each pair's group."""
    from chattune.data.jsonl import write_jsonl
    from chattune.data.preference import Pair, read_many_pairs, read_pairs

    pairs = read_many_pairs(cfg.data) if cfg.data else []
    groups = [p.source for p in pairs]
    if cfg.db:
        from chattune.serve.learning import preference_pairs
        from chattune.serve.store import Store

        store = Store(existing_db(cfg.db))
        try:
            with store.session() as s:
                rows = list(preference_pairs(s, None))
        finally:
            store.close()
        path = bot.path / "pairs.jsonl"
        bot.path.mkdir(parents=True, exist_ok=True)
        if write_jsonl(path, ({k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows)):
            system = profile.system_message() if profile is not None else None
            for pair in read_pairs(path):
                prompt = pair.prompt
                if system is not None and (not prompt or prompt[0].role != "system"):
                    prompt = (system, *prompt)
                pairs.append(Pair(prompt, pair.chosen, pair.rejected, pair.source))
            groups += [f"conversation:{r['conversation']}" for r in rows]
    return pairs, groups


def _with_system(conversation: Any, profile: Any) -> Any:
    from chattune.data.types import Conversation

    system = profile.system_message() if profile is not None else None
    if system is None or (conversation.messages and conversation.messages[0].role == "system"):
        return conversation
    return Conversation([system, *conversation.messages], conversation.source)


def cmd_learn(cfg: LearnConfig) -> int:
    """Run a learning round on the bot's current version: new conversations (feedback
    from --db, --data files) plus replay of what earlier versions learned; continue
    training; evaluate the old and the new held-out sets; promote if the gate passes.
    With --watch: a round whenever at least learn.min_new conversations are new."""
    from chattune.model.loading import quiet_transformers

    quiet_transformers()
    bot = Registry(cfg.registry).bot(cfg.bot_name)
    bot.require_current()
    profile = load_bot(cfg.bot)
    if not cfg.watch:
        from chattune.learn.round import NotEnoughData

        with bot.lock():
            try:
                return _one_round(cfg, bot, profile)
            except NotEnoughData as e:  # nothing to do is not a failure (a cron line)
                print(f"no round: {e}")
                return 0
    return _watch(cfg, bot, profile)


def _one_round(cfg: LearnConfig, bot: Bot, profile: Any) -> int:
    from chattune.learn.round import read_new, run_round

    held_out = read_new(cfg.val_data)[0] if cfg.val_data else None
    if cfg.learn.objective == "dpo":
        pairs, groups = gather_pairs(cfg, bot, profile)
        result = run_round(bot, [], cfg.learn, [{"pairs": len(pairs)}], profile,
                           held_out=held_out, groups=groups, pairs=pairs)  # fmt: skip
    else:
        new, sources, groups = gather_new(cfg, bot, profile)
        result = run_round(bot, new, cfg.learn, sources, profile, held_out=held_out,
                           groups=groups)  # fmt: skip
    print(result.report.read_text(encoding="utf-8"))
    print(f"report: {result.report}")
    if result.promoted:
        print(f"current: {result.candidate.label}")
    elif result.gate.passed:
        if result.held_because:
            print(result.held_because)
        print(f"{result.candidate.label} passed; promote it with: chattune models promote "
              f"--bot {bot.name} --version {result.candidate.number}")  # fmt: skip
    else:
        print(f"{result.candidate.label} is kept, not promoted (the gate failed)")
    return 0


def _watch(cfg: LearnConfig, bot: Bot, profile: Any) -> int:
    """Look every ``interval`` seconds; run a round when enough is new and it is not the
    same new data a failed round already tried. The lock keeps one round at a time, also
    against a second watcher or a round started by hand."""
    from chattune.errors import ChattuneError
    from chattune.learn.round import fingerprint, read_lineage

    rounds, tried = 0, set()
    while cfg.max_rounds is None or rounds < cfg.max_rounds:
        try:
            new, _, _ = gather_new(cfg, bot, profile)
            known = read_lineage(bot, bot.require_current(), []).known
        except ChattuneError as e:  # a bad line in the store's export, ...: look again later
            log.warning("%s", e)
            new, known = [], set()
        fresh = {fingerprint(c) for c in new} - known
        # After a round that was not promoted, wait for min_new conversations it has not seen.
        if len(fresh) >= cfg.learn.min_new and len(fresh - tried) >= cfg.learn.min_new:
            try:
                with bot.lock():
                    _one_round(cfg, bot, profile)
                tried, rounds = tried | fresh, rounds + 1
            except ChattuneError as e:  # another round holds the lock, bad data, ...
                log.warning("%s", e)
        else:
            log.info("%d new conversations; waiting for %d", len(fresh - tried),
                     cfg.learn.min_new)  # fmt: skip
        if cfg.max_rounds is not None and rounds >= cfg.max_rounds:
            break
        time.sleep(cfg.interval)
    return 0


LEARN = Command(
    "learn",
    LearnConfig,
    {
        "--registry": "registry",
        "--bot": "bot_name",
        "--db": "db",
        "--data": "data",
        "--val-data": "val_data",
        **BOT_FLAGS,
        "--replay-ratio": "learn.replay_ratio",
        "--epochs": "learn.epochs",
        "--lr": "learn.lr",
        "--anchor": "learn.anchor",
        "--anchor-weight": "learn.anchor_weight",
        "--tolerance": "learn.tolerance",
        "--retire": "learn.retire",
        "--hold": "learn.hold",
        "--objective": "learn.objective",
        "--watch": "watch",
        "--interval": "interval",
        "--max-rounds": "max_rounds",
    },
    cmd_learn,
)
COMMANDS = [LEARN]
