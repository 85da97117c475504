"""Grounded fine-tuning (``chattune train --kb``): each reply is trained on the prompt the chat
engine builds for it, token for token, with the gold passage numbered, cited or removed.

Knowledge bases use the hashing embedder (no model); prompts come from the tiny tokenizer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chattune.chat.engine import ChatEngine
from chattune.chat.grounded_training import KbGrounder
from chattune.chat.profile import BotProfile
from chattune.config import build_config
from chattune.data.grounded import (
    GroundedOptions,
    _numbers,
    check_gold_names,
    encode_grounded,
    grounded_examples,
    is_gold,
)
from chattune.data.readers import read_conversations
from chattune.data.render import IGNORE_INDEX, encode_conversation, tokenize
from chattune.data.types import Conversation, Message
from chattune.errors import ConfigError, DataError
from chattune.evaluate.facts import contains_fact
from chattune.knowledge.grounding import Grounding, Knowledge, context_block
from chattune.knowledge.store import KnowledgeBase
from chattune.train.setup import build_data
from tests.conftest import ROOT, FakeBackend, run_cli, write_jsonl

SHIPPING = """# Shipping

## Rates

Shipping cost: free on orders over $60, otherwise $5.99 standard.

## Canada

We ship to Canada. Delivery to Canada is $12.99 and takes 5-8 business days.
"""
RETURNS = "# Returns\n\nReturn unused items within 45 days of delivery for a full refund.\n"
FAQ = 'id,question,answer\ngift-cards,Do gift cards expire?,"No, gift cards never expire."\n'
NO_ANSWER = "Sorry, I don't know that one."

#: A conversation with a greeting, two document answers, a verbatim FAQ question and a
#: question whose named source retrieval does not find (returns, asked about Canada).
TURNS = [
    {"role": "system", "content": "You are Pine, a support bot."},
    {"role": "user", "content": "Good morning"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "How much does shipping cost?"},
    {"role": "assistant", "content": "It is free over $60.", "source": "shipping.md"},
    {"role": "user", "content": "Do you ship to Canada?"},
    {"role": "assistant", "content": "Yes, for $12.99.", "source": "shipping.md"},
    {"role": "user", "content": "Do gift cards expire?"},
    {"role": "assistant", "content": "No, never.", "faq_id": "gift-cards"},
    {"role": "user", "content": "Can I send a tent back to Canada?"},
    {"role": "assistant", "content": "Within 45 days.", "source": "returns.md"},
]


@pytest.fixture
def kb_dir(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "shipping.md").write_text(SHIPPING)
    (docs / "returns.md").write_text(RETURNS)
    (docs / "faq.csv").write_text(FAQ)
    KnowledgeBase(tmp_path / "kb", create=True, embedder="hashing").add([docs])
    return tmp_path / "kb"


def profile() -> BotProfile:
    """A profile with everything the engine puts before a conversation: system prompt,
    persona, a few-shot example, a short instruction (the tiny model's window is small)."""
    return BotProfile.model_validate(
        {
            "system_prompt": "You are a bot.",
            "persona": ["You are brief."],
            "examples": [{"user": "Hi", "assistant": "Hello!"}],
            "knowledge": {"k": 3, "instruction": "Use the documents.", "no_answer": NO_ANSWER},
        }
    )


def conversations(tmp_path: Path, rows: list[list[dict]] | None = None) -> list[Conversation]:
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": m} for m in rows or [TURNS]])
    return read_conversations(path)


def prompt_and_reply(enc) -> tuple[list[int], list[int]]:
    """(the unlabelled prompt, the labelled reply) of one encoded example."""
    start = next(i for i, label in enumerate(enc.labels) if label != IGNORE_INDEX)
    assert all(label != IGNORE_INDEX for label in enc.labels[start:])  # one span: the reply
    assert enc.labels[start:] == enc.input_ids[start:]
    return enc.input_ids[:start], enc.input_ids[start:]


def grounded(convs, tokenizer, grounder, **options):
    opts = GroundedOptions(**options)
    pairs = grounded_examples(convs, grounder, opts)
    encoded, report = encode_grounded(convs, tokenizer, 1024, grounder, opts)
    assert report.dropped == 0 and len(encoded) == len(pairs)
    return pairs, encoded


# -- the data: where an answer comes from ------------------------------------------------


def test_source_and_faq_id_are_carried_but_never_rendered(tmp_path, tokenizer) -> None:
    conv = conversations(tmp_path)[0]
    answers = [m for m in conv.messages if m.role == "assistant"]
    assert [(m.sources, m.faq_ids) for m in answers] == [
        ((), ()),
        (("shipping.md",), ()),
        (("shipping.md",), ()),
        ((), ("gift-cards",)),
        (("returns.md",), ()),
    ]
    assert answers[3].as_dict() == {"role": "assistant", "content": "No, never."}
    plain = Conversation([Message(m.role, m.content) for m in conv.messages])
    with_keys = encode_conversation(conv, tokenizer, 1024)
    assert with_keys == encode_conversation(plain, tokenizer, 1024)  # training without --kb


def test_bad_source_and_faq_id_values_are_file_line_errors(tmp_path) -> None:
    rows = [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "faq_id": 7}],
        [
            {"role": "user", "content": "a", "source": "faq.csv"},
            {"role": "assistant", "content": "b", "source": ["ok.md", ""]},
        ],
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": m} for m in rows])
    with pytest.raises(DataError) as e:
        read_conversations(path)
    assert e.value.problems == [
        f"{path}:1: turn 2: 'faq_id' must be a non-empty string or a list of them, got int",
        f"{path}:2: turn 1: 'source' belongs on the assistant turn that gives the answer",
        f"{path}:2: turn 2: 'source' must be a non-empty string or a list of them, got list",
    ]


def test_names_the_knowledge_base_lacks_are_file_line_errors(tmp_path, kb_dir, tokenizer) -> None:
    turns = [
        *TURNS[:8],
        {**TURNS[8], "faq_id": "gift-card"},
        TURNS[9],
        {**TURNS[10], "source": "retur.md"},
    ]
    path = write_jsonl(tmp_path / "train.jsonl", [{"messages": TURNS}, {"messages": turns}])
    cfg = build_config(flags={"data.train": [str(path)], "data.kb": str(kb_dir)})
    with pytest.raises(DataError) as e:
        build_data(cfg, tokenizer, KbGrounder(str(kb_dir), profile()))
    assert [p.split(";")[0] for p in e.value.problems] == [
        f"{path}:2: turn 9: faq_id 'gift-card' is not in the knowledge base {kb_dir} "
        "(did you mean 'gift-cards'?)",
        f"{path}:2: turn 11: source 'retur.md' is no document of the knowledge base {kb_dir} "
        "(did you mean 'returns.md'?)",
    ]
    assert "`chattune kb add`" in e.value.problems[0] and "kb list" in e.value.problems[1]


def test_the_support_conversations_name_only_what_the_support_kb_holds(tmp_path) -> None:
    kb = KnowledgeBase(tmp_path / "kb", create=True, embedder="hashing")
    kb.add([ROOT / "examples/support/kb"])
    grounder = KbGrounder(str(tmp_path / "kb"), BotProfile())
    for name in ("train", "val"):
        convs = read_conversations(ROOT / f"examples/support/{name}.jsonl")
        assert sum(m.grounded for c in convs for m in c.messages) > len(convs)  # most do
        assert check_gold_names(convs, *grounder.names(), grounder.kb) == []


def test_kb_options_need_a_knowledge_base_and_chat() -> None:
    with pytest.raises(ConfigError, match=r"data\.kb_no_gold_share: needs data\.kb \(--kb DIR\)"):
        build_config(overrides=["data.kb_no_gold_share=0.2"])
    with pytest.raises(ConfigError, match=r"data\.kb: grounded fine-tuning"):
        build_config(overrides=["data.kb=kb", "data.objective=lm"])
    with pytest.raises(ConfigError, match=r"data\.mask: with data\.kb"):
        build_config(overrides=["data.kb=kb", "data.mask=all"])


# -- the prompt: the engine's, token for token ----------------------------------------------


def test_each_turn_is_trained_on_the_engines_prompt_with_loss_on_the_reply_only(
    tmp_path, kb_dir, tokenizer
) -> None:
    grounder = KbGrounder(str(kb_dir), profile())
    convs = conversations(tmp_path)
    pairs, encoded = grounded(convs, tokenizer, grounder, cite=False, distractors=None)
    engine = ChatEngine(FakeBackend(tokenizer, []), profile(), Knowledge(grounder.retriever,
                        profile().knowledge))  # fmt: skip
    off = Knowledge(
        grounder.retriever, profile().knowledge.model_copy(update={"faq_answers": "off"})
    )
    options = engine.profile.generation
    kinds = []
    assert len(pairs) == 5  # one example per assistant turn
    for (turn, ex), enc in zip(pairs, encoded, strict=True):
        decision = engine.decide(turn.history)
        g = decision.grounding
        kinds.append(g.kind)
        if g.kind == "faq":  # verbatim: serving calls no model; a near paraphrase's prompt
            g = off.ground(turn.history)
        if turn.reply.grounded:
            assert any(is_gold(p, turn.reply) for p in ex.passages), turn.where
        if ex.inserted:  # retrieval missed the gold: the engine's rendering of our passages
            hits = [p.hit for p in ex.passages]
            g = Grounding("passages", hits, context_block(hits, profile().knowledge.instruction))
        served, cut = engine.build_prompt(turn.history, options, "You are Pine, a support bot.", g)
        prompt, reply = prompt_and_reply(enc)
        assert cut == 0 and prompt == served, turn.where
        assert reply == tokenize(tokenizer, ex.target + "<|im_end|>\n")  # the reply, to its end
    assert kinds == ["no_answer", "passages", "passages", "faq", "passages"]
    assert [ex.passages is None for _, ex in pairs] == [True, False, False, False, False]
    assert [ex.inserted for _, ex in pairs] == [False, False, False, False, True]


def test_the_system_prompt_and_examples_frame_the_context_block(tmp_path, kb_dir, tokenizer):
    """What the comparison above depends on, spelled out: one system turn (the data's system
    prompt replaces the profile's, the persona stays, the block follows), then few-shot."""
    grounder = KbGrounder(str(kb_dir), profile())
    _, encoded = grounded(conversations(tmp_path), tokenizer, grounder)
    text = tokenizer.decode(prompt_and_reply(encoded[1])[0])
    assert text.startswith(
        "<|im_start|>system\nYou are Pine, a support bot.\nYou are brief.\n\nUse the documents."
        '\n\n<documents>\n<document index="1" source='
    )
    assert "</documents><|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" in text
    assert text.endswith("<|im_start|>user\nHow much does shipping cost?<|im_end|>\n"
                         "<|im_start|>assistant\n")  # fmt: skip


# -- gold passage, citation, "don't know" ---------------------------------------------------


def test_the_gold_passage_is_numbered_and_its_citation_put_in_the_reply(
    tmp_path, kb_dir, tokenizer
) -> None:
    grounder = KbGrounder(str(kb_dir), profile())
    pairs, encoded = grounded(conversations(tmp_path), tokenizer, grounder, distractors=1)
    for (turn, ex), enc in zip(pairs, encoded, strict=True):
        if not turn.reply.grounded:
            assert ex.target == turn.reply.content and ex.gold_at is None
            continue
        gold = ex.passages[ex.gold_at - 1]
        assert is_gold(gold, turn.reply)
        assert len(ex.passages) <= 2  # the gold passage and one distractor at most
        assert ex.target == f"{turn.reply.content} [{ex.gold_at}]"
        prompt = tokenizer.decode(prompt_and_reply(enc)[0])
        assert f'<document index="{ex.gold_at}" source="{gold.source}"' in prompt
        assert f"[{ex.gold_at}]" in tokenizer.decode(prompt_and_reply(enc)[1])
    inserted = pairs[4][1]
    assert inserted.inserted and inserted.passages[inserted.gold_at - 1].source.endswith(
        "returns.md"
    )


def test_an_inserted_gold_passage_lands_at_a_seeded_position(tmp_path, kb_dir) -> None:
    """Retrieval misses returns.md for the Canada question; where it is put is the seed's."""
    grounder = KbGrounder(str(kb_dir), profile())
    things = ["tent", "kayak", "stove", "jacket", "lamp", "pole", "bag", "boot", "fleece", "mat"]
    ask = [{"role": "user", "content": f"Can I send a {t} back to Canada?"} for t in things]
    convs = conversations(tmp_path, [[TURNS[0], q, TURNS[10]] for q in ask])  # 10 draws
    assert all(ex.inserted for _, ex in grounded_examples(convs, grounder, GroundedOptions()))
    places = {
        seed: [
            ex.gold_at for _, ex in grounded_examples(convs, grounder, GroundedOptions(seed=seed))
        ]
        for seed in (0, 1)
    }
    again = [ex.gold_at for _, ex in grounded_examples(convs, grounder, GroundedOptions(seed=0))]
    assert again == places[0]  # deterministic
    assert len(set(places[0])) > 1 and places[0] != places[1]  # random, by the seed


def test_kb_shuffle_moves_the_gold_passage_off_retrievals_first_place(tmp_path, kb_dir) -> None:
    """In retrieval's order the gold passage of a retrieved answer is mostly [1]; shuffled,
    the same passages come in a seeded order and the citation follows the gold one."""
    grounder = KbGrounder(str(kb_dir), profile())
    things = ["tent", "kayak", "stove", "jacket", "lamp", "pole", "bag", "boot", "fleece", "mat"]
    asked = "Can I return an unused {} for a full refund after delivery to Canada?"
    ask = [{"role": "user", "content": asked.format(t)} for t in things]  # returns, shipping
    convs = conversations(tmp_path, [[TURNS[0], q, TURNS[10]] for q in ask])
    ranked = grounded_examples(convs, grounder, GroundedOptions())
    shuffled = grounded_examples(convs, grounder, GroundedOptions(shuffle=True))
    again = grounded_examples(convs, grounder, GroundedOptions(shuffle=True))
    assert all(not ex.inserted for _, ex in ranked) and {ex.gold_at for _, ex in ranked} == {1}
    for (_, a), (_, b) in zip(ranked, shuffled, strict=True):
        assert sorted(p.id for p in a.passages) == sorted(p.id for p in b.passages)
        assert b.passages[b.gold_at - 1].source.endswith("returns.md")
        assert b.target.endswith(f"[{b.gold_at}]")
    assert len({ex.gold_at for _, ex in shuffled}) > 1  # not always [1] any more
    assert [ex.gold_at for _, ex in again] == [ex.gold_at for _, ex in shuffled]


def test_kb_counterfactual_changes_the_gold_numbers_in_passage_and_reply(
    tmp_path, kb_dir, tokenizer
) -> None:
    """Each number a reply takes from its gold passage becomes another of the same shape in
    both; numbers the reply does not use, numbers the user said, other passages and the
    knowledge base stay as they are."""
    grounder = KbGrounder(str(kb_dir), profile())
    cited = {"role": "assistant", "content": "Within 45 days [1].", "source": "returns.md"}
    rows = [TURNS, [TURNS[0], {"role": "user", "content": "Is shipping free over $60?"},
                    TURNS[4]],
            [TURNS[0], {"role": "user", "content": "How long do I have to return a tent?"},
             cited]]  # fmt: skip
    convs = conversations(tmp_path, rows)
    plain, _ = grounded(convs, tokenizer, grounder)
    pairs, encoded = grounded(convs, tokenizer, grounder, counterfactual=1.0)
    changed = {turn.reply.content: ex for turn, ex in pairs if ex.counterfactual}
    assert set(changed) == {"It is free over $60.", "Yes, for $12.99.", "Within 45 days.",
                            "Within 45 days [1]."}  # fmt: skip
    assert re.fullmatch(r"Within [1-9]\d days \[1\]\.", changed.pop("Within 45 days [1]."
                                                                   ).target)  # fmt: skip
    assert not any(ex.counterfactual for _, ex in plain)
    shapes = {"It is free over $60.": r"It is free over \$([1-9]\d)\. \[(\d)\]",
              "Yes, for $12.99.": r"Yes, for \$([1-9]\d\.\d\d)\. \[(\d)\]",
              "Within 45 days.": r"Within ([1-9]\d) days\. \[(\d)\]"}  # fmt: skip
    originals = {"It is free over $60.": "60", "Yes, for $12.99.": "12.99", "Within 45 days.": "45"}
    for reply, ex in changed.items():
        found = re.fullmatch(shapes[reply], ex.target)
        assert found, ex.target
        new, n = found.group(1), int(found.group(2))
        assert new != originals[reply] and n == ex.gold_at
        gold, gold_before = ex.passages[n - 1], grounder.text(next(
            p for p in plain[[t.reply.content for t, _ in plain].index(reply)][1].passages
            if p.id == ex.passages[n - 1].id))  # fmt: skip
        assert grounder.text(gold) == gold_before.replace(originals[reply], new)
        block = grounder.head(None, ex.passages)[0].content
        assert new in block and originals[reply] not in _numbers(block)  # nowhere in the prompt
    canada = changed["Yes, for $12.99."]
    assert "5-8 business days" in grounder.text(canada.passages[canada.gold_at - 1])
    asked = pairs[-2][1]  # the user named $60 first: the reply's $60 is not the passage's alone
    assert not asked.counterfactual and asked.target.startswith("It is free over $60.")
    for (_, ex), enc in zip(pairs, encoded, strict=True):
        prompt, reply = (tokenizer.decode(t) for t in prompt_and_reply(enc))
        assert ex.target in reply
        if ex.counterfactual:
            assert grounder.text(ex.passages[ex.gold_at - 1]).split()[-1] in prompt
    texts = [[grounder.text(p) for p in ex.passages or []] for _, ex in plain]
    replain, _ = grounded(convs, tokenizer, grounder)  # the knowledge base is untouched
    assert [[grounder.text(p) for p in ex.passages or []] for _, ex in replain] == texts
    again, _ = grounded(convs, tokenizer, grounder, counterfactual=1.0)
    assert [ex.target for _, ex in again] == [ex.target for _, ex in pairs]  # seeded
    other, _ = grounded(convs, tokenizer, grounder, counterfactual=1.0, seed=5)
    assert [ex.target for _, ex in other] != [ex.target for _, ex in pairs]


def test_a_number_the_system_prompt_also_holds_is_left_alone(tmp_path, kb_dir, tokenizer):
    """Changed in the passage, $60 would still be in the system prompt beside the new value:
    it stays $60 everywhere, and the reply's other gold number is still changed."""
    grounder = KbGrounder(str(kb_dir), profile())
    reply = {"role": "assistant", "content": "Free over $60, else $5.99.", "source": "shipping.md"}
    rows = [[{"role": "system", "content": "Orders over $60 ship free."},
             {"role": "user", "content": "How much does shipping cost?"}, reply]]  # fmt: skip
    pairs, _ = grounded(conversations(tmp_path, rows), tokenizer, grounder, counterfactual=1.0)
    ((_, ex),) = pairs
    assert ex.counterfactual
    found = re.fullmatch(r"Free over \$60, else \$([1-9]\.\d\d)\. \[(\d)\]", ex.target)
    assert found and found.group(1) != "5.99", ex.target
    gold = grounder.text(ex.passages[int(found.group(2)) - 1])
    assert "$60" in gold and f"${found.group(1)}" in gold and "5.99" not in gold
    head = "\n".join(m.content for m in grounder.head("Orders over $60 ship free.", ex.passages))
    assert "5.99" not in _numbers(head)


def test_another_number_keeps_the_shape() -> None:
    import random

    from chattune.data.grounded import _another_number

    rng = random.Random(0)
    shapes = {"45": r"[1-9]\d", "6.95": r"[1-9]\.\d\d", "10,000": r"[1-9]\d,000",
              "0142": r"0\d\d\d", "7": r"[1-9]"}  # fmt: skip
    for number, shape in shapes.items():
        for _ in range(20):
            other = _another_number(number, rng)
            assert other != number and re.fullmatch(shape, other), (number, other)
    assert _another_number("0", rng) == "0"
    assert _another_number("5", rng, taken={str(d) for d in range(1, 10)} - {"7"}) == "7"
    assert _another_number("5", rng, taken={str(d) for d in range(1, 10)}) == "5"


def test_counterfactual_numbers_are_whole_facts_only() -> None:
    """Parts of words, codes, citations, ranges, dates, times and phone numbers stay."""
    text = ("Ridgeline2 mp3 1st [1] 【2】 3-5 days 2024-05-01 24/7 9:30 1-800-555-0142 "
            "but $6.95, 45 days, 10,000 BTU, 10% off and 8 °F")  # fmt: skip
    assert _numbers(text) == {"6.95", "45", "10,000", "10", "8"}


def test_the_no_gold_share_trains_the_profiles_dont_know_reply(tmp_path, kb_dir, tokenizer):
    grounder = KbGrounder(str(kb_dir), profile())
    convs = conversations(tmp_path)
    pairs, encoded = grounded(convs, tokenizer, grounder, no_gold_share=1.0)
    removed = [(t, ex) for t, ex in pairs if ex.no_gold]
    assert removed, "no turn had a distractor to keep"
    for turn, ex in removed:
        assert ex.target == NO_ANSWER and ex.gold_at is None and ex.passages
        assert not any(is_gold(p, turn.reply) for p in ex.passages)
    reply = prompt_and_reply(encoded[[ex for _, ex in pairs].index(removed[0][1])])[1]
    assert reply == tokenize(tokenizer, NO_ANSWER + "<|im_end|>\n")
    eligible = len(removed)
    half = grounded_examples(convs, grounder, GroundedOptions(no_gold_share=0.5))
    assert sum(ex.no_gold for _, ex in half) == round(0.5 * eligible)
    none = grounded_examples(convs, grounder, GroundedOptions(no_gold_share=0.0))
    assert not any(ex.no_gold for _, ex in none)


def test_verbatim_faq_turns_read_the_entry_and_greetings_get_no_block(tmp_path, kb_dir) -> None:
    pairs = grounded_examples(conversations(tmp_path), KbGrounder(str(kb_dir), profile()),
                              GroundedOptions())  # fmt: skip
    faq_turn = pairs[3][1]
    assert faq_turn.passages[faq_turn.gold_at - 1].faq_id == "gift-cards"
    assert pairs[0][1].passages is None and pairs[0][1].target == "Hi! How can I help?"


# -- the command ---------------------------------------------------------------------------


def test_chattune_train_with_kb_end_to_end(tmp_path, kb_dir, tiny_model_dir) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{"messages": TURNS[:7]}] * 4)  # 3 replies
    bot = tmp_path / "bot.yaml"
    bot.write_text(json.dumps(profile().model_dump(mode="json")))
    out = tmp_path / "out"
    result = run_cli(
        "train", "--data", str(train), "--base", str(tiny_model_dir), "--output", str(out),
        "--kb", str(kb_dir), f"data.kb_profile={bot}", "data.kb_no_gold_share=0.25",
        "--max-steps", "2", "--batch-size", "4", "--max-len", "512", "train.progress=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "grounded 12 turns" in result.stderr and "did not fit" not in result.stderr
    meta = json.loads((out / "chattune.json").read_text())
    assert meta["train_conversations"] == 12 and meta["steps"] == 2  # one example per turn
    saved = build_config(out / "config.yaml").data
    assert (saved.kb, saved.kb_profile, saved.kb_no_gold_share) == (str(kb_dir), str(bot), 0.25)


def test_a_kb_run_without_a_grounder_says_how_to_get_one(tmp_path, kb_dir, tokenizer) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"messages": TURNS}])
    cfg = build_config(flags={"data.train": [str(path)], "data.kb": str(kb_dir)})
    with pytest.raises(ConfigError, match="chattune train --kb DIR"):
        build_data(cfg, tokenizer)


def test_the_document_questions_are_extracts_of_their_gold_passages(tmp_path, monkeypatch):
    """kb-questions.jsonl (RAFT-style pairs for grounded training) is what its generator
    writes; each reply's numbers are in the passage it names; and the facts it holds out
    are asked by the grounded test set and stated by no reply, so that the test's questions
    on them measure reading, not recall."""
    support = ROOT / "examples/support"
    monkeypatch.syspath_prepend(str(support))
    import generate_kb_questions as gen

    path = support / "kb-questions.jsonl"
    assert [json.loads(line) for line in path.open()] == gen.conversations()
    kb = KnowledgeBase(tmp_path / "kb", create=True, embedder="hashing")
    kb.add([support / "kb"])
    grounder = KbGrounder(str(tmp_path / "kb"), BotProfile())
    convs = read_conversations(path)
    assert len(convs) >= 80 and check_gold_names(convs, *grounder.names(), grounder.kb) == []
    chunks = list(kb.chunks(list(range(1, kb.count() + 1))).values())
    number = re.compile(r"\d[\d,.]*\d|\d")
    for conv in convs:
        (reply,) = [m for m in conv.messages if m.role == "assistant"]
        gold = [c.chunk.answer for c in chunks if c.chunk.faq_id in reply.faq_ids]
        gold += [c.chunk.index_text for c in chunks if c.source.endswith(reply.sources)]
        said = set(number.findall(" ".join(gold)))
        assert set(number.findall(reply.content)) <= said, (conv.source, reply.content)
        assert not any(contains_fact(f, reply.content) for f in gen.HELD_OUT_FACTS), conv.source
    test_set = (support / "kb-grounded-test.jsonl").open()
    asked = [json.dumps(json.loads(line).get("facts"), ensure_ascii=False) for line in test_set]
    kb_text = "\n".join(c.chunk.index_text for c in chunks)
    for fact in gen.HELD_OUT_FACTS:
        assert any(fact in facts for facts in asked) and contains_fact(fact, kb_text), fact
