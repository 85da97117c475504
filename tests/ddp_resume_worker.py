"""Run under `accelerate launch`: train, optionally dying at a step; record what it ended at.

    ddp_resume_worker.py OUT_DIR STOP_STEP key=value ...

With STOP_STEP > 0 every rank ends its process (``os._exit``: no cleanup, as in a crash) at
``step.end`` of that step, which comes right after the step's checkpoint. Otherwise the run
finishes and each rank writes ``rank{N}.json``: a digest of its trainable weights and its
torch generator's next draw. Used by test_distributed.py; the files are the test's.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from chattune.config import build_config
from chattune.train import TrainHooks
from chattune.train.loop import fit
from chattune.train.setup import build_run


def main() -> None:
    out, stop, *overrides = sys.argv[1:]

    def point(name: str, step: int) -> None:
        if name == "step.end" and step == int(stop):
            os._exit(0)

    run = build_run(build_config(overrides=overrides), TrainHooks(point=point))
    fit(run)
    h = hashlib.sha256()
    for name, p in sorted(run.model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode() + p.detach().numpy().tobytes())
    record = {"digest": h.hexdigest(), "next_draw": torch.rand(1).item()}
    (Path(out) / f"rank{run.accelerator.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
