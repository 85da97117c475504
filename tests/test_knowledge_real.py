"""Knowledge with the real embedding model (all-MiniLM-L6-v2) on the demo's knowledge base
and on the removed-half FAQ sets of examples/heldout-kb.

These pin the measured behaviour docs/knowledge.md reports: on paraphrased questions plain
RRF ranks worse than dense retrieval and the gated hybrid does not; on keyword questions
the hybrid is as good as the better of dense and BM25; on every FAQ set the hybrid is as
good as dense, and the answered/declined rates stay at what was measured.
"""

from __future__ import annotations

import pytest

from chattune.data.types import Message
from chattune.knowledge.grounding import Knowledge
from chattune.knowledge.retrieval_eval import abstention, read_questions, score_retrieval
from chattune.knowledge.retrieve import Retriever
from chattune.knowledge.store import KnowledgeBase
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def retriever(tmp_path_factory) -> Retriever:
    kb = KnowledgeBase(tmp_path_factory.mktemp("kb"), create=True, embedder="minilm")
    report = kb.add([ROOT / "examples/support/kb"])
    assert len(report.added) == 5 and not report.skipped
    return Retriever(kb)


def scores(retriever: Retriever, path: str) -> dict[str, dict[str, float]]:
    questions = read_questions(path)
    return {m: score_retrieval(retriever, questions, m) for m in ("hybrid", "dense", "bm25", "rrf")}


def test_gated_fusion_is_never_worse_than_the_better_retriever(retriever) -> None:
    para = scores(retriever, ROOT / "examples/support/kb-paraphrases.jsonl")
    for metric in ("hit@1", "hit@5", "mrr"):
        assert para["hybrid"][metric] >= para["dense"][metric] >= para["bm25"][metric]
    assert para["rrf"]["mrr"] < para["dense"]["mrr"]  # why plain RRF is not the default
    keywords = scores(retriever, ROOT / "examples/support/kb-keywords.jsonl")
    for metric in ("hit@1", "mrr"):
        best = max(keywords["dense"][metric], keywords["bm25"][metric])
        assert keywords["hybrid"][metric] >= best
    assert keywords["hybrid"]["mrr"] > keywords["dense"]["mrr"]  # BM25 earns its place


def test_follow_up_question_finds_the_passage_through_the_conversation(retriever) -> None:
    knowledge = Knowledge(retriever)
    opening = [Message("user", "Do you ship to Canada?"), Message("assistant", "Yes, we do.")]
    follow_up = "How long does it take?"
    assert "Canada" not in retriever.search(follow_up, k=1)[0].chunk.location  # names nothing
    grounding = knowledge.ground([*opening, Message("user", follow_up)])
    assert grounding.kind == "passages"
    assert grounding.hits[0].chunk.location.startswith("Shipping policy > Canada")
    cost = knowledge.ground([*opening, Message("user", "And how much does it cost?")])
    canada = [h for h in cost.hits if h.chunk.location.startswith("Shipping policy > Canada")]
    assert canada and "$12.99" in cost.context  # the Canadian rates reach the prompt


def test_off_topic_after_on_topic_says_it_does_not_know(retriever) -> None:
    knowledge = Knowledge(retriever)
    history = [
        Message("user", "Do you ship to Canada?"),
        Message("assistant", "Yes, we ship to Canada."),
        Message("user", "What is the capital of France?"),
    ]
    grounding = knowledge.ground(history)
    assert grounding.kind == "no_answer" and grounding.reply.startswith("I'm sorry")
    faq = knowledge.ground([Message("user", "How long do I have to return something?")])
    assert faq.kind == "faq" and faq.hits[0].chunk.chunk.faq_id == "returns-window"
    assert faq.reply.startswith("You can return unused items")


def test_default_thresholds_answer_most_and_decline_off_topic(retriever) -> None:
    sets = ("paraphrases", "keywords", "unanswerable")
    questions = [q for s in sets for q in read_questions(ROOT / f"examples/support/kb-{s}.jsonl")]
    result = abstention(Knowledge(retriever), questions)
    # Measured 0.872 and 0.667 (docs/knowledge.md). Before min_faq_similarity: 0.915 and
    # 0.5; the FAQ floor declines two near-domain questions and costs four hard paraphrases.
    assert result["answered"] >= 0.85 and result["declined"] >= 0.65


#: kb eval on examples/heldout-kb (answered, declined) at the default thresholds, measured
#: 2026-11-26 (docs/knowledge.md). bank was used to choose min_faq_similarity and the lexical
#: gate; library and devtools were kept aside and measured once, after. They pin what was
#: reached, not the issue's 0.9/0.9 target, which MiniLM similarities do not reach here.
HELDOUT = {
    ("bank", "a"): (0.868, 0.755),
    ("bank", "b"): (0.838, 0.720),
    ("library", "a"): (0.939, 0.568),
    ("library", "b"): (0.969, 0.556),
    ("devtools", "a"): (0.516, 0.814),
    ("devtools", "b"): (0.710, 0.814),
}


@pytest.mark.parametrize(("domain", "split"), sorted(HELDOUT))
def test_removed_half_faq_sets(tmp_path, domain: str, split: str) -> None:
    folder = ROOT / "examples/heldout-kb" / domain
    kb = KnowledgeBase(tmp_path / "kb", create=True, embedder="minilm")
    kb.add([folder / f"kb-{split}.csv"])
    retriever = Retriever(kb)
    questions = read_questions(folder / f"questions-{split}.jsonl")
    hybrid, dense = (score_retrieval(retriever, questions, m) for m in ("hybrid", "dense"))
    assert hybrid["hit@1"] >= dense["hit@1"] and hybrid["mrr"] >= dense["mrr"] - 1e-9
    result = abstention(Knowledge(retriever), questions)
    answered, declined = HELDOUT[domain, split]
    assert result["answered"] >= answered - 0.03 and result["declined"] >= declined - 0.03
