"""The NLU and the router: intents files, entities, sentiment, routes, the three training
regimes (on a tiny random encoder), and routing every turn of a conversation in the chat
engine (FakeBackend). tests/test_nlu_real.py trains on the embedded MiniLM."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from chattune.chat.engine import ChatEngine
from chattune.chat.profile import BotProfile, load_profile
from chattune.data.types import Message
from chattune.errors import ConfigError, DataError
from chattune.knowledge.grounding import Knowledge
from chattune.knowledge.retrieve import Retriever
from chattune.knowledge.store import KnowledgeBase
from chattune.nlu.data import Span, parse_marked, read_intents
from chattune.nlu.entities import EntityExtractor
from chattune.nlu.intents import IntentModel, calibrate, encoder_folder
from chattune.nlu.pipeline import NLU
from chattune.nlu.router import Route, choose, fill
from chattune.nlu.sentiment import Sentiment, frustrated
from chattune.nlu.settings import NluSettings
from chattune.nlu.types import Analysis, Entity
from tests.conftest import FakeBackend, run_cli

TODAY = dt.date(2026, 12, 1)  # a Tuesday

# -- intents files ---------------------------------------------------------------------


def test_marks_become_spans_and_leave_plain_text() -> None:
    text, spans = parse_marked("refund [$84.50](amount) for [PC-104233](order_id) please")
    assert text == "refund $84.50 for PC-104233 please"
    assert [text[s.start : s.end] for s in spans] == ["$84.50", "PC-104233"]
    assert spans[1] == Span("order_id", 18, 27)


def test_every_bad_line_of_an_intents_file_is_named(tmp_path: Path) -> None:
    f = tmp_path / "intents.csv"
    f.write_text(
        "text,intent\nwhere is it,order_status\n,refund\nhello,\n"
        "cancel [PC-1](order id,cancel\nok [x](2bad),thanks\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError) as e:
        read_intents(f)
    problems = e.value.problems
    assert [p.split(": ")[0] for p in problems] == [f"{f}:3", f"{f}:4", f"{f}:5", f"{f}:6"]
    assert "empty text" in problems[0] and "empty intent" in problems[1]
    assert "not closed" in problems[2] and "must be a name" in problems[3]
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nhi,hello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv:1: an intents table needs a text column"):
        read_intents(bad)


def test_jsonl_intents_and_column_aliases(tmp_path: Path) -> None:
    f = tmp_path / "i.jsonl"
    f.write_text('{"utterance": "hi there", "label": "greeting"}\n[1]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"i.jsonl:2: expected"):
        read_intents(f)
    f.write_text('{"utterance": "hi there", "label": "greeting"}\n', encoding="utf-8")
    assert [(e.text, e.intent, e.where) for e in read_intents(f)] == [
        ("hi there", "greeting", f"{f}:1")
    ]


def test_the_example_intents_files_read_and_do_not_overlap() -> None:
    train = read_intents("examples/support/intents.csv")
    test = read_intents("examples/support/intents-test.csv")
    assert len({e.intent for e in train}) >= 20 and {e.intent for e in test} == {
        e.intent for e in train
    }
    assert not {e.text.lower() for e in train} & {e.text.lower() for e in test}


# -- entities --------------------------------------------------------------------------


def test_patterns_and_parsers_normalise_what_they_find() -> None:
    ex = EntityExtractor(gazetteer={"product": ["Ridgeline 2 tent", "Ridgeline 2"]})
    found = ex.extract(
        "The ridgeline 2 tent from order PC-104233 (paid US$1,084.50 on 11/02) broke; "
        "call +1 415 555 0134 or mail Maya.Lund@Example.com by next Tuesday",
        TODAY,
    )
    assert [(e.type, e.value) for e in found] == [
        ("product", "Ridgeline 2 tent"),  # the longest name, spelled as in the gazetteer
        ("order_id", "PC-104233"),
        ("amount", "1084.50 USD"),
        ("date", "2026-11-02"),
        ("phone", "+14155550134"),
        ("email", "maya.lund@example.com"),
        ("date", "2026-12-08"),
    ]
    relative = ex.extract("sent back two weeks ago, arrived yesterday, refund CAD 120", TODAY)
    assert [(e.type, e.value) for e in relative] == [
        ("date", "2026-11-17"),
        ("date", "2026-11-30"),
        ("amount", "120.00 CAD"),
    ]


def test_words_that_only_look_like_dates_or_ids_are_not_entities() -> None:
    ex = EntityExtractor()
    assert ex.extract("I may come back in march with 2 friends", TODAY) == []
    # an email is one entity, not an email plus an order id or a date inside it
    assert [e.type for e in ex.extract("mail pc-104233.may@example.com")] == ["email"]


def test_shop_patterns_replace_the_order_id_default() -> None:
    ex = EntityExtractor(patterns={"order_id": r"(?<!\d)\d{6}(?!\d)"})
    assert [e.value for e in ex.extract("cancel 119003, not A12345")] == ["119003"]
    with pytest.raises(ConfigError, match=r"nlu.patterns.sku: '\(' is not a regular"):
        EntityExtractor(patterns={"sku": "("})


# -- sentiment -------------------------------------------------------------------------


def test_a_turn_is_as_negative_as_its_angriest_sentence() -> None:
    s = Sentiment()
    calm = "I paid for express shipping. It has not arrived."
    angry = "This is ridiculous. I paid for express shipping. Worst service I've ever had."
    assert s.score(angry) < -0.7 < s.score(calm)
    assert s.score("Thanks, the tent is great!") > 0.5
    assert frustrated([-0.1, -0.7, -0.8], below=-0.5, turns=2)
    assert not frustrated([-0.7, 0.2, -0.8], below=-0.5, turns=2)
    assert not frustrated([-0.9], below=-0.5, turns=2)  # fewer turns than asked


# -- routes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ({"intent": "x"}, "either 'action'"),
        ({"default": "llm", "intent": "x"}, "no conditions"),
        ({"action": "llm"}, "needs a condition"),
        ({"intent": "x", "action": "template"}, "needs 'text'"),
        ({"intent": "x", "action": "template", "text": "{order_id!r}"}, "only {entity_type}"),
        ({"intent": "x", "action": "template", "text": "{0.__class__}"}, "only {entity_type}"),
        ({"intent": "x", "action": "tool"}, "Input should be"),
    ],
)
def test_bad_routes_fail_when_the_profile_loads(route: dict, problem: str, tmp_path) -> None:
    import yaml

    f = tmp_path / "bot.yaml"
    f.write_text(yaml.safe_dump({"routes": [route]}), encoding="utf-8")
    with pytest.raises(
        ConfigError, match=rf"--profile {f}:(.|\n)*routes.0[.a-z]*: .*{re.escape(problem)}"
    ):
        load_profile(f)


def test_first_matching_route_wins_and_templates_fill_from_earlier_turns() -> None:
    routes = [
        Route(intent="order_status", action="template", text="Order {order_id} is on its way."),
        Route(intent="order_status", action="template", text="x {date}", ask="Which order?"),
        Route(intent="faq_*", action="knowledge"),
        Route(sentiment_below=-0.5, turns=2, action="handoff"),
        Route(default="llm"),
    ]
    order = Entity("order_id", "PC-1", 0, 4, "PC-104233")
    with_id = Analysis("order_status", 0.9, earlier=[order])
    assert choose(routes, with_id) == (routes[0], "Order PC-104233 is on its way.")
    # the first template lacks its order id: the next one applies and asks
    assert choose(routes, Analysis("order_status", 0.9)) == (routes[1], "Which order?")
    assert choose(routes, Analysis("faq_returns", 0.9))[0] is routes[2]
    angry = Analysis("complaint", 0.8, sentiment_turns=[-0.6, -0.7])
    assert choose(routes, angry)[0] is routes[3]
    assert choose(routes, Analysis("complaint", 0.8))[0] is routes[4]
    assert choose(routes[:1], Analysis("greeting", 0.9)) is None


def test_a_customer_value_is_never_formatted_again() -> None:
    assert fill("Order {order_id}", {"order_id": "{0.__class__} {date}"}) == (
        "Order {0.__class__} {date}"
    )


def test_profiles_extend_a_base_profile(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "name: Pine\nsystem_prompt: Be brief.\nknowledge: {k: 2, faq_answers: 'off'}\n",
        encoding="utf-8",
    )
    (tmp_path / "agent.yaml").write_text(
        "extends: base.yaml\nknowledge: {k: 4}\nroutes: [{default: llm}]\n", encoding="utf-8"
    )
    p = load_profile(tmp_path / "agent.yaml")
    assert (p.name, p.system_prompt, p.knowledge.k, p.knowledge.faq_answers) == (
        "Pine", "Be brief.", 4, "off",
    )  # fmt: skip
    (tmp_path / "base.yaml").write_text("extends: agent.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'extends' loops"):
        load_profile(tmp_path / "agent.yaml")
    shipped = load_profile("examples/support/agent.yaml")
    assert shipped.system_prompt == load_profile("examples/support/bot.yaml").system_prompt


# -- routing in the engine ---------------------------------------------------------------


class KeywordIntents:
    """An intent scorer for routing tests: a plug-in for :class:`IntentModel`'s scorer
    (the real ones are trained in the tests below); deterministic, so every route is
    known in advance. A message without a keyword is "other", one about the weather is
    "other" with a confidence under the threshold (out of scope)."""

    labels: ClassVar = ["faq_giftcards", "greeting", "human_agent", "order_status", "other"]
    words: ClassVar = {"gift": (0, 0.9), "hi": (1, 0.9), "person": (2, 0.9),
                       "order": (3, 0.9), "weather": (4, 0.2)}  # fmt: skip

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.full((len(texts), len(self.labels)), 0.01)
        for row, text in enumerate(texts):
            hits = [v for w, v in self.words.items() if w in text.lower().split()]
            column, confidence = hits[0] if hits else (4, 0.6)
            out[row, column] = confidence
        return out


def keyword_nlu() -> NLU:
    model = IntentModel("zeroshot", KeywordIntents.labels, 0.5, {}, KeywordIntents())
    return NLU(NluSettings(), intents=model)


@pytest.fixture
def faq_kb(tmp_path: Path) -> KnowledgeBase:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "faq.csv").write_text(
        "id,question,answer\ngift-cards,Do gift cards expire?,No. Gift cards never expire.\n",
        encoding="utf-8",
    )
    kb = KnowledgeBase(tmp_path / "kb", create=True, embedder="hashing")
    kb.add([docs])
    return kb


def test_every_turn_of_a_conversation_takes_its_route(tokenizer, faq_kb) -> None:
    profile = BotProfile(
        routes=[
            Route(intent="human_agent", action="handoff"),
            Route(sentiment_below=-0.5, turns=2, action="handoff"),
            Route(
                intent="order_status",
                action="template",
                text="Order {order_id}: on its way.",
                ask="What is your order number?",
            ),
            Route(intent="greeting", action="template", text="Hi! How can I help?"),
            Route(intent="faq_*", action="knowledge"),
            Route(intent="out_of_scope", action="template", text="I can't help with that."),
            Route(default="llm"),
        ]
    )
    backend = FakeBackend(tokenizer, ["generated"])
    engine = ChatEngine(backend, profile, Knowledge(Retriever(faq_kb)), nlu=keyword_nlu())
    script = [
        ("hi there", "template", "Hi! How can I help?"),
        ("what's the weather tomorrow", "template", "I can't help with that."),
        ("do gift cards expire?", "knowledge", "No. Gift cards never expire. [1]"),
        ("where is my order", "template", "What is your order number?"),
        ("It is PC-104233", "llm", "generated"),
        ("and my order now?", "template", "Order PC-104233: on its way."),
        ("This is ridiculous. Worst service ever.", "llm", "generated"),
        ("You are useless, I am furious!", "handoff", profile.handoff.message),
        ("let me talk to a person", "handoff", profile.handoff.message),
    ]
    history: list[Message] = []
    for text, route, reply in script:
        history.append(Message("user", text))
        decision = engine.decide(history)
        got = "".join(engine.stream(history, decision=decision))
        assert (text, decision.route, got) == (text, route, reply)
        nlu = decision.as_dict()
        assert nlu["route"] == route and set(nlu) >= {"intent", "confidence", "entities"}
        history.append(Message("assistant", got))
    assert len(backend.prompts) == 2  # the model answered the two llm turns only
    batch = engine.generate([[Message("user", "hi")], [Message("user", "tell me a story")]])
    assert [g.text for g in batch] == ["Hi! How can I help?", "generated"]


def test_a_knowledge_route_needs_a_knowledge_base(tokenizer) -> None:
    profile = BotProfile(routes=[Route(intent="faq_*", action="knowledge")])
    with pytest.raises(ConfigError, match="pass --kb DIR"):
        ChatEngine(FakeBackend(tokenizer, []), profile)


def test_without_routes_there_is_no_nlu_cost(tokenizer) -> None:
    engine = ChatEngine(FakeBackend(tokenizer, ["ok"]), BotProfile())
    decision = engine.decide([Message("user", "This is useless!")])
    assert engine.nlu is None and decision.analysis is None and decision.route == "llm"


# -- calibration and the three training regimes ------------------------------------------


def test_calibration_keeps_right_answers_and_declines_out_of_scope() -> None:
    conf = np.array([0.95, 0.9, 0.85, 0.6, 0.55, 0.4, 0.3])
    correct = np.array([1, 1, 1, 1, 0, 0, 0], bool)
    oos = np.array([0, 0, 0, 0, 0, 1, 1], bool)
    t, how = calibrate(conf, correct, oos)
    assert 0.4 < t <= 0.6 and how["in_scope_correct"] == 0.8 and how["out_of_scope_declined"] == 1
    t, how = calibrate(conf[:5], correct[:5], oos[:5], keep=0.75)
    assert how["method"] == "keep 75% of correct" and 0.6 < t <= 0.85  # 3 of the 4 right ones


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT with the embedded MiniLM's tokenizer: every regime trains on
    it in seconds (its predictions are as good as random, which is not what is tested)."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-encoder")
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder)
    minilm = encoder_folder("minilm")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    return folder


@pytest.fixture
def intents_files(tmp_path: Path) -> tuple[Path, Path]:
    rows = {
        "order_status": ["where is my order", "track order [PC-104233](order_id)",
                         "has my parcel shipped", "when will it arrive", "tracking please"],
        "refund": ["I want my money back", "refund [$20](amount) please", "refund me",
                   "give me a refund", "money back now"],
        "out_of_scope": ["what is the capital of France", "tell me a joke", "2+2?",
                         "who won the cup", "write a poem"],
    }  # fmt: skip
    train = tmp_path / "intents.csv"
    train.write_text(
        "text,intent\n" + "".join(f'"{t}",{i}\n' for i, ts in rows.items() for t in ts),
        encoding="utf-8",
    )
    desc = tmp_path / "intents.yaml"
    desc.write_text(
        "intents:\n  order_status: where is my order\n  refund: I want my money back\n",
        encoding="utf-8",
    )
    return train, desc


@pytest.mark.parametrize("regime", ["finetune", "fewshot", "zeroshot"])
def test_each_regime_trains_calibrates_evaluates_and_predicts(
    regime: str, tiny_encoder: Path, intents_files: tuple[Path, Path], tmp_path: Path
) -> None:
    train, desc = intents_files
    out = tmp_path / "nlu"
    args = ["nlu", "train", "--data", str(train), "--output", str(out), "--regime", regime,
            "--encoder", str(tiny_encoder), "--descriptions", str(desc), "--epochs", "2",
            "training.pairs=2"]  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "nlu.json").read_text())
    assert manifest["regime"] == regime and "threshold" in manifest
    held_out = 15 if regime == "zeroshot" else 3  # zero-shot trains nothing: all calibrate
    assert manifest["calibration"]["examples"] == held_out
    assert not list(tmp_path.glob(".tmp-nlu-*"))  # written whole, then renamed
    labels = {"order_status", "refund"} | ({"out_of_scope"} if regime != "zeroshot" else set())
    assert set(manifest["labels"]) == labels
    report = tmp_path / "report.md"
    scores_file = tmp_path / "scores.json"
    result = run_cli("nlu", "eval", "--model", str(out), "--data", str(train), "--json",
                     str(scores_file), "--report", str(report), "--bootstrap", "50")  # fmt: skip
    assert result.returncode == 0, result.stderr
    scores = json.loads(scores_file.read_text())
    assert scores["examples"] == 15 and 0 <= scores["intents"]["accuracy"] <= 1
    assert set(scores["intents"]["per_intent"]) <= labels | {"out_of_scope"}
    assert scores["entities"]["order_id"]["recall"] == 1.0  # patterns, not the tiny model
    assert scores["latency_ms"]["analysis_p95"] > 0
    assert report.with_suffix(".png").stat().st_size > 1000 and "| intent |" in report.read_text()
    result = run_cli("nlu", "predict", "--model", str(out), "refund order PC-104233")
    line = json.loads(result.stdout.strip())
    assert line["intent"] in labels and line["entities"][0]["value"] == "PC-104233"


def test_train_names_what_is_missing(intents_files, tmp_path: Path) -> None:
    train, _ = intents_files
    result = run_cli("nlu", "train", "--output", str(tmp_path / "x"))
    assert result.returncode == 2 and "data (--data): required" in result.stderr
    one = tmp_path / "one.csv"
    one.write_text("text,intent\nhi,greeting\nhello,greeting\n", encoding="utf-8")
    result = run_cli("nlu", "train", "--data", str(one), "--output", str(tmp_path / "x"))
    assert result.returncode == 2 and "at least two intents" in result.stderr
    result = run_cli("nlu", "train", "--data", str(train), "--output", str(tmp_path / "x"),
                     "--regime", "zeroshot")  # fmt: skip
    assert result.returncode == 2 and "zero-shot needs intent descriptions" in result.stderr


def test_what_one_message_costs_and_returns_is_bounded() -> None:
    from chattune.nlu.entities import MAX_ENTITIES

    nlu = NLU()
    flood = [Message("user", "$1 monday " * 4000)] * 6
    a = nlu.analyze(flood)
    assert len(a.entities) == MAX_ENTITIES and all(e.end <= 2000 for e in a.entities)
    assert len(json.dumps(a.as_dict())) < 5000


def test_training_in_process_leaves_accelerate_free_for_chattune_train(
    tiny_encoder: Path, intents_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """transformers' Trainer sets Accelerate's process-wide state; a `chattune train` after
    it in the same process (a notebook, the test suite) must still choose its precision."""
    from accelerate import Accelerator

    from chattune.nlu.settings import IntentTraining
    from chattune.nlu.train import train_intents

    train, _ = intents_files
    marked = tmp_path / "marked.csv"  # a type no pattern covers: the tagger learns it
    marked.write_text(train.read_text() + "where is my [summit pack](sku),order_status\n"
                      "refund the [trail mug](sku),refund\n", encoding="utf-8")  # fmt: skip
    settings = IntentTraining(regime="finetune", encoder=str(tiny_encoder), epochs=1,
                              entities="auto", entity_epochs=1)  # fmt: skip
    model = train_intents(read_intents(marked), tmp_path / "nlu", settings)
    assert model.manifest["entities"]["types"] == ["sku"]
    nlu = NLU(NluSettings(model=str(tmp_path / "nlu")))
    assert nlu.entities.tagger is not None  # loaded beside the classifier
    found = nlu.entities.extract("refund order PC-104233")
    assert [e.type for e in found if e.source != "model"] == ["order_id"]
    assert all(e.type == "sku" for e in found if e.source == "model")
    Accelerator(cpu=True, mixed_precision="bf16")  # raised ValueError before the reset


def test_bio_labels_follow_the_marked_spans_token_by_token() -> None:
    from transformers import AutoTokenizer

    from chattune.nlu.data import IntentExample
    from chattune.nlu.tokens import bio_labels, encode, learned_types

    tokenizer = AutoTokenizer.from_pretrained(encoder_folder("minilm"))
    text, spans = parse_marked("cancel [summit pack](sku) now")
    labels = bio_labels(["sku"])
    index = {name: i for i, name in enumerate(labels)}
    enc = encode(tokenizer, IntentExample(text, "cancel_order", spans), index, {"sku"})
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    named = [labels[i] if i >= 0 else None for i in enc["labels"]]
    assert list(zip(tokens, named, strict=True)) == [
        ("[CLS]", None), ("cancel", "O"), ("summit", "B-sku"), ("pack", "I-sku"),
        ("now", "O"), ("[SEP]", None),
    ]  # fmt: skip
    marked = [IntentExample("x", "i", [Span("sku", 0, 1), Span("date", 0, 1)])]
    assert learned_types(marked, {"date"}) == {"sku"}  # patterns own the shaped types
