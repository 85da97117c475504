"""The package's layers, read from the source: imports only point down the declared order.

A new import against the order fails here with the offending file and line, so the layer
diagram in docs/design.md stays true without anyone re-drawing it by hand.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "chattune"

#: Each layer and the layers right below it; what it may import is the closure of these.
#: The partial order of ARCHITECTURE.md: train knows nothing of chat or evaluate (in-training
#: generation is a callback handed in from above), evaluate sits above chat (every reply
#: goes through the engine), serve above chat and learn, cli on top.
BELOW: dict[str, set[str]] = {
    "errors": set(),
    "runs": {"data"},
    "data": {"errors"},
    "config": {"data"},
    "model": {"config", "data", "runs"},
    "backends": {"model"},
    "train": {"model", "runs"},
    "knowledge": {"model"},
    "nlu": {"model"},
    "chat": {"backends", "knowledge", "nlu"},
    "evaluate": {"chat", "runs"},
    "learn": {"train", "evaluate"},
    "serve": {"chat", "learn"},
    "cli": {"serve", "learn", "evaluate", "train", "chat"},
}


def allowed(layer: str) -> set[str]:
    seen: set[str] = set()
    todo = list(BELOW[layer])
    while todo:
        nxt = todo.pop()
        if nxt not in seen:
            seen.add(nxt)
            todo += BELOW[nxt]
    return seen | {layer}


def layer_of(module: str) -> str:
    """``chattune.serve.app`` -> ``serve``; ``chattune.errors`` -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "chattune"


def imports(path: Path) -> list[tuple[int, str]]:
    """Every ``chattune.*`` module imported anywhere in the file, function bodies too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names if n.startswith("chattune.")][:1]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("chattune.")]
    return found


def test_every_module_belongs_to_a_declared_layer() -> None:
    layers = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.name != "__init__.py"}
    layers = {n for n in layers if not n.startswith(("_", ".")) and n not in ("py", "static")}
    assert layers - {"py"} <= set(BELOW) | {"py.typed"}, sorted(layers - set(BELOW))


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        source = layer_of(module)
        if source not in BELOW:
            continue  # chattune/__init__.py
        for line, target in imports(path):
            if layer_of(target) not in allowed(source):
                wrong.append(f"{path.relative_to(SRC.parent)}:{line}: {source} -> {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_help_imports_neither_torch_nor_the_knowledge_stack() -> None:
    probe = (
        "import sys, contextlib, io\n"
        "from chattune.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'faiss', 'sentence_transformers', 'bm25s', 'peft')\n"
        "         or m.startswith('chattune.knowledge')]\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]
