"""``chattune serve``: the OpenAI-compatible API, conversations, feedback and the web page.

Its limits are :class:`chattune.serve.protocol.ServeOptions` itself (the ``limits``
section), so the flags, the YAML and the server check the same fields.

The model is ``--model`` (a folder, a .gguf file, an embedded name), or a bot of a model
registry: ``--registry DIR --bot NAME`` serves the bot's ``current`` version and follows
it (promotions and rollbacks switch the running server between requests; see
:mod:`chattune.serve.follow`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from chattune.backends.registry import BackendSettings
from chattune.cli.command import Command
from chattune.cli.common import (
    BACKEND_FLAGS,
    BOT_FLAGS,
    GENERATION_FLAGS,
    BotSection,
    GenerationOverrides,
    backend_field,
    engine_for,
    knowledge,
    load_bot,
    model_field,
)
from chattune.config import FieldProblem, Section
from chattune.errors import ConfigError
from chattune.learn.registry import DEFAULT_REGISTRY, Registry, Version
from chattune.serve.protocol import ServeOptions, is_loopback

if TYPE_CHECKING:
    from chattune.chat.engine import ChatEngine
    from chattune.chat.profile import BotProfile
    from chattune.knowledge.grounding import Knowledge

log = logging.getLogger("chattune")


def _key_from_environment() -> str:
    return os.environ.get("CHATTUNE_API_KEY", "")


def _agent_keys_from_environment() -> list[str]:
    return [os.environ["CHATTUNE_AGENT_KEY"]] if os.environ.get("CHATTUNE_AGENT_KEY") else []


def _split_keys(values: list[str]) -> list[str]:
    """``["K1,K2", " K3 "]`` -> ``["K1", "K2", "K3"]``: keys given as flags, YAML or env."""
    return [k.strip() for v in values for k in v.split(",") if k.strip()]


class HttpSection(Section):
    """Where the server listens and who may use it."""

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535)
    api_key: str = Field(
        default_factory=_key_from_environment,
        description="accepted key(s), comma-separated (default: $CHATTUNE_API_KEY)",
    )
    agent_key: list[str] = Field(
        default_factory=_agent_keys_from_environment,
        description="key(s) of people who answer handed-off conversations, accepted on "
        "/v1/handoffs only; repeatable or comma-separated (default: $CHATTUNE_AGENT_KEY)",
    )
    insecure_no_auth: bool = Field(
        False,
        description="allow a non-loopback --host without --api-key "
        "(anyone who reaches it can use it)",
    )
    graceful_timeout: int = Field(
        30, ge=0, description="seconds in-flight replies get to finish on shutdown"
    )

    @property
    def keys(self) -> list[str]:
        return _split_keys([self.api_key])

    @property
    def agent_keys(self) -> list[str]:
        return _split_keys(self.agent_key)

    @model_validator(mode="after")
    def _roles_apart(self) -> HttpSection:
        if set(self.keys) & set(self.agent_keys):
            raise FieldProblem("agent_key", "a key cannot be both a customer key (--api-key) "
                               "and an agent key (--agent-key): give agents their own")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _no_open_public_server(self) -> HttpSection:
        if not self.keys and not self.insecure_no_auth and not is_loopback(self.host):
            raise FieldProblem(
                "host",
                f"{self.host} without --api-key would let anyone who can reach this machine "
                "chat, read and delete conversations; pass --api-key KEY (or set "
                "CHATTUNE_API_KEY), or --insecure-no-auth if that is really what you want",
            )
        return self


class HandoffSection(Section):
    """Human handoff: who is told when a conversation waits for a person."""

    webhook: str | None = Field(
        None, description="POST a JSON event to this http(s) URL on each handoff"
    )

    @model_validator(mode="after")
    def _http_url(self) -> HandoffSection:
        from chattune.serve.handoff import check_webhook_url

        if self.webhook is not None:
            try:
                check_webhook_url(self.webhook)
            except ValueError as e:
                raise FieldProblem("webhook", str(e)) from None
        return self


class ServeConfig(Section):
    """``chattune serve``: the model and bot, the store, the network side and the limits.

    The model is ``model``, or (given ``bot_name``) the current version of that bot in
    ``registry``, followed every ``follow_interval`` seconds.
    """

    model: str = model_field()
    registry: str = Field(
        DEFAULT_REGISTRY, description="the model registry folder of --bot (not with --model)"
    )
    bot_name: str | None = Field(
        None,
        description="serve this bot's current version from --registry, switching when a "
        "version is promoted or rolled back (not with --model)",
    )
    follow_interval: float = Field(
        2.0, gt=0, description="--bot: seconds between looks at the bot's current version"
    )
    kb: str | None = Field(None, description="answer from this knowledge base, with sources")
    db: str = Field(
        "chattune.db", description="sqlite path, sqlite:///path or postgresql://... URL"
    )
    bot: BotSection = Field(default_factory=BotSection)
    backend: BackendSettings = backend_field()
    generation: GenerationOverrides = Field(default_factory=GenerationOverrides)  # type: ignore[valid-type]
    http: HttpSection = Field(default_factory=HttpSection)
    handoff: HandoffSection = Field(default_factory=HandoffSection)
    limits: ServeOptions = Field(default_factory=ServeOptions)

    @model_validator(mode="after")
    def _one_model(self) -> ServeConfig:
        """``--model`` or ``--registry``/``--bot``, never both; their flags only together."""
        given = self.model_fields_set
        if self.bot_name is not None and "model" in given:
            raise FieldProblem("model", "--model and --registry/--bot are exclusive: serve a "
                               "model (--model) or a bot's current version (--registry DIR "
                               "--bot NAME), not both")  # fmt: skip
        if self.bot_name is None and "registry" in given:
            raise FieldProblem("bot_name", "--registry needs --bot NAME: the bot of the "
                               "registry whose current version to serve")  # fmt: skip
        if self.bot_name is None and "follow_interval" in given:
            raise FieldProblem("follow_interval", "--follow-interval is for a registry bot: "
                               "give --registry DIR --bot NAME")  # fmt: skip
        return self


def serving_version(cfg: ServeConfig) -> Version | None:
    """The registry version ``cfg`` serves (None for ``--model``), read before any model
    loads: ConfigError naming the flags if the bot has no current version."""
    if cfg.bot_name is None:
        return None
    bot = Registry(cfg.registry).bot(cfg.bot_name)
    version = bot.current()
    if version is None:
        where = "has no versions" if not bot.versions() else "has no current version"
        raise ConfigError(
            f"--registry {cfg.registry} --bot {cfg.bot_name}: the bot {where}; register a "
            f"training run and promote it (chattune models register RUN --registry "
            f"{cfg.registry} --bot {cfg.bot_name} --promote), or serve a model with --model"
        )
    return version


def version_loader(
    profile: BotProfile, kb: Knowledge | None, cfg: ServeConfig
) -> Callable[[Version], ChatEngine]:
    """``load(version) -> engine``: the version's model (its ``model_dir``) on the profile,
    knowledge base and backend settings of ``cfg``, as :func:`engine_for` builds one. The
    NLU is built once and shared: a new version changes the chat model, not how messages
    are routed."""
    from chattune.backends.registry import open_backend
    from chattune.chat.engine import ChatEngine, check_routes, nlu_for

    check_routes(profile, kb)  # a bad profile fails in a second, before the model loads
    nlu = nlu_for(profile)

    def load(version: Version) -> ChatEngine:
        return ChatEngine(open_backend(str(version.model_dir), cfg.backend), profile, kb, nlu)

    return load


def served(
    cfg: ServeConfig, version: Version | None, profile: BotProfile, kb: Knowledge | None
) -> tuple[ChatEngine, str, dict[str, Any]]:
    """(the engine, the model's id, ``build_app``'s ``version`` and ``follower``): the
    ``--model``, or ``version`` of the ``--bot``, followed. Loads the model."""
    if version is None:
        return engine_for(cfg.model, profile, kb, cfg.backend), cfg.model, {}
    from chattune.serve.follow import Follower

    load = version_loader(profile, kb, cfg)
    bot = Registry(cfg.registry).bot(version.bot)
    follower = Follower(bot, load, cfg.follow_interval, serving=version.number)
    return load(version), version.bot, {"version": version.label, "follower": follower}


def cmd_serve(cfg: ServeConfig) -> int:
    """Serve the model: OpenAI-compatible API (with SSE streaming), conversations, feedback,
    human handoff (agents answer through /v1/handoffs with --agent-key) and a web chat
    page at /. With --registry DIR --bot NAME: the bot's current version, switching to
    each version promoted (or rolled back) while it runs."""
    import uvicorn

    from chattune.model.loading import quiet_transformers
    from chattune.serve.app import build_app
    from chattune.serve.store import Store

    quiet_transformers()
    version = serving_version(cfg)  # a bot without a current version fails here, at once
    profile = load_bot(cfg.bot, cfg.generation)
    kb = knowledge(cfg.kb, profile)
    store = Store(cfg.db)  # before the model: a wrong --db fails in a second
    engine, name, following = served(cfg, version, profile, kb)
    limits = cfg.limits
    slots = getattr(engine.backend, "slots", None)  # a batching backend: use every slot
    if slots and "max_concurrency" not in limits.model_fields_set:
        limits = limits.model_copy(update={"max_concurrency": slots})
    http = cfg.http
    app = build_app(engine, store, name, http.keys, http.agent_keys, cfg.handoff.webhook,
                    insecure_no_auth=http.insecure_no_auth, **following,
                    **limits.model_dump())  # fmt: skip
    del engine  # the app holds it now: after a swap, nothing here keeps the old model alive
    if not http.keys:
        log.warning("serving without --api-key: anyone who can reach %s can use it", http.host)
    what = f"{name}: {version.label}, following {version.path.parent}" if version else name
    print(f"chattune: http://{http.host}:{http.port}/ (model {what})", flush=True)
    # uvicorn stops accepting on SIGTERM/SIGINT and lets in-flight replies finish (bounded),
    # then re-raises the signal to the handler it found: ours, which makes that a clean exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        app,
        host=http.host,
        port=http.port,
        log_level="warning",
        timeout_graceful_shutdown=http.graceful_timeout,
    )
    return 0


SERVE = Command(
    "serve",
    ServeConfig,
    {
        "--model": "model",
        "--registry": "registry",
        "--bot": "bot_name",
        "--follow-interval": "follow_interval",
        "--kb": "kb",
        "--db": "db",
        **BOT_FLAGS,
        **BACKEND_FLAGS,
        **GENERATION_FLAGS,
        "--host": "http.host",
        "--port": "http.port",
        "--api-key": "http.api_key",
        "--agent-key": "http.agent_key",
        "--handoff-webhook": "handoff.webhook",
        "--insecure-no-auth": "http.insecure_no_auth",
        "--graceful-timeout": "http.graceful_timeout",
        **{"--" + name.replace("_", "-"): f"limits.{name}" for name in ServeOptions.model_fields},
    },
    cmd_serve,
)
COMMANDS = [SERVE]
