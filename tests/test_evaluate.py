"""Evaluation: metrics against hand counts and the reference libraries; an overfit tiny
model scores perplexity ~1 and BLEU 100; JSON keys, report, ratings, CLI."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from chattune.chat.profile import BotProfile
from chattune.cli import main
from chattune.config import build_config
from chattune.data.types import Conversation, Message
from chattune.evaluate.examples import turn_examples
from chattune.evaluate.metrics import (
    bleu_from_stats,
    bleu_stats,
    distinct_n,
    normalize_answer,
    perplexity,
    rouge,
    token_f1,
)
from chattune.evaluate.ratings import run_rate, summarize_ratings, wilson_interval
from chattune.evaluate.report import write_report
from chattune.evaluate.run import EvalSettings, evaluate_models, write_json
from chattune.evaluate.scoring import METRIC_KEYS, aggregate, bootstrap_deltas, make_records
from chattune.model.generation import GenerationOptions
from chattune.train.loop import run_train
from tests.conftest import conversation, write_jsonl

HYPS = ["the cat sat on the mat today", "you can return items within 45 days", "hello there"]
REFS = ["the cat sat on a mat", "returns are accepted within 45 days of delivery", "hi there"]


def test_token_f1_and_normalisation_by_hand() -> None:
    assert normalize_answer("The  Return window, is 45 days!") == "return window is 45 days"
    # prediction {returns, within, 45, days}; reference {you, can, return, within, 45, days}:
    # 3 common -> precision 3/4, recall 3/6 -> F1 = 2 * .75 * .5 / 1.25 = 0.6
    assert token_f1("returns within 45 days", "You can return within 45 days") == pytest.approx(60)
    assert token_f1("", "") == 100.0 and token_f1("cat", "") == 0.0
    assert token_f1("a", "") == 100.0  # "a" is an article: both normalise to empty


def test_distinct_n_by_hand() -> None:
    texts = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 unique of 7; bigrams: ab ba ab ab bc -> 3 unique of 5
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n([""], 2) == 0.0


def test_bleu_matches_sacrebleu_called_directly() -> None:
    from sacrebleu.metrics import BLEU

    ours = bleu_from_stats(bleu_stats(HYPS, REFS).sum(axis=0))
    for n in range(1, 5):
        expected = BLEU(max_ngram_order=n).corpus_score(HYPS, [REFS]).score
        assert ours[f"bleu_{n}"] == pytest.approx(expected)
    assert ours["bleu"] == ours["bleu_4"]


def test_rouge_matches_rouge_score_called_directly() -> None:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for h, r in zip(HYPS, REFS, strict=True):
        direct = scorer.score(r, h)
        ours = rouge(h, r)
        assert ours["rouge_1"] == pytest.approx(100 * direct["rouge1"].fmeasure)
        assert ours["rouge_2"] == pytest.approx(100 * direct["rouge2"].fmeasure)
        assert ours["rouge_l"] == pytest.approx(100 * direct["rougeL"].fmeasure)


def test_perplexity_is_token_weighted() -> None:
    assert perplexity([2.0, 0.0], [1, 1]) == pytest.approx(np.exp(1.0))
    assert perplexity([np.log(4) * 3], [3]) == pytest.approx(4.0)


def test_aggregate_and_bootstrap() -> None:
    records = make_records(
        ["a", "b", "c"], REFS, HYPS, [True, True, False], [(1.0, 2), (2.0, 2), (0.0, 0)]
    )
    m = aggregate(records)
    assert set(m) == {*METRIC_KEYS, "n_examples"}
    assert m["non_stop_rate"] == pytest.approx(1 / 3) and m["perplexity"] == pytest.approx(
        np.exp(0.75)
    )
    same = bootstrap_deltas(records, records, samples=50)
    assert all(lo == hi == 0 for lo, hi in same.values())
    better = make_records(["a", "b", "c"], REFS, REFS, [True] * 3, [(0.5, 2)] * 3)
    delta = bootstrap_deltas(records, better, samples=200)
    assert delta["rouge_l"][0] > 0  # better on every example: the interval excludes 0


def test_turn_examples_cover_every_assistant_turn() -> None:
    conv = Conversation(
        [
            Message("system", "s"),
            Message("user", "q1"),
            Message("assistant", "a1"),
            Message("user", "q2"),
            Message("assistant", "a2"),
        ],
        "f:7",
    )
    ex = turn_examples([conv])
    assert [(e.id, e.reference, len(e.history)) for e in ex] == [
        ("f:7#3", "a1", 2),
        ("f:7#5", "a2", 4),
    ]
    assert len(turn_examples([conv, conv], limit=3)) == 3


@pytest.fixture(scope="module")
def overfit(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model trained (all weights) until it repeats four conversations verbatim."""
    root = tmp_path_factory.mktemp("overfit")
    data = write_jsonl(root / "four.jsonl", [conversation(i) for i in range(4)])
    cfg = build_config(
        flags={
            "model.base": str(tiny_model_dir),
            "data.train": [str(data)],
            "train.output": str(root / "run"),
            "train.progress": False,
        },
        overrides=[
            "train.max_steps=120",
            "train.lr=2e-2",
            "train.batch_size=4",
            "adapter.method=full",
            "train.warmup_ratio=0",
        ],
    )
    run_train(cfg)
    return root / "run", data


@pytest.fixture(scope="module")
def compared(overfit, tiny_model_dir) -> dict:
    model, data = overfit
    settings = EvalSettings(
        model=str(model),
        data=[str(data)],
        compare=str(tiny_model_dir),
        bootstrap=200,
        profile=BotProfile(generation=GenerationOptions(max_new_tokens=24)),
        progress=False,
    )
    return evaluate_models(settings)


def test_overfit_model_scores_perplexity_near_1_and_reproduces_replies(compared) -> None:
    m = compared["metrics"]
    assert m["perplexity"] < 1.1
    assert m["bleu"] > 95 and m["f1"] > 95 and m["non_stop_rate"] == 0
    base = compared["compare"]["metrics"]
    assert base["perplexity"] > 100  # the random base model
    d = compared["compare"]["delta"]["perplexity"]
    assert d["delta"] < 0 and d["ci95"][1] < 0


def test_json_keys_are_stable(compared, tmp_path) -> None:
    out = tmp_path / "eval.json"
    write_json(compared, out, per_example=False)
    data = json.loads(out.read_text())
    assert set(data) == {
        "model", "data", "n_examples", "profile", "generation", "backend", "lang", "metrics",
        "compare",
    }  # fmt: skip
    assert data["backend"] == "transformers"
    assert set(data["metrics"]) == {*METRIC_KEYS, "n_examples"}
    assert set(data["compare"]) == {"model", "backend", "metrics", "delta"}
    assert set(data["compare"]["delta"]["bleu"]) == {"delta", "ci95"}
    write_json(compared, out, per_example=True)
    record = json.loads(out.read_text())["per_example"][0]
    assert {"id", "reference", "reply", "stopped", "f1", "rouge_l"} <= set(record)


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append((tag, dict(attrs)))


def test_report_renders_with_images_and_samples(compared, tmp_path) -> None:
    files = write_report(compared, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    parser = _Collect()
    parser.feed(page)
    images = [a for t, a in parser.tags if t == "img"]
    # metric bars + the training curve of the overfit run (its folder has metrics.jsonl)
    assert len(images) == 2 and all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert "You have 45 days to return any item." in page
    md = (tmp_path / "report.md").read_text()
    assert "| perplexity |" in md and all(f.exists() for f in files)


def test_ratings_record_resume_and_summarise(tiny_model_dir, tmp_path) -> None:
    from chattune.backends.transformers import TransformersBackend
    from chattune.chat.engine import ChatEngine
    from chattune.model.loading import load_model

    conv = Conversation([Message("user", "q"), Message("assistant", "a")], "f:1")
    examples = turn_examples([conv] * 1) + turn_examples(
        [Conversation(conv.messages, f"f:{i}") for i in range(2, 5)]
    )
    engine = ChatEngine(TransformersBackend(*load_model(str(tiny_model_dir))))
    models = {"A": engine, "B": engine}
    out = tmp_path / "ratings.jsonl"
    answers = iter(["x", "1", "q"])  # an invalid key is asked again; then quit
    options = GenerationOptions(max_new_tokens=2)
    assert (
        run_rate(examples, models, out, options, ask=lambda _: next(answers), show=lambda _: None)
        == 1
    )
    answers = iter(["2", "t", "s"])
    assert (
        run_rate(examples, models, out, options, ask=lambda _: next(answers), show=lambda _: None)
        == 2
    )
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["f:1#2", "f:2#2", "f:3#2"]  # resumed after the first
    assert rows[2]["winner"] == "tie" and {rows[0]["winner"], rows[1]["winner"]} <= {"A", "B"}
    (summary,) = summarize_ratings(out)
    assert summary["n"] == 3 and summary["tie"] == pytest.approx(1 / 3)
    assert summary["win"] + summary["tie"] + summary["loss"] == pytest.approx(1)


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.49, 0.943)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_eval_cli(overfit, tmp_path, capsys) -> None:
    model, data = overfit
    out = tmp_path / "not" / "yet" / "m.json"  # folders are created
    assert (
        main(
            [
                "eval",
                "--model",
                str(model),
                "--data",
                str(data),
                "--max-examples",
                "3",
                "--max-new-tokens",
                "16",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["metric", str(model)]
    assert json.loads(out.read_text())["n_examples"] == 3


def test_eval_cli_bad_inputs(overfit, tmp_path, capsys) -> None:
    model, good = overfit
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "user"}]}\n')
    assert main(["eval", "--model", str(model), "--data", str(bad)]) == 2
    assert f"{bad}:1: turn 2: missing content" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--data", str(good)]) == 2
    assert "not a model folder: expected config.json" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["eval", "--model", str(model), "--data", str(empty)]) == 2
    assert "empty file" in capsys.readouterr().err
