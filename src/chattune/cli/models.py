"""``chattune models list|show|register|promote|rollback``: the model registry's verbs.

The registry's layout is in :mod:`chattune.learn.registry`; a server started with
``--registry`` follows what ``promote`` and ``rollback`` make current.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from chattune.cli.command import Command
from chattune.config import Section
from chattune.learn.registry import DEFAULT_REGISTRY, Bot, Registry

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
            created = str(meta.get("created", "?"))
            print(f"{v.label:<16}{status:<11}{parent:<8}{new!s:>5}  {created:<26}{verdict}")
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
    if bot.version(cfg.version).meta.get("status") == "rejected":
        print(f"note: {cfg.bot}-v{cfg.version} failed its learning round's gate "
              "(chattune models show); promoting it anyway")  # fmt: skip
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
COMMANDS = [MODELS_LIST, MODELS_SHOW, MODELS_REGISTER, MODELS_PROMOTE, MODELS_ROLLBACK]
