"""Crash-safe checkpoints: a checkpoint either exists completely or not at all.

Each checkpoint is written into a temporary folder, every file is fsynced, a ``COMPLETE``
marker is written last, and the folder is renamed into place (atomic on POSIX). A run killed
with ``kill -9`` at any moment leaves either the previous checkpoints or the new one, never a
half-written one; stale temporary folders are swept on the next start. The writers call a
``point(name, step)`` hook at the moments a kill is most likely to break that promise
(``train/hooks.py``), so tests can kill runs there.

Only trainable parameters are saved (a LoRA checkpoint is megabytes, not the whole base
model); that is why this is not Accelerate's ``save_state``, which writes every weight.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from chattune.train.hooks import PointHook, nowhere

MARKER = "COMPLETE"


@dataclass
class TrainState:
    """Where the loop is; enough to continue exactly where it stopped."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of the current epoch already trained on (this rank)
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_gain: int = 0
    tokens_seen: int = 0
    # The latest evaluation. Checkpointed so that a run resumed from the checkpoint written
    # just after an evaluation neither repeats it (a second record, one more patience count)
    # nor loses it (the final metrics in the summary).
    last_eval_step: int = -1
    last_eval: dict[str, float] = field(default_factory=dict)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def load_trainable(model: Any, path: Path) -> None:
    tensors = load_file(path)
    params = dict(model.named_parameters())
    missing = [n for n in tensors if n not in params]
    if missing:
        raise RuntimeError(f"{path}: parameters not in the model: {missing[:3]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    target: Path, write: Any, kind: str = "folder", step: int = 0, point: PointHook = nowhere
) -> Path:
    """Call ``write(tmp_folder)``, then publish ``tmp_folder`` as ``target`` atomically.

    ``kind`` and ``step`` name this write's points for ``point`` (``{kind}.before_rename``).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    (tmp / MARKER).write_text("ok\n")
    _fsync_tree(tmp)
    point(f"{kind}.before_rename", step)
    if target.exists():
        old = target.parent / f".old-{target.name}-{os.getpid()}"
        os.replace(target, old)
        point(f"{kind}.between_renames", step)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def rng_state() -> dict[str, Any]:
    """This process's random generators: Python, NumPy, torch's CPU one and every CUDA one."""
    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    # as a tensor and plain numbers, so that torch.load(weights_only=True) reads it back
    numpy_state = [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                   float(cached)]  # fmt: skip
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (generators it did not save are left alone)."""
    import numpy as np

    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    folder: Path,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    state: TrainState,
    config_yaml: str,
    point: PointHook = nowhere,
    *,
    rng_states: list[dict[str, Any]] | None = None,
    method_state: dict[str, Any] | None = None,
    batches: dict[str, Any] | None = None,
) -> Path:
    """Write ``folder`` (e.g. ``checkpoints/step-0000050``) with everything resume needs.

    ``rng_states`` holds every rank's generators (index = rank; default: this process's),
    ``method_state`` what the training method keeps besides weights (AdaLoRA's importance
    scores and rank pattern), ``batches`` what fixes the batches (see
    ``lifecycle.batch_fingerprint``): resume refuses a run whose batches would differ.
    """

    def write(tmp: Path) -> None:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        point("checkpoint.between_files", state.step)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"ranks": rng_states or [rng_state()]}, tmp / "rng.pt")
        if method_state is not None:
            torch.save(method_state, tmp / "method.pt")
        if batches is not None:
            (tmp / "batches.json").write_text(json.dumps(batches, indent=2))
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
        (tmp / "config.yaml").write_text(config_yaml)

    return write_atomically(folder, write, "checkpoint", state.step, point)


def save_best(folder: Path, model: Any, state: TrainState, point: PointHook = nowhere) -> Path:
    """Write the best weights so far (``checkpoints/best``): what the output ends up holding."""

    def write(tmp: Path) -> None:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))

    return write_atomically(folder, write, "best", state.step, point)


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete ``step-*`` checkpoints, oldest first."""
    if not root.exists():
        return []
    found = [p for p in root.glob("step-*") if (p / MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def sweep_incomplete(root: Path) -> None:
    """Clean up after a run that died while writing.

    Half-written ``.tmp-*`` folders are removed. An ``.old-NAME-PID`` folder is the previous
    version of NAME, moved aside just before the new one was renamed in: if the process died
    between the two renames, it is moved back; otherwise it is removed.
    """
    if not root.exists():
        return
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".old-*"):
        name = p.name.removeprefix(".old-").rsplit("-", 1)[0]
        if (root / name).exists():
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.replace(p, root / name)


def prune(root: Path, keep: int) -> None:
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    folder: Path, model: Any, optimizer: Any, scheduler: Any, rank: int = 0
) -> TrainState:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the loop state.

    A checkpoint made by fewer processes (a forced resume) gives the extra ranks rank 0's
    generators. The method's state (``method.pt``) is :func:`load_method_state`'s.
    """
    load_trainable(model, folder / "trainable.safetensors")
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    ranks = rng.get("ranks", [rng])  # checkpoints before per-rank states held one
    set_rng_state(ranks[rank] if rank < len(ranks) else ranks[0])
    return TrainState(**json.loads((folder / "state.json").read_text()))


def load_method_state(folder: Path) -> dict[str, Any] | None:
    """The training method's saved state (``method.pt``), or None if it saved none."""
    path = folder / "method.pt"
    return torch.load(path, weights_only=True) if path.exists() else None


def load_batches(folder: Path) -> dict[str, Any] | None:
    """What fixed the checkpointed run's batches (``batches.json``), or None (older runs)."""
    path = folder / "batches.json"
    return json.loads(path.read_text()) if path.exists() else None


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value
