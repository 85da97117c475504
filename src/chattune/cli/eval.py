"""``chattune eval`` and ``chattune rate``: score models on held-out conversations, by metric
or by a person's blind choice. The evaluate package computes; these commands print."""

from __future__ import annotations

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
from chattune.evaluate.languages import LanguageCode


class EvalOutput(Section):
    """Files ``chattune eval`` writes besides the table it prints."""

    json_file: str | None = Field(None, description="write metrics (stable keys) to this file")
    per_example: bool = Field(False, description="include every reply in the JSON file")
    report: str | None = Field(None, description="write an HTML report (and .md beside it)")


class EvalConfig(Section):
    """``chattune eval``: which models, on which data, sampled how, written where."""

    model: str = model_field()
    compare: str | None = Field(None, description="a second model, scored on the same examples")
    data: list[str] = Field(default_factory=list, description="test conversations (repeatable)")
    ratings: str | None = Field(
        None, description="summarise a ratings file from `chattune rate` instead"
    )
    max_examples: int | None = Field(
        None, ge=1, description="at most this many assistant turns (and questions)"
    )
    kb: str | None = Field(
        None,
        description="answer from this knowledge base folder, as chat --kb does; --data may "
        "then be question files (question, faq_id/source, facts), scored for fact accuracy, "
        "citations and don't-know",
    )
    max_len: int = Field(1024, ge=8, description="tokens per example for perplexity")
    batch_size: int = Field(8, ge=1)
    bootstrap: int = Field(1000, ge=0, description="resamples for the 95% interval")
    lang: LanguageCode = Field(
        "auto",
        description="language of the replies (BLEU tokenizer, ROUGE/F1 words); auto detects it "
        "from the references, und is any other language",
    )
    bot: BotSection = Field(default_factory=BotSection)
    backend: BackendSettings = backend_field()
    generation: GenerationOverrides = Field(default_factory=GenerationOverrides)  # type: ignore[valid-type]
    output: EvalOutput = Field(default_factory=EvalOutput)

    @model_validator(mode="after")
    def _data_or_ratings(self) -> EvalConfig:
        if not self.data and not self.ratings:
            raise FieldProblem("data", "required: the test conversations (or --ratings FILE)")
        return self


class RateConfig(Section):
    """``chattune rate``: two models, the data they answer, where the ratings go."""

    data: list[str] = Field(min_length=1, description="test conversations (repeatable)")
    models: list[str] = Field(min_length=2, max_length=2, description="the two models")
    out: str = Field(min_length=1, description="ratings JSONL (appended; resumable)")
    max_examples: int | None = Field(None, ge=1, description="at most this many assistant turns")
    bot: BotSection = Field(default_factory=BotSection)
    backend: BackendSettings = backend_field()
    generation: GenerationOverrides = Field(default_factory=GenerationOverrides)  # type: ignore[valid-type]


def cmd_eval(cfg: EvalConfig) -> int:
    """Score a model on test conversations (perplexity, BLEU, ROUGE, F1, distinct-n, ...),
    optionally against a second model with bootstrap intervals; or summarise --ratings.
    With --kb, replies are grounded in the knowledge base, and question files score fact
    accuracy, citation precision/recall and the don't-know rate (docs/evaluation.md)."""
    if cfg.ratings:
        from chattune.evaluate.ratings import format_summary, summarize_ratings

        print(format_summary(summarize_ratings(cfg.ratings)))
        return 0
    from chattune.evaluate.report import write_report
    from chattune.evaluate.run import EvalSettings, evaluate_models, format_table, write_json
    from chattune.model.loading import quiet_transformers

    quiet_transformers()
    profile = load_bot(cfg.bot, cfg.generation)
    settings = EvalSettings(
        model=cfg.model,
        data=cfg.data,
        compare=cfg.compare,
        max_examples=cfg.max_examples,
        max_len=cfg.max_len,
        batch_size=cfg.batch_size,
        bootstrap=cfg.bootstrap,
        profile=profile,
        backend=cfg.backend,
        lang=cfg.lang,
        knowledge=knowledge(cfg.kb, profile),  # opened now: a bad --kb fails in a second
    )
    result = evaluate_models(settings)
    print(format_table(result))
    if cfg.output.json_file:
        write_json(result, cfg.output.json_file, cfg.output.per_example)
        print(f"wrote {cfg.output.json_file}")
    if cfg.output.report:
        files = write_report(result, cfg.output.report)
        print("wrote " + ", ".join(str(f) for f in files))
    return 0


def cmd_rate(cfg: RateConfig) -> int:
    """Rate two models' replies blind, in the terminal; resumable."""
    from chattune.evaluate.ratings import format_summary, run_rate, summarize_ratings
    from chattune.evaluate.run import load_examples
    from chattune.model.loading import quiet_transformers

    quiet_transformers()
    examples = load_examples(cfg.data, cfg.max_examples)
    profile = load_bot(cfg.bot, cfg.generation)
    engines = {spec: engine_for(spec, profile, backend=cfg.backend) for spec in cfg.models}
    options = profile.generation  # the profile's, with the flags given over it
    run_rate(examples, engines, cfg.out, options, ask=input, show=print, seed=options.seed)
    print(format_summary(summarize_ratings(cfg.out)))
    return 0


EVAL = Command(
    "eval",
    EvalConfig,
    {
        "--model": "model",
        "--compare": "compare",
        "--data": "data",
        "--kb": "kb",
        "--ratings": "ratings",
        "--max-examples": "max_examples",
        "--max-len": "max_len",
        "--batch-size": "batch_size",
        "--bootstrap": "bootstrap",
        "--lang": "lang",
        "--json": "output.json_file",
        "--per-example": "output.per_example",
        "--report": "output.report",
        **BOT_FLAGS,
        **BACKEND_FLAGS,
        **GENERATION_FLAGS,
    },
    cmd_eval,
)
RATE = Command(
    "rate",
    RateConfig,
    {
        "--data": "data",
        "--models": "models",
        "--out": "out",
        "--max-examples": "max_examples",
        **BOT_FLAGS,
        **BACKEND_FLAGS,
        **GENERATION_FLAGS,
    },
    cmd_rate,
)
COMMANDS = [EVAL, RATE]
