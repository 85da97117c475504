"""Which words each language's reply metrics count, and how the language is found.

Word-based metrics assume that spaces separate words. For text that has none (Chinese,
Japanese, Thai) that assumption makes a sentence one "word": sacrebleu's default ``13a``
tokenizer scores a two-character difference as BLEU 0, and rouge-score, which keeps only
``[a-z0-9]``, sees two empty texts and reports 100. So each language gets the tokenizer
sacrebleu itself uses for it, and ROUGE, F1 and distinct-n count the words that tokenizer
finds. English keeps the reference libraries' own behaviour, unchanged.

Example:
    >>> lang = resolve_language("auto", ["是的，我们发货到加拿大。"])
    >>> lang.code, lang.bleu_tokenize, lang.words("发货到加拿大")
    ('zh', 'zh', ['发', '货', '到', '加', '拿', '大'])
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, get_args

import regex

#: ``english``: today's behaviour (13a, rouge-score's a-z0-9 words with Porter stemming,
#: SQuAD-normalised F1); ``segmented``: words from a sacrebleu tokenizer that splits text
#: without spaces; ``spaced``: 13a, and Unicode letter/digit runs as words.
Kind = Literal["english", "segmented", "spaced"]

#: sacrebleu's tokenizer for languages written without spaces between words: its own choice
#: for Chinese, Japanese and Korean; characters for the scripts it has no word splitter for.
SEGMENTERS = {
    "zh": "zh",
    "yue": "zh",
    "ja": "ja-mecab",
    "ko": "ko-mecab",
    "th": "char",
    "lo": "char",
    "km": "char",
    "my": "char",
}

#: ISO 639-1 code -> Snowball stemmer (PyStemmer), applied to ROUGE's words as rouge-score
#: applies Porter's to English ones.
SNOWBALL = {
    "ar": "arabic", "ca": "catalan", "cs": "czech", "da": "danish", "de": "german",
    "el": "greek", "eo": "esperanto", "es": "spanish", "et": "estonian", "eu": "basque",
    "fa": "persian", "fi": "finnish", "fr": "french", "ga": "irish", "hi": "hindi",
    "hu": "hungarian", "hy": "armenian", "id": "indonesian", "it": "italian",
    "lt": "lithuanian", "nb": "norwegian", "ne": "nepali", "nl": "dutch", "nn": "norwegian",
    "no": "norwegian", "pl": "polish", "pt": "portuguese", "ro": "romanian", "ru": "russian",
    "sr": "serbian", "st": "sesotho", "sv": "swedish", "ta": "tamil", "tr": "turkish",
    "yi": "yiddish",
}  # fmt: skip

#: What ``--lang`` takes: ``auto``, English, ``und`` (undetermined: any other language, on
#: Unicode words without stemming) and each language with rules of its own above.
LanguageCode = Literal[
    "auto", "en", "und", "zh", "yue", "ja", "ko", "th", "lo", "km", "my",
    "ar", "ca", "cs", "da", "de", "el", "eo", "es", "et", "eu", "fa", "fi", "fr", "ga", "hi",
    "hu", "hy", "id", "it", "lt", "nb", "ne", "nl", "nn", "no", "pl", "pt", "ro", "ru", "sr",
    "st", "sv", "ta", "tr", "yi",
]  # fmt: skip
CODES: tuple[str, ...] = get_args(LanguageCode)
_WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+")
_LETTER = regex.compile(r"\p{L}")
_SCRIPTS = {  # letters only, so punctuation and digits never tip the balance
    "han": regex.compile(r"[\p{Han}&&\p{L}]", regex.V1),
    "kana": regex.compile(r"[[\p{Hiragana}\p{Katakana}]&&\p{L}]", regex.V1),
    "ko": regex.compile(r"[\p{Hangul}&&\p{L}]", regex.V1),
    "th": regex.compile(r"[\p{Thai}&&\p{L}]", regex.V1),
    "lo": regex.compile(r"[\p{Lao}&&\p{L}]", regex.V1),
    "km": regex.compile(r"[\p{Khmer}&&\p{L}]", regex.V1),
    "my": regex.compile(r"[\p{Myanmar}&&\p{L}]", regex.V1),
    "non_ascii": regex.compile(r"[\p{L}--[a-zA-Z]]", regex.V1),
}
#: A script counts as the text's when this share of its letters is written in it.
MIN_SHARE = 0.1
#: Japanese rather than Chinese when kana are this share of the Han and kana letters.
KANA_SHARE = 0.1
#: Not English when this share of the letters lies outside a-z (é, ñ, ü, Cyrillic, ...).
NON_ASCII_SHARE = 0.005


@dataclass(frozen=True)
class Language:
    """How one language's replies are measured.

    Attributes:
        code: what ``--lang`` said or detection found (``zh``, ``fr``, ``und`` = undetermined).
        kind: which family of rules applies (see :data:`Kind`).
        bleu_tokenize: the sacrebleu tokenizer's name (``sacrebleu --tokenize``).
        stemmer: the stemmer ROUGE applies (``porter``, a Snowball name, or None).
        detected: True when the code was found from the references, not given.
    """

    code: str
    kind: Kind
    bleu_tokenize: str
    stemmer: str | None = None
    detected: bool = False

    def words(self, text: str) -> list[str]:
        """Lower-case words of a non-English text: NFKC-normalised (full-width ``５`` is
        ``5``), split by the language's sacrebleu tokenizer where it has no spaces, then
        runs of letters, marks and digits (punctuation is not a word).

        Example:
            >>> language_for("fr").words("L'été, au café !")
            ['l', 'été', 'au', 'café']
        """
        text = unicodedata.normalize("NFKC", text).lower()
        if self.kind == "segmented":
            text = bleu_metric(self.bleu_tokenize).tokenizer(text)
        return _WORD.findall(text)

    def describe(self) -> dict[str, Any]:
        """What the ``--json`` file records under ``lang``."""
        words = {
            "english": "rouge-score",
            "segmented": f"sacrebleu-{self.bleu_tokenize}",
            "spaced": "unicode",
        }
        return {
            "code": self.code,
            "detected": self.detected,
            "bleu_tokenize": bleu_metric(self.bleu_tokenize).tokenizer.signature(),
            "words": words[self.kind],
            "stemmer": self.stemmer,
        }


ENGLISH = Language("en", "english", "13a", "porter")


@cache
def bleu_metric(tokenize: str) -> Any:
    """sacrebleu's BLEU with ``tokenize``, built once (MeCab loads its dictionary here)."""
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize)


def check_language_code(code: str) -> str:
    """``code`` stripped and in lower case, or a ValueError that lists the codes there are.

    Example:
        >>> check_language_code(" ZH ")
        'zh'
    """
    code = code.strip().lower()
    if code not in CODES:
        raise ValueError(
            f"unknown language code {code!r}: expected auto (detect from the references) or "
            f"one of {', '.join(CODES[1:])} (und: any other language, on Unicode words)"
        )
    return code


def language_for(code: str, detected: bool = False) -> Language:
    """The :class:`Language` for one of :data:`CODES` (``auto`` excepted).

    Example:
        >>> language_for("pt").stemmer, language_for("ja").bleu_tokenize
        ('portuguese', 'ja-mecab')
    """
    code = check_language_code(code)
    if code == "auto":
        raise ValueError("auto is not a language: resolve_language() detects one")
    if code == "en":
        return Language(code, "english", "13a", "porter", detected)
    if code in SEGMENTERS:
        return Language(code, "segmented", SEGMENTERS[code], None, detected)
    return Language(code, "spaced", "13a", SNOWBALL.get(code), detected)


def script_shares(texts: Iterable[str]) -> dict[str, float]:
    """The share of the letters of ``texts`` in each script of :data:`_SCRIPTS`.

    Example:
        >>> script_shares(["東京です"])["kana"]
        0.5
    """
    text = "\n".join(texts)
    letters = max(len(_LETTER.findall(text)), 1)  # no letters: every share is 0
    return {name: len(p.findall(text)) / letters for name, p in _SCRIPTS.items()}


def detect_language(texts: Iterable[str]) -> str:
    """A language code from the scripts ``texts`` are written in; it tells scripts apart,
    not the languages that share one.

    Han, kana and Hangul together at least :data:`MIN_SHARE` of the letters: Korean where
    Hangul outnumbers the others, Japanese where kana are at least :data:`KANA_SHARE` of the
    Han and kana, else Chinese. Thai, Lao, Khmer or Myanmar at that share: that language.
    Otherwise English, unless :data:`NON_ASCII_SHARE` of the letters lie outside a-z
    (French, Russian, ...): then ``und`` (undetermined), measured on Unicode words.

    Example:
        >>> detect_language(["Ship to Canada?", "是的，我们发货到加拿大。"])
        'zh'
    """
    share = script_shares(texts)
    han_kana = share["han"] + share["kana"]
    if han_kana + share["ko"] >= MIN_SHARE:
        if share["ko"] > han_kana:
            return "ko"
        return "ja" if share["kana"] >= KANA_SHARE * han_kana else "zh"
    other = max(("th", "lo", "km", "my"), key=share.__getitem__)
    if share[other] >= MIN_SHARE:
        return other
    return "und" if share["non_ascii"] >= NON_ASCII_SHARE else "en"


def resolve_language(lang: str | Language, references: Iterable[str]) -> Language:
    """``lang`` as a :class:`Language`; ``auto`` detects it from the references."""
    if isinstance(lang, Language):
        return lang
    if check_language_code(lang) == "auto":
        return language_for(detect_language(references), detected=True)
    return language_for(lang)
