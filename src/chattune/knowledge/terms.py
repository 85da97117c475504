"""BM25 terms: the words that BM25, the lexical gate and the "every term" rule compare.

English and other space-separated text becomes lower-cased words, English stop words out,
Snowball-stemmed (bm25s's tokenizer). Chinese and Japanese are written without spaces, and
Korean puts them only between phrases, so that tokenizer would make a whole Chinese sentence
one "word" that no other sentence shares. Runs of CJK characters are therefore cut into
terms of their own, by one of two schemes, chosen per knowledge base (``kb add --terms``)
and recorded in its index:

- ``bigram`` (the default): every character and every pair of adjacent characters, as
  Lucene's CJK analyzer does with unigrams on. It needs no dictionary, so it fits Japanese
  and Korean as well as Chinese, and it matches paraphrases that share characters but not
  words ("邮费" and "运费" share "费").
- ``jieba``: Chinese words from the jieba segmenter in search mode (jieba-rs, through
  ``rjieba``: the dictionary and HMM of the Python ``jieba``), Chinese stop words out. Runs
  with kana or Hangul are still cut into bigrams: jieba's dictionary is Chinese.

On the Chinese example (docs/knowledge.md) characters + bigrams found the FAQ entry first
more often than jieba words, on the tuning and the held-out questions alike.

Full-width forms (``ＰＣ－１２３``, common in CJK text) are folded to ASCII first. Text with
neither CJK characters nor full-width forms gets exactly the terms it got before CJK support
(``words``, the scheme of indexes that record none), so English retrieval is unchanged.

Example:
    >>> bm25_terms(["Do you ship to Canada?", "寄到加拿大？"])
    [['ship', 'canada'], ['寄', '到', '加', '拿', '大', '寄到', '到加', '加拿', '拿大']]
    >>> bm25_terms(["寄到加拿大？"], "jieba")
    [['寄', '加拿', '加拿大']]
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from typing import Any, Literal

Scheme = Literal["bigram", "jieba"]
SCHEMES: tuple[Scheme, ...] = ("bigram", "jieba")
DEFAULT_SCHEME: Scheme = "bigram"
#: What an index that records no scheme was built with: words only (no CJK terms).
LEGACY_SCHEME = "words"

#: Letters of scripts written without spaces: Han (CJK ideographs, their extensions and
#: compatibility forms, 々 and 〇), hiragana, katakana (ー included) and Hangul.
CJK_LETTERS = (
    "\u1100-\u11ff\u3005\u3007\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff"
    "\u3131-\u318e\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7a3\uf900-\ufaff"
    "\U00020000-\U0003134f"
)
#: Characters written without spaces around them: CJK letters, CJK punctuation (、。「」【】
#: and the rest of U+3001-U+303F, ・) and full-width forms (，？！（）１).
WIDE_CHARS = f"{CJK_LETTERS}\u3001-\u303f\u30fb\uff00-\uffef"
_RUN = re.compile(f"[{CJK_LETTERS}]+")
_KANA_HANGUL = re.compile("[\u1100-\u11ff\u3041-\u30ff\u3131-\u318e\u31f0-\u31ff\uac00-\ud7a3]")
_FULLWIDTH = re.compile("[\u3000\uff01-\uff5e\uff61-\uffef]+")


def bm25_terms(texts: list[str], scheme: str = DEFAULT_SCHEME) -> list[list[str]]:
    """The BM25 terms of each text under ``scheme`` (``bigram``, ``jieba`` or ``words``)."""
    if scheme == LEGACY_SCHEME:
        return _words(texts)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown BM25 term scheme {scheme!r}; expected one of {SCHEMES}")
    folded = [_fold_width(t) for t in texts]
    words = _words([_RUN.sub(" ", t) for t in folded])
    return [w + cjk_terms(t, scheme) for w, t in zip(words, folded, strict=True)]


def cjk_terms(text: str, scheme: str = DEFAULT_SCHEME) -> list[str]:
    """Terms of the CJK runs in ``text``, in order; other characters are left out.

    Example:
        >>> cjk_terms("退货运费 (return label)")
        ['退', '货', '运', '费', '退货', '货运', '运费']
    """
    terms: list[str] = []
    for run in _RUN.findall(text):
        if scheme == "jieba" and not _KANA_HANGUL.search(run):
            terms += [w for w in _jieba().cut_for_search(run) if w not in _chinese_stopwords()]
        else:
            terms += unigrams_and_bigrams(run)
    return terms


def unigrams_and_bigrams(run: str) -> list[str]:
    """Each character, then each pair of neighbours.

    Example:
        >>> unigrams_and_bigrams("运费")
        ['运', '费', '运费']
    """
    return [*run, *(run[i : i + 2] for i in range(len(run) - 1))]


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a letter of a script written without spaces."""
    return _RUN.search(text) is not None


def _fold_width(text: str) -> str:
    """Full-width ASCII and half-width katakana to their usual forms (NFKC on those alone:
    NFKC on all text would also rewrite ligatures, superscripts and fractions)."""
    return _FULLWIDTH.sub(lambda m: unicodedata.normalize("NFKC", m[0]), text)


def _words(texts: list[str]) -> list[list[str]]:
    """Lower-cased words of two or more letters, English stop words out, Snowball-stemmed."""
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return import_bm25s().tokenize(
        texts,
        stopwords=list(STOPWORDS_EN_PLUS),
        stemmer=_stemmer(Stemmer),
        return_ids=False,
        show_progress=False,
    )


def import_bm25s() -> Any:
    """bm25s, with its logger put back to WARNING: on import it sets itself to DEBUG, which
    overrides the level the CLI chose and prints "Building index from tokens" on every add."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


_LOCAL = threading.local()


def _stemmer(module: Any) -> Any:
    """One Snowball stemmer per thread: PyStemmer objects must not be shared between threads
    (the server retrieves in worker threads)."""
    if not hasattr(_LOCAL, "stemmer"):
        _LOCAL.stemmer = module.Stemmer("english")
    return _LOCAL.stemmer


def _jieba() -> Any:
    """rjieba: jieba-rs loads its dictionary once, on the first cut (about 0.2 s)."""
    import rjieba

    return rjieba


_STOPWORDS: frozenset[str] | None = None


def _chinese_stopwords() -> frozenset[str]:
    """bm25s's Chinese stop words (841: particles, pronouns, "什么", "可以", ...)."""
    global _STOPWORDS
    if _STOPWORDS is None:
        from bm25s.stopwords import STOPWORDS_CHINESE

        _STOPWORDS = frozenset(STOPWORDS_CHINESE)
    return _STOPWORDS
