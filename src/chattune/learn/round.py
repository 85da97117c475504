"""One learning round: new conversations in, a gated candidate version out.

``run_round(bot, new, settings)`` goes through these steps, each a function below::

    gather      new conversations, de-duplicated (also against everything the current
                version's lineage has seen), a seeded share held out for the gate
    replay      a seeded sample of the lineage's training conversations, ``replay_ratio``
                old per new one; conversations with a *retired* answer (a policy that
                changed) are left out of replay and of the old evaluation sets
    train       the current version continued (its adapter, or its full weights) on new +
                replay, optionally anchored to where it started (``train.anchor``)
    evaluate    current and candidate on the new held-out set and on every earlier
                version's held-out set: loss over every reference turn, reply metrics
                (token F1, ROUGE-L, BLEU) on the first ``reply_examples`` turns of each
    gate        promote only if the new set's loss falls and no old set's rises by more
                than ``tolerance``; else the candidate stays, marked rejected, with why
    report      ``report.md`` in the candidate's folder: before/after per set, the data,
                the decision

Library code: the caller (``chattune learn``) gathers feedback from the server's store and
prints; this module neither reads the store (it sits below ``serve``) nor prints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from chattune.config import RunConfig, Section
from chattune.data.preference import Pair
from chattune.data.readers import read_conversations
from chattune.data.types import Conversation
from chattune.errors import ConfigError, DataError
from chattune.learn.registry import Bot, Version, write_conversations

log = logging.getLogger(__name__)


class LearnSettings(Section):
    """How a round learns and when its candidate is promoted (``chattune learn``)."""

    replay_ratio: float = Field(
        4.0, ge=0, le=100, description="old conversations replayed per new one (0: no replay)"
    )
    new_val_share: float = Field(
        0.25, gt=0, lt=1, description="share of the new conversations held out for the gate"
    )
    min_new: int = Field(4, ge=2, description="fewer new conversations than this: no round")
    epochs: float = Field(3.0, gt=0, description="passes over new + replay")
    lr: float | None = Field(
        None, gt=0, description="learning rate (default: lr_scale x the first version's)"
    )
    lr_scale: float = Field(
        0.2,
        gt=0,
        le=1,
        description="with lr unset: the round's lr as a share of the lr the bot's first "
        "version was trained with (every round the same; restarting a converged model at its "
        "first run's peak lr forgets)",
    )
    batch_size: int | None = Field(None, ge=1, description="default: the version's")
    anchor: Literal["none", "l2sp", "ewc"] = Field(
        "none", description="penalty toward the current weights (train/anchor.py)"
    )
    anchor_weight: float = Field(1.0, ge=0, description="strength of the anchor")
    tolerance: float = Field(
        0.02, ge=0, le=1, description="old sets' eval loss may rise at most this share"
    )
    min_gain: float = Field(
        0.0, ge=0, lt=1, description="the new set's eval loss must fall by more than this share"
    )
    retire: list[str] = Field(
        default_factory=list,
        description="regular expressions: old conversations with an assistant turn matching "
        "one are a changed policy: left out of replay and of the old evaluation sets",
    )
    reply_examples: int = Field(
        8, ge=0, le=1000, description="turns per set whose generated replies are scored"
    )
    max_new_tokens: int = Field(96, ge=1, le=2048, description="per generated reply")
    objective: Literal["sft", "dpo"] = Field(
        "sft",
        description="sft: learn the new replies; dpo: learn preference pairs (each correction "
        "chosen over the reply it corrected), without replay",
    )
    dpo_beta: float = Field(0.1, gt=0, le=10, description="dpo: beta")
    seed: int = 0
    hold: bool = Field(
        False, description="never promote: a passing candidate waits for `chattune models promote`"
    )
    progress: bool = True


# ----- gather ---------------------------------------------------------------------------


def fingerprint(conversation: Conversation) -> str:
    """The same conversation, however it was spaced, has the same fingerprint. System turns
    do not count: the same exchange under another system prompt (a round run with or without
    ``--profile``) is still what was learned."""
    said = [m for m in conversation.messages if m.role != "system"]
    text = json.dumps([(m.role, " ".join(m.content.split())) for m in said])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class NewData:
    """The round's new conversations: what trains, what is held out, what was dropped."""

    train: list[Conversation]
    val: list[Conversation]
    duplicates: int  # repeated within the new data, or already learned
    pairs: list[Pair] = field(default_factory=list)  # dpo: the pairs of ``train``


def gather(
    new: list[Conversation],
    known: set[str],
    settings: LearnSettings,
    held_out: list[Conversation] | None = None,
    groups: list[str] | None = None,
) -> NewData:
    """De-duplicate ``new`` (also against ``known`` fingerprints) and hold out a seeded
    share for the gate, at least one conversation on each side; or, given ``held_out``
    (conversations written to test the new data: other phrasings), train on all of ``new``
    and hold out those (less any already learned: they would test nothing new).

    ``groups`` (one key per conversation of ``new``) keeps examples from one source
    together: a stored conversation with feedback on two replies exports two examples, the
    second extending the first, and with one in training and the other held out the gate
    would score trained text.
    """
    keys = groups if groups is not None else [str(i) for i in range(len(new))]
    seen, kept, kept_keys = set(known), [], []
    for conv, key in zip(new, keys, strict=True):
        fp = fingerprint(conv)
        if fp not in seen:
            seen.add(fp)
            kept.append(conv)
            kept_keys.append(key)
    if len(kept) < settings.min_new:
        raise NotEnoughData(len(kept), settings.min_new, len(new) - len(kept))
    if held_out:
        trained = {fingerprint(c) for c in kept}
        if any(fingerprint(c) in trained for c in held_out):
            raise DataError(["--val-data: a held-out conversation is also in the new data"])
        fresh = [c for c in held_out if fingerprint(c) not in known]
        if not fresh:
            raise DataError(["--val-data: every held-out conversation was learned already"])
        return NewData(kept, fresh, len(new) - len(kept))
    names = sorted(set(kept_keys))
    random.Random(settings.seed).shuffle(names)
    n_val = min(len(names) - 1, max(1, round(len(names) * settings.new_val_share)))
    if n_val < 1:
        why = "all come from one stored conversation: nothing to hold out"
        raise DataError([f"the {len(kept)} new conversations {why}; give --val-data or more"])
    held = set(names[:n_val])
    train = [c for c, k in zip(kept, kept_keys, strict=True) if k not in held]
    val = [c for c, k in zip(kept, kept_keys, strict=True) if k in held]
    return NewData(train, val, len(new) - len(kept))


class NotEnoughData(ConfigError):
    """Too few new conversations for a round (not an error for ``--watch``: it waits)."""

    def __init__(self, found: int, needed: int, duplicates: int) -> None:
        self.found, self.needed = found, needed
        super().__init__(
            f"{found} new conversations ({duplicates} duplicates or already learned left "
            f"out); a round needs at least {needed} (learn.min_new): collect more feedback"
        )


# ----- replay and the old evaluation sets ---------------------------------------------------


def _read(path: Path | None) -> list[Conversation]:
    return read_conversations(path) if path is not None else []


def retired(conversation: Conversation, patterns: list[re.Pattern[str]]) -> bool:
    """True if an assistant turn states something a ``retire`` pattern says changed."""
    replies = [m.content for m in conversation.messages if m.role == "assistant"]
    return any(p.search(text) for text in replies for p in patterns)


def compile_retired(patterns: list[str]) -> list[re.Pattern[str]]:
    out = []
    for text in patterns:
        try:
            out.append(re.compile(text))
        except re.error as e:
            raise ConfigError(
                f"learn.retire (--retire) {text!r}: not a regular expression: {e}"
            ) from None
    return out


@dataclass
class Lineage:
    """What the current version and its ancestors learned and held out."""

    train: list[Conversation]
    val: dict[str, list[Conversation]]  # per version label, in lineage order
    known: set[str]  # fingerprints of all of it, retired or not
    retired: int


def retired_patterns(bot: Bot, current: Version, given: list[str]) -> list[str]:
    """``given`` and every pattern retired by a round of ``current``'s lineage: a policy
    that changed stays changed in later rounds, ``--retire`` given or not."""
    found: list[str] = []
    for v in bot.lineage(current):
        recorded = v.meta.get("retired", {})
        found += recorded.get("patterns", []) if isinstance(recorded, dict) else []
    return list(dict.fromkeys([*found, *given]))


def read_lineage(bot: Bot, current: Version, patterns: list[re.Pattern[str]]) -> Lineage:
    train, val, known, dropped = [], {}, set(), 0
    for v in bot.lineage(current):
        t, h = _read(v.data_file("train")), _read(v.data_file("val"))
        known |= {fingerprint(c) for c in (*t, *h)}
        keep_t = [c for c in t if not retired(c, patterns)]
        keep_h = [c for c in h if not retired(c, patterns)]
        dropped += len(t) - len(keep_t) + len(h) - len(keep_h)
        train += keep_t
        if keep_h:
            val[v.label] = keep_h
    return Lineage(train, val, known, dropped)


def replay_sample(
    old: list[Conversation], n_new: int, settings: LearnSettings
) -> list[Conversation]:
    """``replay_ratio × n_new`` old conversations (all of them if there are fewer), seeded."""
    n = min(len(old), round(settings.replay_ratio * n_new))
    return random.Random(settings.seed + 1).sample(old, n) if n else []


# ----- train ----------------------------------------------------------------------------


def _run_config(version: Version) -> RunConfig:
    config_file = version.model_dir / "config.yaml"
    if not config_file.exists():
        raise ConfigError(f"{version.model_dir}: no config.yaml: not a chattune training output")
    return RunConfig.model_validate(yaml.safe_load(config_file.read_text(encoding="utf-8")))


def round_lr(settings: LearnSettings, first: RunConfig) -> float:
    """``learn.lr``, else ``lr_scale`` x the lr of the lineage's first version.

    Scaled from the first version, not the current one, so that rounds do not compound
    (0.2, then 0.04, ...). Why lower at all: the first run's cosine schedule ended near 0 at
    a converged model; a round that restarts at that run's peak lr is the "re-warming" that
    Gupta et al. (2023) found raises the loss on the old data. Measured on the demo's round
    (docs/learning.md): at the first run's 1e-3 the old set's loss rose 23%; at 2e-4 it
    fell 10% while the new set learned as much (-92% vs -91%).
    """
    from chattune.train.setup import DEFAULT_LR

    if settings.lr:
        return settings.lr
    return settings.lr_scale * (first.train.lr or DEFAULT_LR.get(first.adapter.method, 2e-4))


def candidate_config(
    current: Version,
    mix: Path,
    output: Path,
    settings: LearnSettings,
    replay: Path | None = None,
    first: Version | None = None,
) -> RunConfig:
    """The current version's own training config, continued on ``mix`` into ``output``
    (ewc's Fisher estimated on ``replay``: the old data) at :func:`round_lr` of ``first``,
    the lineage's first version (default: ``current``)."""
    cfg = _run_config(current)
    lr = round_lr(settings, _run_config(first) if first else cfg)
    peft = (current.model_dir / "adapter_config.json").exists()
    t = cfg.train
    train = t.model_copy(update={
        "output": str(output), "epochs": settings.epochs, "max_steps": None, "resume": False,
        "eval_every": 0, "save_every": 0, "patience": 0, "eval_generate": 0,
        "lr": lr, "batch_size": settings.batch_size or t.batch_size,
        "anchor": settings.anchor, "anchor_weight": settings.anchor_weight,
        "anchor_data": [str(replay)] if replay else [], "progress": settings.progress,
        "seed": t.seed + current.number,
    })  # fmt: skip
    objective = "preference" if settings.objective == "dpo" else cfg.data.objective
    data = cfg.data.model_copy(update={"train": [str(mix)], "val": [], "val_split": 0.0,
                                       "format": "messages", "objective": objective})  # fmt: skip
    saved = current.model_dir / "chat_template.jinja"
    if data.chat_template and saved.exists():  # a path in the config is relative to its run
        data = data.model_copy(update={"chat_template": str(saved.resolve())})
    if settings.objective == "dpo":
        train = train.model_copy(update={"dpo_beta": settings.dpo_beta})
    if peft:  # continue the adapter on the same base
        model = cfg.model.model_copy(update={"adapter": str(current.model_dir.resolve())})
    else:  # full or freeze: the version's weights are the new starting point
        start = str(current.model_dir.resolve())
        model = cfg.model.model_copy(update={"base": start, "adapter": None})
    return RunConfig(model=model, data=data, adapter=cfg.adapter, train=train)


def train_candidate(cfg: RunConfig) -> dict[str, Any]:
    """Train a round's candidate; a version trained with a knowledge base (``data.kb``) goes
    on training on the grounded prompts serving builds (docs/training.md)."""
    from chattune.chat.grounded_training import kb_grounder
    from chattune.train.loop import fit
    from chattune.train.setup import build_run

    return fit(build_run(cfg, None, kb_grounder(cfg)))


# ----- evaluate and gate --------------------------------------------------------------------

#: ``evaluate(model_dir, sets) -> {set: metrics}``; injectable so the gate is testable alone.
Evaluator = Callable[[str, dict[str, list[Conversation]]], dict[str, dict[str, float]]]


def evaluate_sets(
    spec: str, sets: dict[str, list[Conversation]], settings: LearnSettings, profile: Any = None
) -> dict[str, dict[str, float]]:
    """Per set: ``eval_loss`` (token-weighted, every reference turn) and, over the first
    ``reply_examples`` turns, the replies' ``f1``, ``rouge_l`` and ``bleu``."""
    from chattune.backends.transformers import TransformersBackend
    from chattune.chat.engine import ChatEngine
    from chattune.chat.profile import BotProfile
    from chattune.evaluate.examples import turn_examples
    from chattune.evaluate.generation import generate_replies
    from chattune.evaluate.perplexity import reference_losses
    from chattune.evaluate.scoring import aggregate, make_records
    from chattune.model.loading import load_model

    model, tokenizer = load_model(spec)
    model.eval()
    profile = profile or BotProfile()
    options = profile.generation.model_copy(
        update={"max_new_tokens": settings.max_new_tokens, "do_sample": False}
    )
    engine = ChatEngine(TransformersBackend(model, tokenizer), profile)
    out: dict[str, dict[str, float]] = {}
    for name, conversations in sets.items():
        examples = turn_examples(conversations)
        losses = reference_losses(model, tokenizer, examples, 1024)
        total, count = sum(s for s, _ in losses), sum(n for _, n in losses)
        metrics = {"eval_loss": total / max(count, 1), "turns": float(len(examples))}
        scored = examples[: settings.reply_examples]
        if scored:
            replies = generate_replies(engine, scored, options, progress=settings.progress,
                                       desc=f"generate {name}")  # fmt: skip
            records = make_records([e.id for e in scored], [e.reference for e in scored],
                                   [r.text for r in replies], [r.stopped for r in replies],
                                   losses[: len(scored)])  # fmt: skip
            agg = aggregate(records)
            metrics |= {k: agg[k] for k in ("f1", "rouge_l", "bleu")}
        out[name] = metrics
    return out


@dataclass
class Gate:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def gate(
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
    new_set: str,
    settings: LearnSettings,
) -> Gate:
    """Pass if the new set's loss fell (by more than ``min_gain``) and every old set's rose
    by at most ``tolerance``; the reasons name each set and its change either way."""
    reasons, passed = [], True
    for name in before:
        b, a = before[name]["eval_loss"], after[name]["eval_loss"]
        change = (a - b) / b if b else 0.0
        if name == new_set:
            ok = change < -settings.min_gain
            rule = f"must fall by more than {settings.min_gain:.1%}"
        else:
            ok = change <= settings.tolerance
            rule = f"may rise at most {settings.tolerance:.1%}"
        passed &= ok
        verdict = "ok" if ok else "FAILS"
        reasons.append(f"{name}: eval loss {b:.4f} -> {a:.4f} ({change:+.1%}; {rule}): {verdict}")
    return Gate(passed, reasons)


# ----- the round ------------------------------------------------------------------------


@dataclass
class RoundResult:
    candidate: Version
    gate: Gate
    promoted: bool
    report: Path
    before: dict[str, dict[str, float]]
    after: dict[str, dict[str, float]]
    held_because: str = ""  # why a passing candidate was not promoted, if it was not


def run_round(
    bot: Bot,
    new: list[Conversation],
    settings: LearnSettings,
    sources: list[dict[str, Any]] | None = None,
    profile: Any = None,
    evaluator: Evaluator | None = None,
    train: Callable[[RunConfig], dict[str, Any]] | None = None,
    held_out: list[Conversation] | None = None,
    groups: list[str] | None = None,
    pairs: list[Pair] | None = None,
) -> RoundResult:
    """Learn ``new`` on top of ``bot``'s current version; see the module docstring.

    With ``settings.objective == "dpo"`` the round learns ``pairs`` instead: ``new`` is
    their chosen conversations (prompt + chosen reply; what the gate and later rounds see),
    they train with DPO from the current version as the reference, and nothing is replayed
    (old conversations have no rejected replies; an anchor can still hold the weights).

    The candidate is promoted only if the gate passed and the current version is still
    the one the round started from: a rollback (or promotion) by hand during a long round
    wins over the round, whose candidate is then kept for ``chattune models promote``.

    Args:
        held_out: the new data's evaluation set, instead of a share of ``new``.
        groups: a source key per conversation of ``new`` (see :func:`gather`).
        sources: where ``new`` came from (files with their sha256, the store), recorded in
            the manifest.
        evaluator, train: replace the real evaluation / training (tests of the gate).

    Raises:
        NotEnoughData: fewer than ``min_new`` new conversations.
    """
    current = bot.require_current()
    settings = settings.model_copy(
        update={"retire": retired_patterns(bot, current, settings.retire)}
    )
    lineage = read_lineage(bot, current, compile_retired(settings.retire))
    by_chosen: dict[str, Pair] = {}
    if settings.objective == "dpo":
        if not pairs:
            raise NotEnoughData(0, settings.min_new, 0)
        by_chosen = {fingerprint(p.conversations()[0]): p for p in pairs}
        new = [p.conversations()[0] for p in pairs]
        groups = groups if groups is not None and len(groups) == len(new) else None
    data = gather(new, lineage.known, settings, held_out, groups)
    if by_chosen:
        data.pairs = [by_chosen[fingerprint(c)] for c in data.train]
    replay = [] if by_chosen else replay_sample(lineage.train, len(data.train), settings)
    candidate = bot.claim()
    try:
        result = _learn(bot, current, candidate, data, replay, lineage, settings, sources,
                        profile, evaluator, train or train_candidate)  # fmt: skip
    except BaseException:  # a failed round leaves no half-made version behind
        shutil.rmtree(candidate.path, ignore_errors=True)
        raise
    # Outside the clean-up: once promoted, the candidate is what ``current`` names.
    if result.gate.passed and not settings.hold:
        if bot.current_number() == current.number:
            bot.promote(candidate.number, "learning round: the gate passed")
            result.promoted = True
        else:
            result.held_because = (
                f"current changed from v{current.number} to v{bot.current_number()} during "
                "the round: not promoted over it"
            )
    return result


def _learn(
    bot: Bot,
    current: Version,
    candidate: Version,
    data: NewData,
    replay: list[Conversation],
    lineage: Lineage,
    settings: LearnSettings,
    sources: list[dict[str, Any]] | None,
    profile: Any,
    evaluator: Evaluator | None,
    train: Callable[[RunConfig], dict[str, Any]],
) -> RoundResult:
    d = candidate.path / "data"
    manifest = {
        "train": write_conversations(d / "train.jsonl", data.train),
        "val": write_conversations(d / "val.jsonl", data.val),
        "mix": write_conversations(d / "mix.jsonl", _shuffled([*data.train, *replay], settings)),
    }
    if replay:
        manifest["replay"] = write_conversations(d / "replay.jsonl", replay)
    old = d / "replay.jsonl" if replay else None
    trained_on = d / "mix.jsonl"
    if data.pairs:
        manifest["pairs"] = write_pairs(d / "pairs.jsonl", data.pairs)
        trained_on = d / "pairs.jsonl"
    first = bot.lineage(current)[0]
    cfg = candidate_config(current, trained_on, candidate.model_dir, settings, old, first)
    summary = train(cfg)
    shutil.rmtree(candidate.model_dir / "checkpoints", ignore_errors=True)  # the output is enough
    new_set = f"new ({candidate.label})"
    sets = {new_set: data.val, **lineage.val}
    evaluate = evaluator or (lambda spec, s: evaluate_sets(spec, s, settings, profile))
    before = evaluate(str(current.model_dir), sets)
    after = evaluate(str(candidate.model_dir), sets)
    decision = gate(before, after, new_set, settings)
    bot.write_meta(
        candidate,
        parent=current.number,
        base=cfg.model.base if cfg.model.adapter else current.meta.get("base"),
        method=current.meta.get("method"),
        data=manifest,
        sources=sources or [],
        replay={
            "conversations": len(replay),
            "ratio": settings.replay_ratio,
            "from": [v.label for v in bot.lineage(current)],
        },
        new={"conversations": len(data.train) + len(data.val), "duplicates": data.duplicates},
        retired={"patterns": settings.retire, "conversations": lineage.retired},
        settings=settings.model_dump(mode="json"),
        summary={k: summary[k] for k in ("steps", "train_conversations") if k in summary},
        eval={"before": before, "after": after},
        gate={"passed": decision.passed, "reasons": decision.reasons},
        status="candidate" if decision.passed else "rejected",
    )
    report = write_report(candidate, current, before, after, decision, manifest, replay, lineage)
    return RoundResult(candidate, decision, False, report, before, after)


def write_pairs(path: Path, pairs: list[Pair]) -> dict[str, Any]:
    """Write preference pairs as JSONL (TRL's conversational format); the manifest entry."""
    from chattune.data.jsonl import write_jsonl
    from chattune.learn.registry import sha256_file

    def row(p: Pair) -> dict[str, Any]:
        return {"prompt": [m.as_dict() for m in p.prompt],
                "chosen": [{"role": "assistant", "content": p.chosen}],
                "rejected": [{"role": "assistant", "content": p.rejected}]}  # fmt: skip

    rows = (row(p) for p in pairs)
    count = write_jsonl(path, rows)
    return {"file": path.name, "sha256": sha256_file(path), "pairs": count}


def _shuffled(items: list[Conversation], settings: LearnSettings) -> list[Conversation]:
    out = list(items)
    random.Random(settings.seed + 2).shuffle(out)
    return out


def write_report(
    candidate: Version,
    current: Version,
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
    decision: Gate,
    manifest: dict[str, Any],
    replay: list[Conversation],
    lineage: Lineage,
) -> Path:
    """``report.md``: the decision, a before/after table per set and metric, the data."""
    verdict = "passed" if decision.passed else "failed: not promoted"
    lines = [
        f"# Learning round: {current.label} -> {candidate.label}",
        "",
        f"**Gate {verdict}.**",
        "",
        *[f"- {r}" for r in decision.reasons],
        *(
            [
                "- **no earlier version has a held-out set: forgetting was not checked** (register "
                "runs with validation data)"
            ]
            if not lineage.val
            else []
        ),
        "",
        f"| set | metric | {current.label} | {candidate.label} | change |",
        "|---|---|---:|---:|---:|",
    ]
    for name in before:
        for key in ("eval_loss", "f1", "rouge_l", "bleu"):
            if key in before[name] and key in after[name]:
                b, a = before[name][key], after[name][key]
                lines.append(f"| {name} | {key} | {b:.4f} | {a:.4f} | {a - b:+.4f} |")
    lines += [
        "",
        "## Data",
        "",
        f"- new conversations trained: {manifest['train']['conversations']}, held out for "
        f"the gate: {manifest['val']['conversations']}",
        f"- replayed from earlier versions: {len(replay)} (of {len(lineage.train)} kept)",
        f"- retired (a changed policy; not replayed, not in the old sets): {lineage.retired}",
        trained_line(manifest),
        "",
    ]
    path = candidate.path / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def trained_line(manifest: dict[str, Any]) -> str:
    if "pairs" in manifest:
        pairs = manifest["pairs"]
        return (
            f"- DPO on {pairs['pairs']} preference pairs: `data/pairs.jsonl` (sha256 "
            f"{pairs['sha256'][:16]}...)"
        )
    return f"- trained on: `data/mix.jsonl` (sha256 {manifest['mix']['sha256'][:16]}...)"


def read_new(files: list[str]) -> tuple[list[Conversation], list[dict[str, Any]]]:
    """Conversations from ``files`` (any training format, validated the same way) and the
    manifest entries naming each file with its hash."""
    from chattune.data.readers import read_many
    from chattune.learn.registry import sha256_file

    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise DataError([f"{f}: no such file" for f in missing])
    return read_many(files), [{"file": str(f), "sha256": sha256_file(f)} for f in files]
