"""Run under `accelerate launch`: train, then write this rank's view of the weights.

Used by test_distributed.py; the digest files are the test's, not chattune's.
"""

import hashlib
import json
import sys
from pathlib import Path

from chattune.config import build_config
from chattune.train.loop import fit
from chattune.train.setup import build_run


def main() -> None:
    digests, *overrides = sys.argv[1:]
    run = build_run(build_config(overrides=overrides))
    summary = fit(run)
    h = hashlib.sha256()
    for name, p in sorted(run.model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode() + p.detach().numpy().tobytes())
    rank = run.accelerator.process_index
    record = {
        "world": run.accelerator.num_processes,
        "type": str(run.accelerator.distributed_type),
        "digest": h.hexdigest(),
        "steps": summary["steps"],
    }
    (Path(digests) / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
