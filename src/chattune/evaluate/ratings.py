"""Human evaluation: pick the better of two anonymised replies; summarise the preferences.

Each judgement is one JSON line, appended and flushed at once, so a session can stop at
any moment (``q`` or Ctrl+C) and ``chattune rate`` resumes after the last rated example::

    {"id": "test.jsonl:3#4", "models": ["A", "B"], "shown": ["B", "A"], "winner": "A"}

``winner`` is a model name or ``"tie"``. The web page of the serving issue can write the
same records.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chattune.chat.engine import ChatEngine
from chattune.data.jsonl import append_jsonl, read_jsonl
from chattune.evaluate.examples import TurnExample
from chattune.model.generation import GenerationOptions


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; stays inside [0, 1] for small n.

    Example:
        >>> [round(x, 3) for x in wilson_interval(8, 10)]
        [0.49, 0.943]
    """
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def read_ratings(path: str | Path) -> list[dict[str, Any]]:
    return [record for _, record in read_jsonl(path, missing_ok=True)]


def summarize_ratings(path: str | Path) -> list[dict[str, Any]]:
    """Win/tie/loss rates of the first model against the second, per model pair."""
    pairs: dict[tuple[str, str], list[str]] = {}
    for r in read_ratings(path):
        pairs.setdefault(tuple(r["models"]), []).append(r["winner"])
    out = []
    for (a, b), winners in pairs.items():
        n = len(winners)
        counts = {"win": winners.count(a), "tie": winners.count("tie"), "loss": winners.count(b)}
        row: dict[str, Any] = {"model": a, "against": b, "n": n}
        for key, count in counts.items():
            row[key] = count / n
            row[f"{key}_ci95"] = list(wilson_interval(count, n))
        out.append(row)
    return out


def format_summary(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no ratings yet"
    lines = []
    for r in rows:
        lines.append(f"{r['model']} vs {r['against']} ({r['n']} ratings)")
        for key in ("win", "tie", "loss"):
            lo, hi = r[f"{key}_ci95"]
            lines.append(f"  {key:<5}{r[key]:>7.1%}   95% CI [{lo:.1%}, {hi:.1%}]")
    return "\n".join(lines)


def run_rate(
    examples: list[TurnExample],
    engines: dict[str, ChatEngine],
    out: str | Path,
    options: GenerationOptions | None,
    ask: Callable[[str], str],
    show: Callable[[str], None],
    seed: int = 0,
) -> int:
    """Show each unrated example with two shuffled replies; record the choice. Returns count.

    Args:
        engines: exactly two ``name -> chat engine`` entries, in report order.
        ask / show: the terminal's input and output (the CLI passes ``input`` and
            ``print``; library code never talks to the terminal itself).
    """
    names = list(engines)
    if len(names) != 2:
        raise ValueError("rating compares exactly two models")
    done = {r["id"] for r in read_ratings(out) if r["models"] == names}
    todo = [e for e in examples if e.id not in done]
    show(f"{len(done)} rated already, {len(todo)} to go. Keys: 1, 2, t(ie), s(kip), q(uit).")
    rated = 0
    for ex in todo:
        replies = {n: e.generate([list(ex.history)], options)[0].text for n, e in engines.items()}
        shown = names[:]
        random.Random(f"{seed}:{ex.id}").shuffle(shown)
        show("\n".join(f"{m.role}: {m.content}" for m in ex.history[-6:]))
        show(f"\n[1] {replies[shown[0]]}\n\n[2] {replies[shown[1]]}\n")
        answer = _ask_choice(ask)
        if answer == "q":
            break
        if answer == "s":
            continue
        winner = "tie" if answer == "t" else shown[int(answer) - 1]
        append_jsonl(out, {"id": ex.id, "models": names, "shown": shown, "winner": winner})
        rated += 1
    return rated


def _ask_choice(ask: Callable[[str], str]) -> str:
    while True:
        try:
            answer = ask("better reply? [1/2/t/s/q] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            return "q"
        if answer in ("1", "2", "t", "s", "q"):
            return answer
