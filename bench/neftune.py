"""NEFTune on the demo recipe: configs/demo.yaml for STEPS steps with noise ALPHA, seed SEED;
prints the eval loss at every 10th step (docs/training.md, NEFTune).

    python bench/neftune.py ALPHA SEED STEPS
"""

import json
import sys
import tempfile
import time

from chattune.config import build_config
from chattune.runs import read_metrics
from chattune.train.loop import fit
from chattune.train.setup import build_run

alpha, seed, steps = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out = tempfile.mkdtemp(prefix=f"neftune-a{alpha:g}-s{seed}-")
overrides = [f"train.max_steps={steps}", f"train.seed={seed}", f"train.neftune_alpha={alpha}",
             f"train.output={out}", "train.eval_every=10", "train.save_every=0",
             "train.patience=0", "train.report_to=[]", "train.progress=false"]  # fmt: skip
start = time.time()
run = build_run(build_config("configs/demo.yaml", overrides=overrides))
summary = fit(run)
evals = {r["step"]: round(r["eval_loss"], 4) for r in read_metrics(out) if "eval_loss" in r}
print(json.dumps({"alpha": alpha, "seed": seed, "steps": steps, "eval_loss": evals,
                  "precision": str(run.accelerator.mixed_precision),
                  "wall_s": round(time.time() - start)}))  # fmt: skip
