"""Reading a finished (or running) training run's folder.

``chattune train`` leaves, among the weights and the tokenizer, two small files that other
layers read back: ``metrics.jsonl`` (one JSON record per logged step or evaluation) and
``chattune.json`` (the base model, the method and the run's summary). This module is the one
place that knows their names and shapes, so the training loop (which writes them), the
reports and the model loader (which read them) never import each other.

Example:
    >>> [r["step"] for r in read_metrics("runs/mybot") if "eval_loss" in r]  # doctest: +SKIP
    [20, 40, 60]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chattune.data.jsonl import read_jsonl

#: One JSON object per line: ``{"step": 3, "epoch": 0.75, "loss": 2.1, "lr": 0.0002, ...}``
#: for training steps, ``{"step": 4, "eval_loss": 2.3, "eval_ppl": 9.9, ...}`` for evaluations.
METRICS_FILE = "metrics.jsonl"
#: ``{"base": "...", "method": "lora", "steps": 60, "best_eval_loss": 1.9, ...}``
META_FILE = "chattune.json"


def read_metrics(output: str | Path) -> list[dict[str, Any]]:
    """Every record of ``output``'s ``metrics.jsonl``, in order; ``[]`` if it has none."""
    return [record for _, record in read_jsonl(Path(output) / METRICS_FILE, missing_ok=True)]


def read_meta(output: str | Path) -> dict[str, Any] | None:
    """``output``'s ``chattune.json`` (base model, method, summary), or None if it has none."""
    path = Path(output) / META_FILE
    return json.loads(path.read_text()) if path.exists() else None
