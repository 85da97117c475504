"""``chattune data check|stats|export-feedback``: look at data before training on it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from chattune.cli.command import Command
from chattune.cli.common import EMBEDDED
from chattune.config import DataFormat, Section
from chattune.data.render import MaskPolicy

FORMAT_HELP = "data format; auto: from the extension and first record"


class DataCheckConfig(Section):
    """``chattune data check``: which files, read how."""

    files: list[str] = Field(min_length=1, description="data files")
    format: DataFormat = Field("auto", description=FORMAT_HELP)
    objective: Literal["chat", "lm"] = Field("chat", description="lm: raw text documents")


class DataStatsConfig(Section):
    """``chattune data stats``: which files, measured with which model's chat template."""

    files: list[str] = Field(min_length=1, description="data files")
    format: DataFormat = Field("auto", description=FORMAT_HELP)
    base: str = Field(EMBEDDED, description="model whose tokenizer and chat template to use")
    max_len: int = Field(1024, ge=8, description="tokens per example, as in training")
    mask: MaskPolicy = Field(MaskPolicy.ASSISTANT, description="which turns are trained")
    chat_template: str | None = Field(
        None, description="a .jinja file or inline Jinja instead of the model's (as in training)"
    )


class ExportFeedbackConfig(Section):
    """``chattune data export-feedback``: from which database, into which file."""

    db: str = Field("chattune.db", description="sqlite path or SQLAlchemy URL")
    out: str = Field(min_length=1, description="training JSONL to write")
    owner: str | None = Field(None, description="only this owner's conversations (its hash)")
    pairs: bool = Field(
        False,
        description="write preference pairs instead: each correction chosen over the reply "
        "it corrected (TRL's prompt/chosen/rejected format, for DPO)",
    )


def cmd_data_check(cfg: DataCheckConfig) -> int:
    """Validate data files; print every problem as FILE:LINE: message."""
    from chattune.data.readers import read_many

    items = read_many(cfg.files, cfg.format, cfg.objective)
    kind = "documents" if cfg.objective == "lm" else "conversations"
    print(f"ok: {len(items)} {kind} in {len(cfg.files)} file(s)")
    return 0


def cmd_data_stats(cfg: DataStatsConfig) -> int:
    """Count conversations, turns and tokens under the model's chat template."""
    from chattune.data.readers import read_many
    from chattune.data.render import apply_chat_template_override, read_chat_template
    from chattune.data.stats import data_stats
    from chattune.model.loading import base_folder, load_tokenizer, quiet_transformers

    quiet_transformers()
    conversations = read_many(cfg.files, cfg.format)  # data errors before a slow load
    if cfg.chat_template:
        read_chat_template(cfg.chat_template)  # a missing file before the load, too
    tokenizer = load_tokenizer(base_folder(cfg.base))
    apply_chat_template_override(tokenizer, cfg.chat_template)
    stats = data_stats(conversations, tokenizer, cfg.max_len, cfg.mask).rows()
    width = max(len(k) for k in stats)
    for key, value in stats.items():
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_export_feedback(cfg: ExportFeedbackConfig) -> int:
    """Write thumbs-up replies, corrections and agents' answers to handed-off conversations
    from the server's database as training JSONL: one {"messages": [...], "owner": HASH} per
    line (HASH: the API key's hash). Every line passes `chattune data check`."""
    from chattune.data.jsonl import write_jsonl
    from chattune.serve.learning import preference_pairs
    from chattune.serve.store import Store

    store = Store(cfg.db)
    try:
        if cfg.pairs:
            with store.session() as s:
                count = write_jsonl(cfg.out, preference_pairs(s, cfg.owner))
            print(f"wrote {count} preference pairs to {cfg.out}")
        else:
            count = write_jsonl(cfg.out, store.feedback_conversations(owner=cfg.owner))
            print(f"wrote {count} conversations to {cfg.out}")
    finally:
        store.close()
    return 0


DATA_CHECK = Command(
    "data check",
    DataCheckConfig,
    {"FILE": "files", "--format": "format", "--objective": "objective"},
    cmd_data_check,
)
DATA_STATS = Command(
    "data stats",
    DataStatsConfig,
    {
        "FILE": "files",
        "--format": "format",
        "--base": "base",
        "--max-len": "max_len",
        "--mask": "mask",
        "--chat-template": "chat_template",
    },
    cmd_data_stats,
)
EXPORT_FEEDBACK = Command(
    "data export-feedback",
    ExportFeedbackConfig,
    {"--db": "db", "--out": "out", "--owner": "owner", "--pairs": "pairs"},
    cmd_export_feedback,
)
COMMANDS = [DATA_CHECK, DATA_STATS, EXPORT_FEEDBACK]
