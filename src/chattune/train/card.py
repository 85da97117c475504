"""The model card (``README.md``) written into every output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chattune.config import RunConfig


def write_model_card(output: Path, cfg: RunConfig, summary: dict[str, Any]) -> None:
    """Say what this model is, what it was trained on and how well, and how to use it."""
    metrics = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
    text = f"""# {output.name}

Fine-tuned with [chattune](https://example.invalid/chattune) from `{cfg.model.base}`.

| what | value |
|---|---|
| base model | `{cfg.model.base}` |
| method | {cfg.adapter.method} |
| objective | {cfg.data.objective} (loss on: {cfg.data.mask.value if cfg.data.objective == "chat" else "all tokens"}) |
| training data | {", ".join(f"`{p}`" for p in cfg.data.train)} |
| validation data | {", ".join(f"`{p}`" for p in cfg.data.val) or (f"{cfg.data.val_split:.0%} of training data" if cfg.data.val_split else "none")} |
| optimizer | {cfg.train.optimizer}, lr {cfg.train.lr}, {cfg.train.scheduler} schedule, weight decay {cfg.train.weight_decay} |
| batch | {cfg.train.batch_size} x {cfg.train.grad_accum} accumulation, max length {cfg.data.max_len} |
{metrics}

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
