"""``chattune models ...`` (the registry) and ``chattune learn`` (a learning round).

The registry's layout and the round's steps are in :mod:`chattune.learn.registry` and
:mod:`chattune.learn.round`; this module reads feedback from the server's store (the learn
layer sits below serve and never reads it itself), prints, and loops for ``--watch``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from chattune.cli.command import Command
from chattune.cli.common import BOT_FLAGS, BotSection, load_bot
from chattune.config import FieldProblem, Section
from chattune.learn.registry import DEFAULT_REGISTRY, Bot, Registry
from chattune.learn.round import LearnSettings

log = logging.getLogger("chattune")

REGISTRY_HELP = "the model registry folder"


class ModelsListConfig(Section):
    """``chattune models list``: which registry, which bot (default: all)."""

    registry: str = Field(DEFAULT_REGISTRY, description=REGISTRY_HELP)
    bot: str | None = Field(None, description="only this bot")


class ModelsVersionConfig(Section):
    """A version of a bot: ``chattune models show|promote``."""

    registry: str = Field(DEFAULT_REGISTRY, description=REGISTRY_HELP)
    bot: str = Field(min_length=1, description="the bot's name in the registry")
    version: int = Field(ge=1, description="version number (3 for pine-v3)")
    reason: str = Field("", max_length=500, description="recorded in the history")


class ModelsRollbackConfig(Section):
    """``chattune models rollback``: which bot."""

    registry: str = Field(DEFAULT_REGISTRY, description=REGISTRY_HELP)
    bot: str = Field(min_length=1, description="the bot's name in the registry")
    reason: str = Field("", max_length=500, description="recorded in the history")


class ModelsRegisterConfig(Section):
    """``chattune models register``: a training run in as a new version."""

    run: str = Field(min_length=1, description="a finished `chattune train` --output folder")
    registry: str = Field(DEFAULT_REGISTRY, description=REGISTRY_HELP)
    bot: str = Field(min_length=1, description="the bot's name in the registry")
    promote: bool = Field(False, description="make it current (always, for a bot's first version)")
    note: str = Field("", max_length=500, description="a note kept with the version")


class LearnConfig(Section):
    """``chattune learn``: where the bot is, where the new conversations are, how to learn."""

    registry: str = Field(DEFAULT_REGISTRY, description=REGISTRY_HELP)
    bot_name: str = Field(min_length=1, description="the bot's name in the registry")
    db: str | None = Field(
        None, description="the server's database: its feedback and agents' answers are new data"
    )
    data: list[str] = Field(default_factory=list, description="more new conversations (files)")
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


# ----- models ---------------------------------------------------------------------------


def _status(bot: Bot, number: int, meta: dict[str, Any]) -> str:
    return "current" if bot.current_number() == number else str(meta.get("status", "?"))


def cmd_models_list(cfg: ModelsListConfig) -> int:
    """List each bot's versions: status (current, promoted, candidate, rejected), parent,
    new conversations learned and the gate's verdict."""
    registry = Registry(cfg.registry)
    bots = [registry.bot(cfg.bot)] if cfg.bot else registry.bots()
    if not any(b.versions() for b in bots):
        print(f"no versions in {cfg.registry}")
        return 0
    print(f"{'version':<16}{'status':<11}{'parent':<8}{'new':>5}  {'created':<26}gate")
    for bot in bots:
        for v in bot.versions():
            meta = v.meta
            parent = f"v{meta['parent']}" if meta.get("parent") else "-"
            new = meta.get("new", {}).get("conversations", meta.get("data", {}).get("train", {}))
            new = new.get("conversations", "-") if isinstance(new, dict) else new
            gate = meta.get("gate", {})
            verdict = "-" if not gate else ("passed" if gate.get("passed") else "failed")
            status = _status(bot, v.number, meta)
            print(f"{v.label:<16}{status:<11}{parent:<8}{new!s:>5}  {meta['created']:<26}{verdict}")
    return 0


def cmd_models_show(cfg: ModelsVersionConfig) -> int:
    """Print a version's record (version.json: data manifest with hashes, evaluation,
    the gate's reasons) and where its report is."""
    bot = Registry(cfg.registry).bot(cfg.bot)
    v = bot.version(cfg.version)
    print(json.dumps({"label": v.label, "path": str(v.path), "current": bot.current_number()
                      == v.number, **v.meta}, indent=2))  # fmt: skip
    if (v.path / "report.md").exists():
        print(f"report: {v.path / 'report.md'}")
    return 0


def cmd_models_promote(cfg: ModelsVersionConfig) -> int:
    """Make a version current (a server started with --registry switches to it)."""
    bot = Registry(cfg.registry).bot(cfg.bot)
    before = bot.current_number()
    v = bot.promote(cfg.version, cfg.reason or "promoted by hand")
    print(f"current: {v.label} (was {f'v{before}' if before else 'none'})")
    return 0


def cmd_models_rollback(cfg: ModelsRollbackConfig) -> int:
    """Make current the version that was current before this one was promoted."""
    bot = Registry(cfg.registry).bot(cfg.bot)
    before = bot.current_number()
    v = bot.rollback(cfg.reason or "rolled back by hand")
    print(f"current: {v.label} (was v{before})")
    return 0


def cmd_models_register(cfg: ModelsRegisterConfig) -> int:
    """Register a `chattune train` output as a new version, with the conversations it
    trained and validated on (read again from its config.yaml: later rounds replay them
    and check them for forgetting)."""
    import yaml

    from chattune.config import RunConfig
    from chattune.errors import ConfigError
    from chattune.train.setup import read_items

    run = Path(cfg.run)
    if not (run / "config.yaml").exists():
        raise ConfigError(f"RUN {run}: no config.yaml: give a `chattune train` --output folder")
    run_cfg = RunConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text()))
    if run_cfg.data.objective != "chat":
        raise ConfigError(f"RUN {run}: continued pre-training runs (objective lm) are not bots")
    missing = [f for f in (*run_cfg.data.train, *run_cfg.data.val) if not Path(f).exists()]
    if missing:
        raise ConfigError(
            f"RUN {run}: its config.yaml trained on {', '.join(missing)}, not found from "
            f"{Path.cwd()}: run this from the folder it was trained in (relative paths are "
            "read from there), or fix data.train/data.val in its config.yaml"
        )
    train, val = read_items(run_cfg)
    bot = Registry(cfg.registry).bot(cfg.bot)
    v = bot.register_run(run, train, val, cfg.note)
    print(f"registered {v.label}: {len(train)} training and {len(val)} validation conversations")
    if cfg.promote or bot.current_number() is None:
        bot.promote(v.number, "registered")
        print(f"current: {v.label}")
    return 0


# ----- learn ----------------------------------------------------------------------------


def gather_new(
    cfg: LearnConfig, bot: Bot, profile: Any = None
) -> tuple[list[Any], list[dict[str, Any]]]:
    """The new conversations: the store's feedback (written to the bot's
    ``feedback.jsonl`` and read back through the training data's validation) and the
    ``--data`` files, with a manifest entry for each source.

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
    if cfg.db:
        from chattune.serve.store import Store

        store = Store(cfg.db)
        try:
            rows = ({"messages": r["messages"]} for r in store.feedback_conversations())
            path = bot.path / "feedback.jsonl"
            bot.path.mkdir(parents=True, exist_ok=True)
            count = write_jsonl(path, rows)
        finally:
            store.close()
        if count:
            conversations += [_with_system(c, profile) for c in read_conversations(path)]
            sources.append({"store": "feedback", "file": str(path), "sha256": sha256_file(path),
                            "conversations": count})  # fmt: skip
    return conversations, sources


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
        with bot.lock():
            return _one_round(cfg, bot, profile)
    return _watch(cfg, bot, profile)


def _one_round(cfg: LearnConfig, bot: Bot, profile: Any) -> int:
    from chattune.learn.round import read_new, run_round

    new, sources = gather_new(cfg, bot, profile)
    held_out = read_new(cfg.val_data)[0] if cfg.val_data else None
    result = run_round(bot, new, cfg.learn, sources, profile, held_out=held_out)
    print(result.report.read_text(encoding="utf-8"))
    print(f"report: {result.report}")
    if result.promoted:
        print(f"current: {result.candidate.label}")
    elif result.gate.passed:
        print(f"{result.candidate.label} passed; promote it with: chattune models promote "
              f"--bot {bot.name} --version {result.candidate.number}")  # fmt: skip
    else:
        print(f"{result.candidate.label} is kept, not promoted (the gate failed)")
    return 0


def _watch(cfg: LearnConfig, bot: Bot, profile: Any) -> int:
    """Look every ``interval`` seconds; run a round when enough is new and it is not the
    same new data a failed round already tried. The lock keeps one round at a time, also
    against a second watcher or a round started by hand."""
    from chattune.errors import ConfigError
    from chattune.learn.round import compile_retired, fingerprint, read_lineage

    rounds, tried = 0, None
    while cfg.max_rounds is None or rounds < cfg.max_rounds:
        new, _ = gather_new(cfg, bot, profile)
        lineage = read_lineage(bot, bot.require_current(), compile_retired(cfg.learn.retire))
        fresh = {fingerprint(c) for c in new} - lineage.known
        if len(fresh) >= cfg.learn.min_new and fresh != tried:
            tried = fresh
            try:
                with bot.lock():
                    _one_round(cfg, bot, profile)
            except ConfigError as e:  # another round holds the lock: look again later
                log.warning("%s", e)
            rounds += 1
        else:
            log.info("%d new conversations; waiting for %d", len(fresh), cfg.learn.min_new)
        if cfg.max_rounds is not None and rounds >= cfg.max_rounds:
            break
        time.sleep(cfg.interval)
    return 0


_BOT = {"--registry": "registry", "--bot": "bot"}
MODELS_LIST = Command("models list", ModelsListConfig, _BOT, cmd_models_list)
MODELS_SHOW = Command(
    "models show", ModelsVersionConfig, {**_BOT, "--version": "version"}, cmd_models_show
)
MODELS_PROMOTE = Command(
    "models promote",
    ModelsVersionConfig,
    {**_BOT, "--version": "version", "--reason": "reason"},
    cmd_models_promote,
)
MODELS_ROLLBACK = Command(
    "models rollback", ModelsRollbackConfig, {**_BOT, "--reason": "reason"}, cmd_models_rollback
)
MODELS_REGISTER = Command(
    "models register",
    ModelsRegisterConfig,
    {"RUN": "run", **_BOT, "--promote": "promote", "--note": "note"},
    cmd_models_register,
)
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
        "--watch": "watch",
        "--interval": "interval",
        "--max-rounds": "max_rounds",
    },
    cmd_learn,
)
COMMANDS = [MODELS_LIST, MODELS_SHOW, MODELS_REGISTER, MODELS_PROMOTE, MODELS_ROLLBACK, LEARN]
