"""Knowledge in Chinese, Japanese and Korean: BM25 terms, the lexical gate and the "every
term" rule on them, citations next to CJK punctuation, chunking and a multilingual embedder.

English must behave exactly as before: its terms, chunks and hashing vectors are compared
with the pre-CJK rules, and an index that records no term scheme is read as it was built.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from chattune.data.types import Message
from chattune.knowledge.chunking import chunk_blocks, split_words
from chattune.knowledge.documents import Block, read_file, unwrap_lines
from chattune.knowledge.embed import HashingEmbedder, load_embedder
from chattune.knowledge.grounding import (
    Grounding,
    Knowledge,
    KnowledgeSettings,
    citations,
    cite,
    context_block,
)
from chattune.knowledge.index import KnowledgeError
from chattune.knowledge.retrieve import Retriever, lexical_gate
from chattune.knowledge.store import KnowledgeBase
from chattune.knowledge.terms import LEGACY_SCHEME, bm25_terms, cjk_terms
from tests.conftest import ROOT, run_cli

SUPPORT = ROOT / "examples" / "support"
SHIPPING_ZH = """# 配送政策

## 加拿大

我们发货到加拿大所有省份和地区，标准配送通常需要5到8个工作日。

## 头灯

Northstar 头灯是IPX7防水等级，掉进小溪也没问题。
"""
FAQ_ZH = "id,question,answer\ngift-cards,礼品卡会过期吗？,松岭礼品卡永不过期。\n"


@pytest.fixture
def zh_docs(tmp_path: Path) -> Path:
    folder = tmp_path / "zh"
    folder.mkdir()
    (folder / "shipping.md").write_text(SHIPPING_ZH, encoding="utf-8")
    (folder / "faq.csv").write_text(FAQ_ZH, encoding="utf-8")
    return folder


@pytest.fixture
def zh_kb(zh_docs: Path, tmp_path: Path) -> KnowledgeBase:
    base = KnowledgeBase(tmp_path / "kb", create=True, embedder="hashing")
    base.add([zh_docs])
    return base


# -- terms ---------------------------------------------------------------------------------


def test_cjk_runs_become_characters_and_bigrams_beside_english_words() -> None:
    (terms,) = bm25_terms(["订单PC-104233的运费"])
    assert terms == ["pc", "104233", "订", "单", "订单", "的", "运", "费", "的运", "运费"]  # 2 runs
    assert cjk_terms("東京に送れますか") == [
        *"東京に送れますか",
        *["東京", "京に", "に送", "送れ", "れま", "ます", "すか"],
    ]
    assert cjk_terms("환불 언제") == ["환", "불", "환불", "언", "제", "언제"]  # a run per phrase
    assert bm25_terms(["ＰＣ－１０４２３３　运费"]) == bm25_terms(["PC-104233 运费"])  # width


def test_jieba_cuts_chinese_words_and_leaves_kana_to_bigrams() -> None:
    (terms,) = bm25_terms(["你们发货到加拿大吗？"], "jieba")
    assert {"发货", "加拿大"} <= set(terms) and not {"你们", "吗", "到"} & set(terms)
    assert cjk_terms("送料は無料です", "jieba") == cjk_terms("送料は無料です", "bigram")


def test_english_terms_are_exactly_the_pre_cjk_words() -> None:
    texts = [c.index_text for p in sorted((SUPPORT / "kb").iterdir()) for c in chunks_of(p)]
    for name in ("kb-paraphrases.jsonl", "kb-keywords.jsonl", "kb-unanswerable.jsonl"):
        texts += [json.loads(line)["question"] for line in (SUPPORT / name).open()]
    words = bm25_terms(texts, LEGACY_SCHEME)
    assert bm25_terms(texts, "bigram") == words == bm25_terms(texts, "jieba")
    assert words[texts.index("Can a parcel be sent to Toronto?")] == ["parcel", "sent", "toronto"]
    with pytest.raises(ValueError, match="unknown BM25 term scheme"):
        bm25_terms(["x"], "morphemes")


def test_the_cli_offers_exactly_the_schemes() -> None:
    import typing

    from chattune.cli.kb import Terms
    from chattune.knowledge.terms import SCHEMES

    assert typing.get_args(Terms) == SCHEMES


def chunks_of(path: Path):
    return chunk_blocks(read_file(path))


def test_a_chinese_question_was_one_term_and_now_shares_terms_with_its_answer() -> None:
    question, answer = "能寄到加拿大吗？", "我们发货到加拿大所有省份和地区。"
    before = bm25_terms([question, answer], LEGACY_SCHEME)
    assert before == [["能寄到加拿大吗"], ["我们发货到加拿大所有省份和地区"]]  # nothing shared
    q, a = (set(t) for t in bm25_terms([question, answer]))
    assert {"加拿", "拿大", "到加"} <= q & a


# -- the index records its scheme ------------------------------------------------------------


def test_the_scheme_is_recorded_fixed_at_creation_and_shown_in_stats(zh_docs, tmp_path) -> None:
    base = KnowledgeBase(tmp_path / "kb", create=True, embedder="hashing", terms="jieba")
    base.add([zh_docs])
    manifest = json.loads((tmp_path / "kb" / "index" / "manifest.json").read_text())
    assert manifest["terms"] == "jieba" and base.indexes.scheme == "jieba"
    assert base.stats()["terms"] == "jieba"
    with pytest.raises(KnowledgeError, match=r"--terms bigram: .* was built with jieba"):
        KnowledgeBase(tmp_path / "kb", terms="bigram")
    with pytest.raises(KnowledgeError, match="--terms words: expected one of bigram, jieba"):
        KnowledgeBase(tmp_path / "other", create=True, terms="words")


def test_an_index_that_records_no_scheme_is_read_as_built_until_rebuilt(zh_kb) -> None:
    """An index from before term schemes: its documents were cut into words, so queries are
    too (exactly the old behaviour: no BM25 hit for a Chinese question); a rebuild moves it to
    the knowledge base's scheme, with no re-embedding."""
    old_style(zh_kb)
    reopened = KnowledgeBase(zh_kb.folder)
    assert reopened.indexes.scheme == LEGACY_SCHEME
    assert Retriever(reopened).search("能寄到加拿大吗？", k=3, mode="bm25") == []
    reopened.rebuild()
    assert reopened.indexes.scheme == "bigram"
    hits = Retriever(reopened).search("能寄到加拿大吗？", k=3, mode="bm25")
    assert hits[0].chunk.chunk.title == "配送政策 > 加拿大"


def old_style(kb: KnowledgeBase) -> None:
    """Rebuild ``kb``'s index with the pre-CJK terms and a manifest without ``terms``."""
    from chattune.knowledge import index

    rows = kb.db.execute("SELECT id, vector, title, text FROM chunks ORDER BY id").fetchall()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    texts = [f"{r[2]}\n{r[3]}" if r[2] else r[3] for r in rows]
    index.build(kb.folder, kb.generation, ids, vectors, texts, LEGACY_SCHEME)
    path = kb.folder / "index" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["terms"]
    path.write_text(json.dumps(manifest))


def test_an_english_index_without_a_scheme_searches_exactly_as_a_new_one(tmp_path) -> None:
    kb = KnowledgeBase(tmp_path / "kb", create=True, embedder="hashing")
    kb.add([SUPPORT / "kb"])
    queries = [json.loads(line)["question"] for line in (SUPPORT / "kb-keywords.jsonl").open()]
    new = [search_all(Retriever(kb), q) for q in queries]
    old_style(kb)
    reopened = KnowledgeBase(kb.folder)
    assert reopened.indexes.scheme == LEGACY_SCHEME
    assert [search_all(Retriever(reopened), q) for q in queries] == new


def search_all(retriever: Retriever, query: str) -> list[list[tuple[int, float]]]:
    return [
        [(h.chunk.id, round(h.score, 6)) for h in retriever.search(query, k=5, mode=mode)]
        for mode in ("bm25", "hybrid", "rrf")
    ]


def test_an_unknown_scheme_in_the_manifest_says_how_to_fix_it(zh_kb) -> None:
    path = zh_kb.folder / "index" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "terms": "morphemes"}))
    with pytest.raises(KnowledgeError, match=r"BM25 terms 'morphemes'.*kb rebuild"):
        _ = KnowledgeBase(zh_kb.folder).indexes


# -- the gate and the "every term" rule ------------------------------------------------------


def test_the_lexical_gate_opens_on_a_chinese_keyword_query(zh_kb) -> None:
    retriever = Retriever(zh_kb)
    idx = zh_kb.indexes
    passage = next(h.chunk.chunk.index_text for h in retriever.search("头灯", k=3, mode="bm25"))
    assert lexical_gate(set(idx.terms("Northstar 头灯 防水")), set(idx.terms(passage)), 1.0) == 1
    assert lexical_gate(set(idx.terms("头灯能用多久？")), set(idx.terms(passage)), 1.0) == 0
    top = retriever.search("Northstar 头灯 防水", k=1, mode="hybrid")[0]
    assert top.chunk.chunk.title == "配送政策 > 头灯" and top.lexical > 0


def test_a_passage_holding_every_term_of_a_chinese_message_is_relevant(zh_kb) -> None:
    def kind(message: str) -> str:
        strict = KnowledgeSettings(min_similarity=0.99, min_topic_similarity=0.99)
        return Knowledge(Retriever(zh_kb), strict).ground([Message("user", message)]).kind

    assert kind("Northstar 头灯 IPX7") == "passages"  # every term is in the headlamp passage
    assert kind("帐篷有多重？") == "no_answer"  # no passage holds them: cosines decide


# -- citations -------------------------------------------------------------------------------


def test_citations_in_cjk_brackets_and_full_width_digits() -> None:
    assert citations("是的，我们发货到加拿大。[1]") == {1}
    assert citations("见【2】和［3］，以及[４]。") == {2, 3, 4}
    assert citations("【１２】 [1】 【x】 [] [1234]") == {12}  # mixed brackets are not a citation
    assert citations("It is $12.99 [1].") == {1}


def test_a_stored_chinese_answer_is_cited_without_a_space(zh_kb) -> None:
    assert cite("No, they never expire.") == "No, they never expire. [1]"
    assert cite("松岭礼品卡永不过期。") == "松岭礼品卡永不过期。[1]"
    assert cite("永不过期（见条款）") == "永不过期（见条款）[1]"
    grounding = Knowledge(Retriever(zh_kb)).ground([Message("user", "礼品卡会过期吗？")])
    assert grounding.kind == "faq" and grounding.reply == "松岭礼品卡永不过期。[1]"
    assert grounding.sources(grounding.reply)[0]["cited"]


def test_the_context_block_quotes_chinese_passages_and_the_reply_cites_them(zh_kb) -> None:
    instruction = "请根据下面的参考文档回答问题，用到哪篇就标注编号，例如[1]。"
    settings = KnowledgeSettings(min_similarity=0.0, faq_answers="off", instruction=instruction)
    grounding = Knowledge(Retriever(zh_kb), settings).ground(
        [Message("user", "你们发货到加拿大吗？要多久？")]
    )
    lines = grounding.context.splitlines()
    assert lines[0] == instruction and lines[2] == "<documents>" and lines[-1] == "</documents>"
    inside = [line for line in lines[3:-1] if not re.match(r"</?document\b", line)]
    assert inside and all(line.startswith("> ") for line in inside)
    assert any("5到8个工作日" in line for line in inside)
    where = [h.chunk.chunk.title for h in grounding.hits].index("配送政策 > 加拿大") + 1
    cited = grounding.sources(f"是的，我们发货到加拿大，通常需要5到8个工作日。【{where}】")
    assert [s["cited"] for s in cited] == [s["index"] == where for s in cited]
    assert context_block(grounding.hits, instruction) == grounding.context


def test_sources_of_a_reply_with_full_width_citations() -> None:
    from chattune.knowledge.retrieve import Hit
    from chattune.knowledge.store import StoredChunk

    chunk = chunk_blocks([Block("我们发货到加拿大。", ("配送",), 1)])[0]
    hits = [Hit(StoredChunk(i, "s.md", "markdown", chunk), 0.9, 0.9, 0.0) for i in (1, 2, 3)]
    sources = Grounding("passages", hits).sources("可以。［１］运费另计【3】")
    assert [s["cited"] for s in sources] == [True, False, True]


# -- chunking, PDF lines, the hashing embedder ----------------------------------------------


def test_a_long_chinese_paragraph_is_cut_into_character_windows() -> None:
    paragraph = "我们发货到加拿大所有省份和地区。" * 25  # 400 characters, no space
    chunks = chunk_blocks([Block(paragraph, ("配送",), 3)], max_words=160, overlap_words=32)
    assert len(chunks) == 3 and all(" " not in c.text for c in chunks)
    assert [len(c.text) for c in chunks] == [160, 160, 144]
    assert chunks[1].text.startswith(chunks[0].text[-32:])  # neighbours overlap by 32
    assert "".join(c.text[32 if i else 0 :] for i, c in enumerate(chunks)) == paragraph
    assert split_words("Ridgeline 2 帐篷，1.9公斤") == [
        "Ridgeline", "2", "帐", "篷", "，", "1.9", "公", "斤",
    ]  # fmt: skip


def test_pdf_lines_join_without_a_space_between_chinese_characters() -> None:
    assert unwrap_lines("我们发货\n到加拿大，\n  标准配送") == "我们发货到加拿大，标准配送"
    assert unwrap_lines("Free over\n$60.\n我们") == "Free over $60. 我们"  # a space beside Latin


def test_hashing_vectors_share_chinese_characters_and_keep_english_as_before() -> None:
    emb = HashingEmbedder()
    q, near, far = emb.encode(["能寄到加拿大吗？", "我们发货到加拿大。", "礼品卡永不过期。"])
    assert q @ near > 0.3 and abs(q @ far) < 0.1  # one word each before: cosine 0 or 1
    old_words = re.findall(r"\w+", "ship to canada, pc-104233 résumé ok_x")
    from chattune.knowledge.embed import _WORD

    assert _WORD.findall("ship to canada, pc-104233 résumé ok_x") == old_words


# -- a multilingual sentence-transformers embedder -------------------------------------------


@pytest.fixture(scope="module")
def tiny_multilingual(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT whose WordPiece vocabulary holds every character of the Chinese
    example (BERT's tokenizer splits CJK text into characters), with mean pooling, saved as a
    sentence-transformers folder: the shape of paraphrase-multilingual-MiniLM, 32 wide."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    text = "".join(p.read_text(encoding="utf-8") for p in (ZH / "kb").iterdir())
    text += "".join(p.read_text(encoding="utf-8") for p in ZH.glob("kb-*.jsonl"))
    wide = sorted({c for c in text if ord(c) > 127 and not c.isspace()})  # 汉字，“”、。
    ascii_ = "0123456789abcdefghijklmnopqrstuvwxyz"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ascii_, *(f"##{c}" for c in ascii_)]
    vocab += [*".,?!:;()-$%/@_\"'<>=|&#", *wide]
    encoder = tmp_path_factory.mktemp("tiny-bert")
    (encoder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(str(encoder / "vocab.txt"), do_lower_case=True).save_pretrained(encoder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(encoder)
    folder = tmp_path_factory.mktemp("tiny-multilingual")
    modules = [Transformer(str(encoder), max_seq_length=256), Pooling(32, "mean")]
    SentenceTransformer(modules=modules).save(str(folder))
    return folder


ZH = ROOT / "examples" / "support-zh"


def test_a_multilingual_sentence_transformers_folder_embeds_chinese(tiny_multilingual) -> None:
    model = load_embedder(str(tiny_multilingual))
    tokenizer = model.model.tokenizer
    lines = (ZH / "kb" / "faq.csv").read_text(encoding="utf-8").splitlines()
    assert not any(tokenizer.unk_token in tokenizer.tokenize(line) for line in lines)
    vectors = model.encode(["能寄到加拿大吗？", "礼品卡会过期吗？"])
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert vectors[0] @ vectors[1] < 0.999  # different questions, different vectors


def test_kb_commands_with_a_multilingual_embedder(tiny_multilingual, tmp_path) -> None:
    kb = str(tmp_path / "kb")
    added = run_cli("kb", "add", str(ZH / "kb"), "--kb", kb, "--embedder", str(tiny_multilingual))
    assert added.returncode == 0, added.stderr
    assert "36 chunks from 4 sources" in added.stdout
    stats = json.loads(run_cli("kb", "stats", "--kb", kb, "--json").stdout)
    assert stats["embedder"] == str(tiny_multilingual) and stats["terms"] == "bigram"
    # A stored question asked verbatim has cosine 1 with itself: dense search finds its entry.
    found = run_cli("kb", "search", "礼品卡会过期吗？", "--kb", kb, "--mode", "dense", "--json")
    hit = json.loads(found.stdout)[0]
    assert hit["location"] == "FAQ gift-cards" and hit["similarity"] == pytest.approx(1, abs=1e-4)
    ev = run_cli("kb", "eval", "--kb", kb, "--data", str(ZH / "kb-paraphrases.jsonl"), "--json")
    assert ev.returncode == 0, ev.stderr
    assert set(json.loads(ev.stdout)["retrieval"]) == {"hybrid", "dense", "bm25", "rrf"}
