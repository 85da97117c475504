"""The model card (``README.md``) written into every output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chattune.config import RunConfig


def _rows(cfg: RunConfig) -> list[tuple[str, str]]:
    d, t = cfg.data, cfg.train
    loss_on = {"chat": d.mask.value, "lm": "all tokens"}.get(d.objective, "DPO: chosen vs rejected")
    val = ", ".join(f"`{p}`" for p in d.val)
    if not val:
        val = f"{d.val_split:.0%} of the training data" if d.val_split else "none"
    return [
        ("base model", f"`{cfg.model.base}`"),
        ("method", cfg.adapter.method),
        ("objective", f"{d.objective} (loss on: {loss_on})"),
        ("training data", ", ".join(f"`{p}`" for p in d.train)),
        ("validation data", val),
        ("optimizer", f"{t.optimizer}, lr {t.lr}, {t.scheduler} schedule, decay {t.weight_decay}"),
        ("batch", f"{t.batch_size} x {t.grad_accum} accumulation, max length {d.max_len}"),
    ]


def write_model_card(output: Path, cfg: RunConfig, summary: dict[str, Any]) -> None:
    """Say what this model is, what it was trained on and how well, and how to use it."""
    rows = [*_rows(cfg), *((k, str(v)) for k, v in summary.items())]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    text = f"""# {output.name}

Fine-tuned with chattune from `{cfg.model.base}`.

| what | value |
|---|---|
{table}

The full resolved configuration is in `config.yaml`; the loss curve in `metrics.jsonl` and
`tensorboard/` (`tensorboard --logdir {output}`).

## Use

```bash
chattune generate --model {output} --prompt "Hello!"
```

or in Python:

```python
from chattune.model.loading import load_model
model, tokenizer = load_model("{output}")
```
"""
    (output / "README.md").write_text(text)
