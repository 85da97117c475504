"""Evaluation reports: one HTML page (images inline) and a Markdown twin (images beside).

The page holds the metric table, the training curves from the model folder's
``metrics.jsonl`` when it has one, bar charts of the main metrics, and a sample of
conversations with the reference and each model's reply side by side. With a knowledge base
(``eval --kb``) it adds the grounded rates and questions answered side by side, the ones the
models disagree on first, each reply with its cited sources and the facts it stated.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from chattune.evaluate.grounded import GROUNDED_KEYS
from chattune.evaluate.scoring import METRIC_KEYS
from chattune.runs import read_metrics

CHART_METRICS = ("bleu", "rouge_1", "rouge_l", "f1")


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def training_curve(folder: str) -> bytes | None:
    """Train loss and eval loss against step, if ``folder`` is a chattune run."""
    records = read_metrics(folder) if Path(folder).is_dir() else []
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(*zip(*train, strict=True), label="train loss", lw=1)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"training: {folder}")
    ax.legend()
    data = _png(fig)
    plt.close(fig)
    return data


def metric_bars(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    models = [(result["model"], result["metrics"])]
    if "compare" in result:
        models.append((result["compare"]["model"], result["compare"]["metrics"]))
    x = np.arange(len(CHART_METRICS))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / len(models)
    for i, (name, metrics) in enumerate(models):
        ax.bar(x + i * width, [metrics[k] for k in CHART_METRICS], width, label=name)
    ax.set_xticks(x + width * (len(models) - 1) / 2, CHART_METRICS)
    ax.set_ylabel("score (0-100)")
    ax.legend()
    data = _png(fig)
    plt.close(fig)
    return data


def _table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    cmp = result.get("compare")
    header = ["metric", result["model"], *([cmp["model"], "delta", "95% CI"] if cmp else [])]
    rows = []
    for key in METRIC_KEYS if result["metrics"] is not None else ():
        row = [key, f"{result['metrics'][key]:.3f}"]
        if cmp:
            d = cmp["delta"][key]
            row += [
                f"{cmp['metrics'][key]:.3f}",
                f"{d['delta']:+.3f}",
                f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]",
            ]
        rows.append(row)
    return header, rows


def _samples(result: dict[str, Any], n: int) -> list[dict[str, Any]]:
    out = []
    other = result.get("compare", {}).get("per_example")
    for i, (history, rec) in enumerate(zip(result["examples"], result["per_example"], strict=True)):
        if i >= n:
            break
        out.append(
            {
                "id": rec["id"],
                "history": history,
                "reference": rec["reference"],
                "a": rec["reply"],
                "b": other[i]["reply"] if other else None,
            }
        )
    return out


_LEGEND = "+ a fact found, - a fact missed; * a gold source (it holds the answer)."


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def grounded_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The grounded rates as a table: one row per rate, the models, delta and 95% CI."""
    block, cmp = result["grounded"], result.get("compare", {}).get("grounded")
    header = ["rate", result["model"]]
    header += [result["compare"]["model"], "delta", "95% CI"] if cmp else []
    rows = []
    for key in GROUNDED_KEYS:
        row = [key, _rate(block["metrics"][key])]
        if cmp:
            d = cmp["delta"][key]
            ci = d["ci95"]
            delta = "-" if d["delta"] is None else f"{d['delta']:+.3f}"
            row += [
                _rate(cmp["metrics"][key]),
                delta,
                f"[{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "-",
            ]
        rows.append(row)
    return header, rows


def _verdict(record: dict[str, Any]) -> str:
    """One line on a grounded reply: facts found, citations, don't-know."""
    facts = [f"{'+' if f['matched'] else '-'}{f['fact'][0]}" for f in record["facts"]]
    cited = [f"[{n}]" + ("*" if _is_gold(record, n) else "") for n in record["cited"]]
    parts = [
        f"facts {' '.join(facts)}" if facts else "",
        f"cites {' '.join(cited)}" if cited else "",
    ]
    parts.append(f"declined ({record['declined']})" if record["declined"] else "")
    return "; ".join(p for p in parts if p) or "no fact, no citation"


def _is_gold(record: dict[str, Any], n: int) -> bool:
    return any(s["index"] == n and s["gold"] for s in record["sources"])


def grounded_samples(result: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` questions with each model's reply, the ones where the models' facts or
    don't-knows differ first (then file order): the examples a reader learns most from."""
    mine = result["grounded"].get("per_example", [])
    theirs = result.get("compare", {}).get("grounded", {}).get("per_example") or [None] * len(mine)

    def differ(pair: tuple[dict[str, Any], dict[str, Any] | None]) -> bool:
        a, b = pair
        return b is not None and (a["fact_hit"], a["declined"]) != (b["fact_hit"], b["declined"])

    pairs = sorted(zip(mine, theirs, strict=True), key=lambda p: not differ(p))
    return [{"id": a["id"], "question": a["question"], "a": a, "b": b} for a, b in pairs[:n]]


def _sources_line(record: dict[str, Any]) -> str:
    """The sources shown with a reply, gold ones starred: ``[1]* returns.md, Returns``."""
    shown = [f"[{s['index']}]{'*' if s['gold'] else ''} {s['source']}, {s['location']}"
             for s in record["sources"]]  # fmt: skip
    return "; ".join(shown) or f"none ({record['route']})"


def write_report(result: dict[str, Any], path: str | Path, samples: int = 8) -> list[Path]:
    """Write ``path`` (HTML) and the same report as Markdown beside it; return the files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = {"metrics": metric_bars(result)} if result["metrics"] is not None else {}
    for name in [result["model"], result.get("compare", {}).get("model")]:
        if name and (curve := training_curve(name)) is not None:
            images[f"training {name}"] = curve
    header, rows = _table_rows(result)
    grounded = grounded_samples(result, samples) if "grounded" in result else []
    written = [path]
    page = _html(result, header, rows, images, _samples(result, samples))
    path.write_text(page.replace("</body>", _grounded_html(result, grounded) + "</body>"))
    md = path.with_suffix(".md")
    written.append(md)
    image_files = []
    for i, data in enumerate(images.values()):
        image = path.with_name(f"{path.stem}-{i}.png")
        image.write_bytes(data)
        image_files.append(image)
    written += image_files
    text = _markdown(result, header, rows, list(images), image_files, _samples(result, samples))
    md.write_text(text + _grounded_markdown(result, grounded))
    return written


def _html(result, header, rows, images, samples) -> str:
    e = html.escape
    b = result.get("compare", {}).get("model")
    table = (
        "<tr>"
        + "".join(f"<th>{e(h)}</th>" for h in header)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    )
    figures = "".join(
        f'<figure><img alt="{e(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{e(name)}</figcaption></figure>'
        for name, data in images.items()
    )
    convs = ""
    for s in samples:
        turns = "".join(
            f'<p class="{e(m["role"])}"><b>{e(m["role"])}:</b> {e(m["content"])}</p>'
            for m in s["history"]
        )
        replies = f"<td>{e(s['reference'])}</td><td>{e(s['a'])}</td>"
        replies += f"<td>{e(s['b'])}</td>" if b else ""
        convs += f'<tr><td class="history"><small>{e(s["id"])}</small>{turns}</td>{replies}</tr>'
    conv_head = f"<th>history</th><th>reference</th><th>{e(result['model'])}</th>"
    conv_head += f"<th>{e(b)}</th>" if b else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chattune evaluation</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;
vertical-align:top}}th{{background:#f3f3f3}}figure{{display:inline-block;margin:0 1em 1em 0}}
.history p{{margin:.2em 0}}.user{{color:#124}}.system{{color:#777}}</style></head><body>
<h1>chattune evaluation</h1>
<p>{result["n_examples"]} assistant turns from {e(", ".join(result["data"]))};
model <code>{e(result["model"])}</code>{f" compared with <code>{e(b)}</code>" if b else ""}.</p>
{f"<h2>Metrics</h2><table>{table}</table>" if rows else ""}
{f"<h2>Charts</h2>{figures}" if figures else ""}
{f"<h2>Sample conversations</h2><table><tr>{conv_head}</tr>{convs}</table>" if convs else ""}
</body></html>
"""


def _grounded_html(result: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """The "Grounded answers" section: the rates, then questions with each model's reply."""
    if "grounded" not in result:
        return ""
    e, block = html.escape, result["grounded"]
    header, rows = grounded_rows(result)
    table = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
    table += "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    b = result.get("compare", {}).get("model")
    head = f"<th>question</th><th>{e(result['model'])}</th>" + (f"<th>{e(b)}</th>" if b else "")
    body = ""
    for s in samples:
        cells = "".join(
            f"<td>{e(r['reply'])}<br><small>{e(_verdict(r))}<br>sources: "
            f"{e(_sources_line(r))}</small></td>"
            for r in (s["a"], s["b"])
            if r is not None
        )
        body += f"<tr><td><small>{e(s['id'])}</small><br>{e(s['question'])}</td>{cells}</tr>"
    where = f"{block['kb']}, k {block['k']}, {block['mode']}"
    samples_html = f"<table><tr>{head}</tr>{body}</table>" if body else ""
    return (
        f"<h2>Grounded answers</h2><p>{block['metrics']['n_questions']} questions, "
        f"knowledge base {e(where)}; {_LEGEND}</p>"
        f"<table>{table}</table>{samples_html}\n"
    )


def _grounded_markdown(result: dict[str, Any], samples: list[dict[str, Any]]) -> str:
    """The "Grounded answers" section in Markdown (after the rest of the report)."""
    if "grounded" not in result:
        return ""
    block = result["grounded"]
    header, rows = grounded_rows(result)
    lines = ["", "## Grounded answers", ""]
    where = f"knowledge base {block['kb']}, k {block['k']}, {block['mode']}"
    lines.append(f"{block['metrics']['n_questions']} questions, {where}; {_LEGEND}")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    models = [result["model"], result.get("compare", {}).get("model")]
    for s in samples:
        lines += ["", f"### {s['id']}", "", f"- **user**: {s['question']}"]
        for name, r in zip(models, (s["a"], s["b"]), strict=True):
            if r is not None:
                lines.append(f"- *{name}*: {r['reply']}")
                lines.append(f"  ({_verdict(r)}; sources: {_sources_line(r)})")
    return "\n".join(lines) + "\n"


def _markdown(result, header, rows, names, image_files, samples) -> str:
    lines = [
        "# chattune evaluation",
        "",
        f"{result['n_examples']} assistant turns from {', '.join(result['data'])}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += [""] + [f"![{n}]({f.name})" for n, f in zip(names, image_files, strict=True)]
    lines += ["", "## Sample conversations", ""]
    for s in samples:
        lines.append(f"### {s['id']}")
        lines += [f"- **{m['role']}**: {m['content']}" for m in s["history"]]
        lines.append(f"- *reference*: {s['reference']}")
        lines.append(f"- *{result['model']}*: {s['a']}")
        if s["b"] is not None:
            lines.append(f"- *{result['compare']['model']}*: {s['b']}")
        lines.append("")
    return "\n".join(lines)
