"""Does a reply state the gold fact, and does it say that it does not know?

Both are string questions about short support answers, so both are answered by plain,
documented rules rather than a model: a fact is matched after both texts are normalised
the same way (:func:`normalize_fact_text`), at word boundaries, and a reply declines when
it reproduces the bot's ``no_answer`` text or opens with a don't-know phrase
(:func:`declines`). docs/evaluation.md ("Grounded answers") lists the rules.

Example:
    >>> match_fact(("$6.95",), "A 6.95 dollar label fee is taken off the refund [1].")
    '$6.95'
    >>> declines("Sorry, I don't know that one.", "I'm sorry, I have no information.")
    'phrase'
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Literal

from chattune.knowledge.terms import WIDE_CHARS

#: Number words and their values: "zero".."nineteen", then the tens.
_SMALL_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_SMALL = {w: i for i, w in enumerate(_SMALL_WORDS)}
_TENS_WORDS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_TENS = {w: 20 + 10 * i for i, w in enumerate(_TENS_WORDS)}
_UNITS = "|".join(sorted(_SMALL, key=len, reverse=True))  # "seventeen" before "seven"
_DIGITS = "|".join(w for w, i in _SMALL.items() if 0 < i < 10)
_NUMBER_WORD = re.compile(rf"\b(?:({'|'.join(_TENS)})(?: ({_DIGITS}))?|({_UNITS}))\b")
_UNIT_WORDS = {
    "kilograms": "kg", "kilogram": "kg", "kilos": "kg", "kilo": "kg",
    "metres": "m", "meters": "m", "metre": "m", "meter": "m",
    "millimetres": "mm", "millimeters": "mm", "centimetres": "cm", "centimeters": "cm",
    "pounds": "lb", "lbs": "lb", "percent": "%", "per cent": "%",
}  # fmt: skip
_UNIT = re.compile(r"(\d)\s*(" + "|".join(sorted(_UNIT_WORDS, key=len, reverse=True)) + r")\b")
_DEGREES = re.compile(r"(\d)\s*(?:°\s*|degrees?\s+|deg\s+)?(fahrenheit|celsius|f|c)\b")
_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2212"})
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u02bc": "'", "`": "'",
                         "\u201c": '"', "\u201d": '"'})  # fmt: skip
#: A letter or digit of a script written with spaces: where a match may not begin or end.
#: CJK characters are excluded, so "45" is found in "45天" (no spaces to look for).
_WORD_CHAR = rf"[^\W_{WIDE_CHARS}]"


def _number_words(text: str) -> str:
    """Number words as digits: "forty five" is 45, "seven" 7 (0-99; hyphens are spaces now)."""

    def digits(m: re.Match[str]) -> str:
        tens, unit, small = m.groups()
        if small:
            return str(_SMALL[small])
        return str(_TENS[tens] + (_SMALL[unit] if unit else 0))

    return _NUMBER_WORD.sub(digits, text)


def _money(text: str) -> str:
    """``40 dollars``, ``USD 40``, ``US$40``, ``$ 40`` and ``$40.00`` all become ``$40``."""
    text = re.sub(r"(?:\bus\$\s*|\busd\s*|\$\s+)(?=\d)", "$", text)
    text = re.sub(r"(?<![\d$])(\d+(?:\.\d+)?)\s*(?:dollars?|usd|bucks)\b", r"$\1", text)
    return re.sub(r"\$(\d+)\.00\b", r"$\1", text)


def normalize_fact_text(text: str) -> str:
    """The form facts and replies are compared in.

    NFKC (full-width ``４５`` is ``45``), lower case, one kind of apostrophe and dash,
    hyphens between letters as spaces (``two-person`` = ``two person``), number words as
    digits (``forty-five`` = ``45``), no thousands commas (``10,000`` = ``10000``), money as
    ``$N`` (``40 dollars``, ``USD 40``, ``$40.00``), units glued the same way (``1.9kg``,
    ``1.9 kilograms``; ``20°F``, ``20 degrees F``; ``10 percent``), ``p.m.`` as ``pm``, and
    single spaces.

    Example:
        >>> normalize_fact_text("Forty-five days, 10,000 BTU, 1.9kg, USD 40.00, 2 p.m.")
        '45 days, 10000 btu, 1.9 kg, $40, 2 pm'
    """
    text = unicodedata.normalize("NFKC", text).lower().translate(_QUOTES).translate(_DASHES)
    text = re.sub(r"(?<=[^\W\d_])-(?=[^\W\d_])", " ", text)
    text = re.sub(r"\b([ap])\.m\.", r"\1m", text)
    text = _number_words(text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = _money(text)
    text = _UNIT.sub(lambda m: f"{m[1]} {_UNIT_WORDS[m[2]]}", text)
    text = _DEGREES.sub(lambda m: f"{m[1]}°{m[2][0]}", text)
    text = re.sub(r"(\d) %", r"\1%", text)
    text = re.sub(r"(\d)(?=[^\W\d_])", r"\1 ", text)  # 2pm -> 2 pm, 1.9kg -> 1.9 kg
    return " ".join(text.split())


def contains_fact(fact: str, text: str) -> bool:
    """Whether normalised ``fact`` occurs in normalised ``text`` as whole words: "45 days"
    is not found in "145 days", "4" not in "4.5" or "$49", "$5" not in "$5.99".

    Example:
        >>> contains_fact("45 days", "within forty-five days"), contains_fact("4", "4.5 kg")
        (True, False)
    """
    needle = normalize_fact_text(fact)
    if not needle:
        return False
    pattern = rf"(?<!{_WORD_CHAR})(?<!\d[.,]){re.escape(needle)}(?!{_WORD_CHAR})(?![.,]\d)"
    if needle[0].isdigit():  # a bare number inside an amount or code is another number
        pattern = r"(?<![$\d-])" + pattern
    return re.search(pattern, normalize_fact_text(text)) is not None


def match_fact(alternatives: Sequence[str], reply: str) -> str | None:
    """The first of a fact's ``alternatives`` the reply contains, or None.

    Example:
        >>> match_fact(("14 days", "two weeks"), "You have two weeks to report it.")
        'two weeks'
    """
    return next((alt for alt in alternatives if contains_fact(alt, reply)), None)


#: Ways a reply says it has no answer. Matched in its opening (see :func:`opening`), on
#: lower-case text with straight apostrophes.
DONT_KNOW = re.compile(
    r"\bi (?:really )?(?:do not|don't|dont|do not really) know\b"
    r"|\bi(?:'m| am) not (?:sure|certain|aware)\b"
    r"|\bi (?:do not|don't|dont) have (?:any |enough |that |the |specific )?"
    r"(?:information|info|details|data|an answer)\b"
    r"|\bi (?:could not|couldn't|can't|cannot|can not) (?:find|answer|say|tell)\b"
    r"|\bi(?:'m| am) (?:unable|not able|not equipped) to "
    r"(?:answer|find|say|tell|help with|provide)\b"
    r"|\bi(?:'m| am) not (?:equipped|designed) to\b"
    r"|\bno (?:information|details|mention) (?:about|on|of|regarding)\b"
    r"|\b(?:documents?|passages?|references?|sources?)\b[^.!?]{0,40}"
    r"\b(?:do not|don't|does not|doesn't) (?:contain|mention|say|include|cover|specify|state)\b"
    r"|\bnot (?:mentioned|covered|stated|specified|included|provided|listed) in (?:the |any )?"
    r"(?:reference |provided )?(?:documents?|passages?|references?|sources?|information|context)\b"
)
#: Sentences that say nothing yet: greetings, thanks, apologies ("I'm sorry for any
#: confusion."), the bot introducing itself. The opening reaches past them.
FILLER = re.compile(
    r"^(?:hi|hello|hey|thanks|thank you|apologies|(?:i'm |i am )?(?:so |very |really )?sorry)\b"
    r"|^i(?:'m| am) (?:a |an |your |pine\b).*\bassistant\b"
    r"|^i(?:'m| am) (?:happy|glad|here) to (?:help|assist)\b"
)
Declined = Literal["no_answer", "no_answer_text", "phrase"]


def sentences(text: str) -> list[str]:
    """``text`` split after ``.``, ``!``, ``?`` (also CJK ``。！？``) or at a line break;
    lower case, straight apostrophes."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_QUOTES)
    return [p.strip() for p in re.split(r"(?<=[.!?。！？])\s+|\n+", text.strip()) if p.strip()]


def opening(reply: str, n: int = 2) -> str:
    """The reply's first ``n`` sentences that say something, with the filler before them.

    Example:
        >>> opening("Sorry for the confusion! I'm Pine, your assistant. It's $5. Or $6. Or $7.")
        "sorry for the confusion! i'm pine, your assistant. it's $5. or $6."
    """
    kept: list[str] = []
    for sentence in sentences(reply):
        kept.append(sentence)
        n -= not FILLER.search(sentence)
        if n == 0:
            break
    return " ".join(kept)


def declines(reply: str, no_answer: str) -> Declined | None:
    """How ``reply`` says it does not know, or None when it attempts an answer.

    ``no_answer_text``: it begins with the first sentence of the bot's ``no_answer`` text
    (a model tuned on it repeats it); ``phrase``: a :data:`DONT_KNOW` phrase appears in its
    :func:`opening`, the first two sentences after any greeting, apology or
    self-introduction. Only the opening counts, so an answer that adds "I don't know about
    Alaska, though" at its end is still an answer. (The engine's own "don't know" decision,
    ``no_answer``, is known without reading the reply: see ``evaluate.grounded``.)
    """
    first = (sentences(no_answer) or [""])[0].rstrip(".!?。！？ ")
    if first and (sentences(reply) or [""])[0].startswith(first):
        return "no_answer_text"
    return "phrase" if DONT_KNOW.search(opening(reply)) else None
