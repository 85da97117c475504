"""Grounded evaluation (``chattune eval --kb``): fact matching, citations against the sources a
reply was shown, don't-know detection, the question files (the example's held-out set
checked against the knowledge base's text), the JSON and report, ``--compare`` deltas, and an
end-to-end run on the tiny models with a hashing knowledge base."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from chattune.chat.profile import BotProfile
from chattune.chat.routing import Decision
from chattune.cli import main
from chattune.errors import DataError
from chattune.evaluate.facts import contains_fact, declines, match_fact, normalize_fact_text
from chattune.evaluate.generation import generate_replies
from chattune.evaluate.grounded import (
    COUNT_KEYS,
    GROUNDED_KEYS,
    GroundedRecord,
    RecordingEngine,
    aggregate_grounded,
    grounded_deltas,
    retrieval_hits,
    score_reply,
)
from chattune.evaluate.questions import (
    GroundedQuestion,
    is_question_file,
    read_grounded_questions,
)
from chattune.knowledge.chunking import Chunk
from chattune.knowledge.grounding import Grounding, Knowledge, KnowledgeSettings
from chattune.knowledge.retrieval_eval import Question, read_questions
from chattune.knowledge.retrieve import Hit, Retriever
from chattune.knowledge.store import KnowledgeBase, StoredChunk
from chattune.model.generation import Generated
from tests.conftest import ROOT, FakeBackend, write_jsonl

SUPPORT = ROOT / "examples" / "support"
HELD_OUT = SUPPORT / "kb-grounded-test.jsonl"
NO_ANSWER = "I'm sorry, I don't have information about that. I can help with orders."

# -- facts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fact", "text", "found"),
    [
        ("45 days", "within forty-five days of delivery", True),
        ("45 days", "within 145 days", False),
        ("45 days", "within 45 daysish", False),
        ("Klarna", "Pay with KLARNA.", True),
        ("5 business days", "in 5\n   business  days", True),
        ("10,000 BTU", "10000 btu per burner", True),
        ("10000 BTU", "10,000 BTU", True),
        ("$40", "it costs 40 dollars", True),
        ("$40", "USD 40 flat", True),
        ("$40", "$40.00 flat", True),
        ("$40", "US$ 40 flat", True),
        ("$40", "$ 40 flat", True),
        ("$40", "$400 flat", False),
        ("$5", "$5.99 below that", False),
        ("$6.95", "a 6.95 dollar fee", True),
        ("4", "it costs $49", False),
        ("800", "call 1-800-555-0142", False),
        ("1.9 kg", "packed 1.9kg", True),
        ("1.9 kg", "1.9 kilograms", True),
        ("1.9 kg", "11.9 kg", False),
        ("9 kg", "1.9 kg", False),
        ("2 pm", "before 2 p.m. MT", True),
        ("2 pm", "before 2pm", True),
        ("2 pm", "before 12 pm", False),
        ("20 °F", "rated to 20 degrees F", True),
        ("7 °C", "comfort -7 °C", False),
        ("10%", "10 percent off", True),
        ("two-person", "a two person tent", True),
        ("1 hour", "within one hour", True),
        ("maker's warranty", "their maker\u2019s warranty", True),
        ("45", "４５日以内", True),  # full-width digits; no word boundary next to CJK
        ("help@pinecrest-outfitters.example", "mail help@pinecrest-outfitters.example.", True),
    ],
)
def test_fact_matching_normalises_both_sides(fact: str, text: str, found: bool) -> None:
    assert contains_fact(fact, text) is found


def test_normalised_form_by_hand() -> None:
    text = "Forty-five days, 10,000 BTU, 1.9kg, USD 40.00, 2 p.m., 20 °F, ten percent"
    assert normalize_fact_text(text) == "45 days, 10000 btu, 1.9 kg, $40, 2 pm, 20°f, 10%"
    assert not contains_fact("   ", "anything")  # an empty fact matches nothing


def test_alternatives_any_one_and_every_fact_required() -> None:
    question = _question(facts=(("14 days", "two weeks"), ("$5",)))
    both = score_reply(question, _said("Two weeks, and $5 off."), None, NO_ANSWER, True)
    assert [f["matched"] for f in both.facts] == ["two weeks", "$5"]
    assert both.fact_hit is True and both.fact_share == 1.0
    half = score_reply(question, _said("You have 14 days."), None, NO_ANSWER, True)
    assert [f["matched"] for f in half.facts] == ["14 days", None]
    assert half.fact_hit is False and half.fact_share == 0.5
    assert match_fact(("14 days", "two weeks"), "a fortnight") is None


# -- citations -----------------------------------------------------------------------------


def _chunk(i: int, source: str, faq_id: str | None = None) -> Hit:
    chunk = Chunk(
        f"text {i}",
        faq_id=faq_id,
        question="q?" if faq_id else None,
        answer="a." if faq_id else None,
    )
    return Hit(StoredChunk(i, source, "faq" if faq_id else "markdown", chunk), 1.0, 0.5, 0.0)


def _question(
    faq: tuple[str, ...] = (),
    sources: tuple[str, ...] = ("shipping.md",),
    facts: tuple[tuple[str, ...], ...] = (),
    answerable: bool = True,
) -> GroundedQuestion:
    gold = Question("Is shipping free?", frozenset(faq), sources if answerable else (), answerable)
    return GroundedQuestion("q.jsonl:1", gold, facts)


def _said(text: str) -> Generated:
    return Generated(text, True, 5)


def _shown(*hits: Hit) -> Decision:
    return Decision("knowledge", "default", None, Grounding("passages", list(hits), context="…"))


# Shown: [1] kb/shipping.md (gold by source), [2] kb/returns.md, [3] the FAQ entry "ship" (gold).
SHOWN = _shown(
    _chunk(1, "kb/shipping.md"), _chunk(2, "kb/returns.md"), _chunk(3, "kb/faq.csv", "ship")
)


@pytest.mark.parametrize(
    ("reply", "cited", "precision", "recall"),
    [
        ("Free over $60 [1].", [1], 1.0, 1.0),
        ("Free over $60 [1][2].", [1, 2], 0.5, 1.0),
        ("See [2].", [2], 0.0, 0.0),
        ("See [1], [3] and [4].", [1, 3, 4], 2 / 3, 1.0),  # [4] was never shown: a wrong cite
        ("Free over $60.", [], None, 0.0),  # cites nothing: no precision, recall 0
        ("免费。【3】", [3], 1.0, 1.0),
    ],
)
def test_citation_precision_and_recall(reply, cited, precision, recall) -> None:
    record = score_reply(_question(faq=("ship",)), _said(reply), SHOWN, NO_ANSWER, True)
    assert record.cited == cited
    assert [s["gold"] for s in record.sources] == [True, False, True]
    assert [s["cited"] for s in record.sources] == [n in cited for n in (1, 2, 3)]
    assert record.citation_precision == (pytest.approx(precision) if precision else precision)
    assert record.citation_recall == recall and record.gold_shown is True


def test_citations_without_a_gold_source_shown_or_an_answer() -> None:
    no_gold = _shown(_chunk(2, "kb/returns.md"))
    record = score_reply(_question(), _said("See [1]."), no_gold, NO_ANSWER, False)
    assert (record.gold_shown, record.citation_recall, record.citation_precision) == (
        False,
        None,
        0.0,
    )
    assert record.retrieval_hit is False
    unanswerable = _question(answerable=False)
    record = score_reply(unanswerable, _said("See [1]."), SHOWN, NO_ANSWER, None)
    assert not any(s["gold"] for s in record.sources)
    assert (record.citation_precision, record.citation_recall, record.gold_shown) == (
        None,
        None,
        None,
    )


# -- don't know ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "how"),
    [
        ("I don't know.", "phrase"),
        ("I\u2019m not sure about that one.", "phrase"),
        ("Sorry! I don't have any information on that.", "phrase"),  # the second sentence
        ("The documents don't mention a spare battery.", "phrase"),
        ("That is not covered in the reference documents.", "phrase"),
        ("I couldn't find anything about gift wrapping.", "phrase"),
        (
            "I'm sorry for any confusion. I'm Pine, your support assistant. However, I'm unable to "
            "provide that.",
            "phrase",
        ),  # past the apology and the introduction
        ("Several things are not included in returns: worn boots.", None),
        ("Sorry, as an AI I'm not equipped to book guided trips.", "phrase"),
        ("I'm sorry, I don't have information about that. Try our FAQ.", "no_answer_text"),
        ("You have 45 days to return it.", None),
        ("Standard is $5.99. Express is $14.99. I don't know about Alaska.", None),  # late hedge
        ("Yes, I know the answer: 45 days.", None),
        ("", None),
    ],
)
def test_dont_know_detection(reply: str, how: str | None) -> None:
    assert declines(reply, NO_ANSWER) == how


def test_dont_know_rates_and_the_engines_own_decision() -> None:
    gate = Decision("knowledge", "default", None, Grounding("no_answer", reply=NO_ANSWER))
    off_topic = _question(answerable=False)
    declined = score_reply(off_topic, _said(NO_ANSWER), gate, NO_ANSWER, None)
    assert declined.declined == "no_answer" and declined.route == "no_answer"
    answered = score_reply(off_topic, _said("Paris is the capital."), SHOWN, NO_ANSWER, None)
    wrongly = score_reply(_question(), _said("I do not know."), SHOWN, NO_ANSWER, True)
    right = score_reply(_question(), _said("Free over $60 [1]."), SHOWN, NO_ANSWER, True)
    m = aggregate_grounded([declined, answered, wrongly, right])
    assert m["dont_know_rate"] == 0.5 and m["false_dont_know_rate"] == 0.5
    assert (m["n_questions"], m["n_answerable"], m["n_unanswerable"]) == (4, 2, 2)


# -- question files ------------------------------------------------------------------------


def test_question_files_report_every_bad_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question": "Is it free?", "source": "a.md", "facts": ["$60", ["free", "no cost"]]},
            {"question": "Hi", "fact": ["x"], "source": "a.md"},
            {"question": "Who?", "answerable": False, "facts": ["x"]},
            {"question": "What?", "facts": ["x"]},
            {"question": "", "source": "a.md"},
            {"question": "Why?", "source": "a.md", "facts": [["x", 3]], "reference": 7},
        ],
    )
    with pytest.raises(DataError) as e:
        read_grounded_questions(path)
    problems = e.value.problems
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4", "5", "6", "6"], problems
    assert "unknown key 'fact'" in problems[0]
    assert "takes no faq_id, source or facts" in problems[1]
    assert "needs 'faq_id' and/or 'source'" in problems[2]
    good = write_jsonl(tmp_path / "good.jsonl", [json.loads(path.read_text().splitlines()[0])])
    (question,) = read_grounded_questions(good)
    assert question.facts == (("$60",), ("free", "no cost")) and question.id == f"{good}:1"
    assert is_question_file(good) and not is_question_file(SUPPORT / "val.jsonl")


# -- the held-out set of examples/support --------------------------------------------------


@pytest.fixture(scope="module")
def support_kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    kb = KnowledgeBase(tmp_path_factory.mktemp("support") / "kb", create=True, embedder="hashing")
    kb.add([SUPPORT / "kb"])
    return kb


def _gold_texts(kb: KnowledgeBase, question: Question) -> dict[str, str]:
    """Each gold location's text: an FAQ entry's answer, a document's passages."""
    chunks = list(kb.chunks(list(range(1, kb.count() + 1))).values())
    texts = {f: [c.chunk.answer for c in chunks if c.chunk.faq_id == f] for f in question.faq_ids}
    for s in question.sources:
        texts[s] = [c.chunk.index_text for c in chunks if c.source.endswith("/" + s)]
    return {name: "\n".join(t or ()) for name, t in texts.items()}


def test_held_out_facts_are_in_their_gold_sources(support_kb) -> None:
    questions = read_grounded_questions(HELD_OUT)
    answerable = [q for q in questions if q.answerable]
    assert len(answerable) >= 40 and len(questions) - len(answerable) >= 12
    assert len(read_questions(HELD_OUT)) == len(questions)  # kb eval reads the same file
    for q in answerable:
        assert q.facts and q.reference, q.id
        for name, text in _gold_texts(support_kb, q.gold).items():
            assert text, f"{q.id}: gold {name} is not in the knowledge base"
            for fact in q.facts:  # the first alternative is the KB's own wording
                assert contains_fact(fact[0], text), f"{q.id}: {fact[0]!r} not in {name}"
        for fact in q.facts:  # repeating the question must not score
            assert not any(contains_fact(alt, q.text) for alt in fact), (q.id, fact)


_STOP = {
    "a", "an", "the", "i", "my", "me", "you", "your", "we", "our", "is", "are", "do", "does",
    "did", "can", "could", "to", "of", "for", "in", "on", "at", "it", "its", "and", "or", "be",
    "been", "with", "what", "how", "when", "where", "which", "who", "will", "would", "there",
    "that", "this", "if",
}  # fmt: skip


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9$']+", text.lower())) - _STOP


def _tuning_and_training_questions() -> list[str]:
    with (SUPPORT / "kb" / "faq.csv").open() as f:
        found = [row["question"] for row in csv.DictReader(f)]
    for name in ("kb-paraphrases", "kb-unanswerable", "kb-keywords"):
        found += [json.loads(line)["question"] for line in (SUPPORT / f"{name}.jsonl").open()]
    for name in ("train", "val", "kb-questions"):
        for line in (SUPPORT / f"{name}.jsonl").open():
            found += [m["content"] for m in json.loads(line)["messages"] if m["role"] == "user"]
    return found


def test_held_out_questions_are_worded_unlike_tuning_and_training() -> None:
    others = [_words(t) for t in _tuning_and_training_questions()]
    assert len(others) > 200
    for q in read_grounded_questions(HELD_OUT):
        mine = _words(q.text)
        closest = max(len(mine & o) / len(mine | o) for o in others)
        assert closest < 0.6, f"{q.id}: {q.text!r} is worded like a tuning or training question"


# -- aggregation and --compare -------------------------------------------------------------


def _records(hits: list[bool], declined: list[bool]) -> list[GroundedRecord]:
    """Answerable questions (fact hit or not, gold shown) then unanswerable ones."""
    answerable = _question(facts=(("$60",),))
    replies = ["Free over $60 [1]." if h else "No." for h in hits]
    out = [score_reply(answerable, _said(r), SHOWN, NO_ANSWER, True) for r in replies]
    unanswerable = _question(answerable=False)
    replies = ["I don't know." if d else "Yes!" for d in declined]
    return out + [score_reply(unanswerable, _said(r), None, NO_ANSWER, None) for r in replies]


def test_aggregate_splits_misses_between_model_and_retrieval() -> None:
    records = _records([True, False, False, True], [True, False])
    shown_nothing = score_reply(
        _question(facts=(("$60",),)), _said("No."), _shown(), NO_ANSWER, False
    )
    m = aggregate_grounded([*records, shown_nothing])
    assert set(m) == {*GROUNDED_KEYS, *COUNT_KEYS}
    assert m["fact_accuracy"] == pytest.approx(2 / 5)
    assert m["miss_model"] == pytest.approx(2 / 5) and m["miss_retrieval"] == pytest.approx(1 / 5)
    assert m["citation_precision"] == 1.0 and m["citation_rate"] == pytest.approx(2 / 5)
    assert m["gold_shown"] == pytest.approx(4 / 5) and m["retrieval_hit"] == pytest.approx(4 / 5)
    assert m["dont_know_rate"] == 0.5
    assert np.isnan(aggregate_grounded(records[:4])["dont_know_rate"])  # no unanswerable one


def test_compare_deltas_with_paired_bootstrap() -> None:
    worse = _records([False] * 6 + [True] * 2, [False] * 4)
    better = _records([True] * 8, [True] * 4)
    deltas = grounded_deltas(better, worse, samples=300)
    assert set(deltas) == set(GROUNDED_KEYS)
    fact = deltas["fact_accuracy"]
    assert fact["delta"] == pytest.approx(0.75) and fact["ci95"][0] > 0
    assert deltas["dont_know_rate"]["delta"] == 1.0 and deltas["dont_know_rate"]["ci95"] == [1, 1]
    assert deltas["retrieval_hit"] == {"delta": 0.0, "ci95": [0.0, 0.0]}  # the same retrieval
    same = grounded_deltas(worse, worse, samples=50)
    assert all(d == {"delta": 0, "ci95": [0, 0]} for d in same.values()), same
    only_answerable = grounded_deltas(better[:8], worse[:8], samples=20)
    assert only_answerable["dont_know_rate"] == {"delta": None, "ci95": None}  # no such question


# -- through the engine: real grounding, a scripted reply -----------------------------------


NO_ANSWER_DEFAULT = KnowledgeSettings().no_answer
SHIPPING = (
    "# Shipping\n\nStandard shipping is free over $60.\n\n## Canada\n\nDelivery takes 5-8 days.\n"
)
FAQ = 'id,question,answer\ngift-cards,Do gift cards expire?,"No, gift cards never expire."\n'


@pytest.fixture(scope="module")
def small_kb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small-kb")
    (root / "docs").mkdir()
    (root / "docs" / "shipping.md").write_text(SHIPPING)
    (root / "docs" / "faq.csv").write_text(FAQ)
    KnowledgeBase(root / "kb", create=True, embedder="hashing").add([root / "docs"])
    return root


@pytest.fixture(scope="module")
def small_questions(small_kb: Path) -> Path:
    return write_jsonl(
        small_kb / "questions.jsonl",
        [
            {"question": "Do gift cards expire?", "faq_id": "gift-cards",
             "facts": [["never expire"]], "reference": "No, gift cards never expire."},
            {"question": "How long does delivery to Canada take?", "source": "shipping.md",
             "facts": ["5-8 days"]},
            {"question": "When is standard shipping free?", "source": "shipping.md",
             "facts": ["$60"], "reference": "Over $60."},
            {"question": "Delivery to Canada, how long?", "faq_id": "gift-cards",
             "facts": ["5-8 days"]},  # a wrong gold on purpose: retrieval cannot find it
            {"question": "What is the capital of France?", "answerable": False},
        ],
    )  # fmt: skip


def test_recorded_decisions_give_each_reply_its_sources(small_kb, small_questions, tokenizer):
    kb = KnowledgeBase(small_kb / "kb")
    knowledge = Knowledge(Retriever(kb), KnowledgeSettings(k=1))
    backend = FakeBackend(tokenizer, ["It takes 5-8 days [1]."])
    engine = RecordingEngine(backend, BotProfile(), knowledge)
    questions = read_grounded_questions(small_questions)
    replies = generate_replies(engine, [q.turn() for q in questions], progress=False)
    found = retrieval_hits(knowledge, questions)
    records = [
        score_reply(q, r, engine.decisions[q.history], knowledge.settings.no_answer, found[q.id])
        for q, r in zip(questions, replies, strict=True)
    ]
    faq, canada, free, wrong_gold, france = records
    assert (faq.route, faq.reply, faq.fact_hit, faq.cited) == (
        "faq", "No, gift cards never expire. [1]", True, [1]
    )  # fmt: skip
    assert faq.sources[0]["faq_id"] == "gift-cards" and faq.citation_precision == 1.0
    assert canada.route == "passages" and canada.sources[0]["location"].startswith(
        "Shipping > Canada"
    )
    assert (canada.fact_hit, canada.citation_precision, canada.citation_recall) == (True, 1.0, 1.0)
    assert (free.fact_hit, free.gold_shown, free.citation_precision) == (False, True, 1.0)
    assert (wrong_gold.retrieval_hit, wrong_gold.gold_shown) == (False, False)
    assert (wrong_gold.fact_hit, wrong_gold.citation_precision) == (True, 0.0)
    assert (france.route, france.declined, france.reply) == (
        "no_answer",
        "no_answer",
        NO_ANSWER_DEFAULT,
    )
    assert len(backend.prompts) == 3  # FAQ answers and "don't know" never reach the model
    m = aggregate_grounded(records)
    assert m["miss_model"] == 0.25 and m["miss_retrieval"] == 0.0 and m["dont_know_rate"] == 1.0


# -- chattune eval --kb, end to end --------------------------------------------------------


@pytest.fixture(scope="module")
def small_profile(small_kb: Path) -> Path:
    """k 1 and a short instruction: the tiny models have a 512-token context."""
    path = small_kb / "bot.yaml"
    knowledge = "knowledge: {k: 1, instruction: 'Answer from the documents; cite [1].'}\n"
    path.write_text("name: Pine\nsystem_prompt: You are Pine.\n" + knowledge)
    return path


def test_eval_cli_with_kb_and_compare(
    small_kb, small_questions, small_profile, tiny_model_dir, lively_model_dir, tmp_path, capsys
) -> None:
    out, report = tmp_path / "eval.json", tmp_path / "report.html"
    args = ["eval", "--model", str(lively_model_dir), "--compare", str(tiny_model_dir),
            "--kb", str(small_kb / "kb"), "--profile", str(small_profile),
            "--data", str(small_questions), "--max-new-tokens", "8", "--bootstrap", "50",
            "--json", str(out), "--per-example", "--report", str(report)]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    assert re.search(r"^fact_accuracy\s+0\.\d{3}\s+0\.\d{3}\s+[+-]\d", table, re.M), table
    result = json.loads(out.read_text())
    grounded = result["grounded"]
    assert set(grounded) == {"kb", "k", "mode", "metrics", "routes", "per_example"}
    assert set(grounded["metrics"]) == {*GROUNDED_KEYS, *COUNT_KEYS}
    assert grounded["routes"] == {"faq": 1, "no_answer": 1, "passages": 3}
    assert result["n_examples"] == 2  # the two questions with a reference reply
    records = {r["question"]: r for r in grounded["per_example"]}
    faq = records["Do gift cards expire?"]
    assert (faq["fact_hit"], faq["cited"], faq["sources"][0]["gold"]) == (True, [1], True)
    assert records["What is the capital of France?"]["declined"] == "no_answer"
    assert grounded["metrics"]["dont_know_rate"] == 1.0
    other = result["compare"]["grounded"]
    for key in GROUNDED_KEYS:
        a, b, d = grounded["metrics"][key], other["metrics"][key], other["delta"][key]
        assert d["delta"] == (None if a is None or b is None else pytest.approx(a - b)), key
    page = report.read_text()
    assert "Grounded answers" in page and "No, gift cards never expire. [1]" in page
    assert "| fact_accuracy |" in report.with_suffix(".md").read_text()


def test_eval_cli_grounded_json_without_records_and_bad_inputs(
    small_kb, small_questions, small_profile, tiny_model_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "eval.json"
    kb = ["--kb", str(small_kb / "kb"), "--profile", str(small_profile)]
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(small_questions),
            "--max-examples", "2", "--max-new-tokens", "4", "--json", str(out), *kb]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert (
        "per_example" not in result["grounded"]
        and result["grounded"]["metrics"]["n_questions"] == 2
    )
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(small_questions)]) == 2
    assert "a question file (rows with 'question')" in capsys.readouterr().err
    unanswered = write_jsonl(tmp_path / "q.jsonl", [{"question": "Where?", "answerable": False}])
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(unanswered), *kb,
                 "--max-new-tokens", "4", "--json", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["metrics"] is None and result["grounded"]["metrics"]["fact_accuracy"] is None


def test_generate_with_kb_shows_each_models_passages_side_by_side(
    small_kb, small_profile, tiny_model_dir, lively_model_dir, capsys
) -> None:
    args = ["generate", "--model", str(lively_model_dir), "--compare", str(tiny_model_dir),
            "--kb", str(small_kb / "kb"), "--profile", str(small_profile),
            "--prompt", "Do gift cards expire?", "--prompt", "When is standard shipping free?",
            "--max-new-tokens", "4"]  # fmt: skip
    assert main(args) == 0
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert len(blocks) == 2
    faq, shipping = (b.splitlines() for b in blocks)
    # the FAQ answer is the stored one, for both models, and cites its entry
    stored = "No, gift cards never expire. [1]"
    assert [line.split("]: ", 1)[-1] for line in faq[1::2]] == [stored, stored]
    assert all(re.fullmatch(r"      \*\[1\] .*faq\.csv, .+", line) for line in faq[2::2]), faq
    # a passage answer: each model's reply followed by the one passage it was shown (k 1)
    assert [line.split("]: ")[0] for line in shipping[1::2]] == [
        f"  [{lively_model_dir}",
        f"  [{tiny_model_dir}",
    ]
    assert all(re.fullmatch(r"      [ *]\[1\] .*shipping\.md, .+", line) for line in shipping[2::2])
    assert main([*args[:3], "--kb", str(small_kb / "missing"), "--prompt", "hi"]) == 2
