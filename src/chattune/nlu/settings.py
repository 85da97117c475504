"""The NLU's settings, apart from the code that uses them: the CLI and bot profiles read
them without importing numpy or the models.

``NluSettings`` is a bot profile's ``nlu:`` section (see :mod:`chattune.nlu.pipeline`);
``IntentTraining`` is how ``chattune nlu train`` trains (see :mod:`chattune.nlu.train`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class NluSettings(BaseModel):
    """The ``nlu:`` section of a bot profile."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="intent model folder (chattune nlu train)")
    min_confidence: float | None = Field(None, ge=0, le=1)
    patterns: dict[str, str | list[str]] = Field(default_factory=dict)
    gazetteer: dict[str, list[str]] = Field(default_factory=dict)
    region: str = Field("US", min_length=2, max_length=2, description="phone numbers' country")
    currency: str = Field("USD", min_length=3, max_length=3, description="what '$' means")
    memory_turns: int = Field(
        5, ge=1, le=50, description="customer turns read for sentiment and remembered entities"
    )


class IntentTraining(BaseModel):
    """How an intent classifier is trained (``chattune nlu train``'s settings)."""

    model_config = ConfigDict(extra="forbid")

    regime: Literal["auto", "finetune", "fewshot", "zeroshot"] = "auto"
    encoder: str = Field("minilm", description="minilm (embedded) or a Hugging Face encoder folder")
    finetune_min: int = Field(16, ge=1, description="auto: fine-tune from this many per intent")
    validation: float = Field(0.2, gt=0, lt=1, description="share of each intent held out")
    epochs: int = Field(30, ge=1, le=1000, description="finetune: at most this many epochs")
    patience: int = Field(4, ge=1, description="finetune: epochs without improvement to stop")
    lr: float = Field(5e-5, gt=0, le=1)
    pooling: Literal["mean", "cls"] = Field(
        "mean",
        description="finetune: head on mean-pooled tokens (as sentence encoders "
        "are trained) or transformers' [CLS] head",
    )
    batch_size: int = Field(16, ge=1, le=1024)
    pairs: int = Field(20, ge=1, le=1000, description="fewshot: pairs per example (SetFit)")
    keep: float = Field(
        0.95,
        gt=0,
        le=1,
        description="calibration without out_of_scope "
        "examples: share of correct held-out predictions to keep",
    )
    entities: Literal["auto", "off"] = Field(
        "off",
        description="auto: also train an entity tagger for marked types no pattern covers "
        "(about +8 ms a message: docs/nlu.md)",
    )
    entity_epochs: int = Field(8, ge=1, le=1000, description="epochs of the entity tagger")
    seed: int = 0
