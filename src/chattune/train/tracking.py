"""Training metrics: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard.

This is the writer; :func:`chattune.runs.read_metrics` reads the file back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chattune.data.jsonl import append_jsonl, read_jsonl, write_jsonl
from chattune.runs import METRICS_FILE


class MetricsLogger:
    """Append metric records; on resume, forget records past the checkpoint's step.

    A run killed after step 7 but resumed from the step-5 checkpoint logged steps 6 and 7
    already; they are dropped so the file reads as one uninterrupted run. Only the main
    process writes (``enabled``); the others log nothing.

    Example:
        >>> with MetricsLogger(Path("runs/x")) as logger:  # doctest: +SKIP
        ...     logger.log({"step": 1, "loss": 2.5})
    """

    def __init__(self, output: Path, resume_step: int | None = None, enabled: bool = True):
        self.enabled = enabled
        self.path = output / METRICS_FILE
        self.writer = None
        if not enabled:
            return
        output.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            # A kill -9 can leave a torn last line: it is dropped with what came after the
            # checkpoint, and the file is replaced atomically (a kill now loses nothing).
            records = read_jsonl(self.path, problems=[])
            write_jsonl(self.path, [r for _, r in records if r.get("step", 0) <= resume_step])
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=purge)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        step = record["step"]
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, int | float):
                prefix = "eval" if key.startswith("eval_") else "train"
                self.writer.add_scalar(f"{prefix}/{key.removeprefix('eval_')}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
