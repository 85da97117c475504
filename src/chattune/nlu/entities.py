"""Entities by pattern, by list and by parser: order ids, emails, phones, amounts, dates,
and the shop's own names.

Patterns suffice for what has a shape (an email, an order id, ``$84.50``); the two things
with many shapes go to maintained parsers: ``phonenumbers`` (Google's libphonenumber) finds
and normalises phone numbers for any country, and ``dateparser`` turns "next Tuesday" or
"two weeks ago" into a date. ``dateparser.search`` over a whole message is slow (tens of
ms) and finds "dates" in words like "may" or "second", so a pattern first finds the spans
that look like dates and dateparser reads only those. Product names and other shop
vocabulary come from a gazetteer: whole-word, case-insensitive, the longest name first.

Overlaps are settled in the order of :data:`PRIORITY` (an email is never also read as a
date or an order id), then by length.

Example:
    >>> ex = EntityExtractor(gazetteer={"product": ["Ridgeline 2"]})
    >>> [(e.type, e.value) for e in ex.extract("Is the ridgeline 2 back? Order PC-104233, "
    ...     "paid $84.50 on 2026-11-02; mail maya@example.com")]  # doctest: +NORMALIZE_WHITESPACE
    [('product', 'Ridgeline 2'), ('order_id', 'PC-104233'), ('amount', '84.50 USD'),
     ('date', '2026-11-02'), ('email', 'maya@example.com')]
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import re
from collections.abc import Mapping
from typing import Any

from chattune.errors import ConfigError
from chattune.nlu.types import Entity

#: Which type wins when two spans overlap.
PRIORITY = ("email", "phone", "order_id", "amount", "date")
#: Bounds on what one text costs and returns: a message of 2,000 "$1 " is one amount
#: repeated, not 666 details a router needs (and dateparser reads each date span).
MAX_ENTITIES = 20
MAX_DATE_SPANS = 10

EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}(?!\w)")
#: An id with a letter prefix ("PC-104233", "A12345"), or digits after "order" / "#".
ORDER_ID = (
    r"(?<![\w-])(?i:[A-Z]{1,4})-?\d{4,12}(?![\w-])",
    r"(?i:order(?:\s+(?:number|no\.?|id|#))?\s*[:#]?\s*|#\s?)(?P<value>\d{4,12})(?!\w)",
)
_SYMBOLS = {
    "$": "USD",
    "US$": "USD",
    "C$": "CAD",
    "CA$": "CAD",
    "€": "EUR",
    "£": "GBP",
    "¥": "JPY",
    "A$": "AUD",
}
_CODES = {
    "usd": "USD",
    "cad": "CAD",
    "eur": "EUR",
    "gbp": "GBP",
    "aud": "AUD",
    "jpy": "JPY",
    "dollars": "USD",
    "dollar": "USD",
    "bucks": "USD",
    "euros": "EUR",
    "euro": "EUR",
    "pounds": "GBP",
}
_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d{1,2})?|\d+(?:\.\d{1,2})?"
_SYMBOL = "|".join(re.escape(s) for s in sorted(_SYMBOLS, key=len, reverse=True))
_CODE = "|".join(sorted(_CODES, key=len, reverse=True))
AMOUNT = re.compile(
    rf"(?P<sym>{_SYMBOL})\s?(?P<n1>{_NUMBER})(?:\s?(?P<code1>(?i:{_CODE}))(?!\w))?"
    rf"|(?i:(?P<code2>{_CODE}))\s?(?P<n2>{_NUMBER})(?!\w)"
    rf"|(?<![\w.,])(?P<n3>{_NUMBER})\s?(?i:(?P<code3>{_CODE}))(?!\w)"
)
_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
_DAY = r"(?:mon|tues|wednes|thurs|fri|satur|sun)day"
#: Abbreviations are words too ("she sat", "the sun"): only after next/last/this/on.
_DAY_SHORT = r"(?:mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun)\.?"
_SEASON = r"(?:weekend|spring|summer|fall|autumn|winter)"
_COUNT = r"(?:\d+|an?|one|two|three|four|five|six|seven|eight|nine|ten|a couple of|a few)"
_UNIT = r"(?:days?|weeks?|months?|years?)"
_SHORT = r"(?:min(?:ute)?s?|h(?:ou)?rs?|hours?)"
_PART = r"(?:morning|afternoon|evening|night)"
DATE = re.compile(
    r"(?i)(?<!\w)(?:"
    r"\d{4}-\d{1,2}-\d{1,2}"  # 2026-11-02
    r"|\d{1,2}/\d{1,2}(?:/\d{2,4})?"  # 11/02, 11/02/2026
    rf"|{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"  # March 3rd, 2026
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}(?:,?\s+\d{{4}})?"  # 3 March
    rf"|(?:the\s+)?(?:start|beginning|middle|end)\s+of\s+{_MONTH}"  # the end of May
    rf"|{_MONTH}\.?\s+(?:19|20)\d\d"  # March 2023
    rf"|(?:(?:next|last|this)\s+)?{_DAY}(?:\s+{_PART})?"  # next Tuesday, friday evening
    rf"|(?:next|last|this)\s+{_DAY_SHORT}|(?<=\bon\s){_DAY_SHORT}"  # next tue, on Sat
    rf"|(?:next|last|this)\s+(?:week|month|year|{_SEASON})|this\s+{_PART}|last\s+night"
    rf"|(?:today|tomorrow|yesterday)\s+{_PART}"  # tomorrow morning
    rf"|(?:{_COUNT}\s+)?{_UNIT}\s+ago|(?:{_COUNT}\s+){_SHORT}\s+ago"  # 2 weeks / an hour ago
    rf"|in\s+{_COUNT}\s+{_UNIT}"
    r"|(?:(?<=\bin\s)|(?<=\bsince\s))(?:19|20)\d\d"  # in 2024
    r"|today|tomorrow|yesterday|tonight|the day before yesterday|the day after tomorrow"
    r")(?!\w)"
)


class EntityExtractor:
    """Pattern, parser and gazetteer entities of one text.

    Args:
        patterns: extra or replacing patterns, type -> regular expression(s); a pattern
            with a ``value`` group keeps only that group (``order (?P<value>\\d+)``).
            ``order_id`` given here replaces the built-in order-id patterns.
        gazetteer: type -> names (``{"product": ["Ridgeline 2", "Summit 30L"]}``).
        region: country for phone numbers written without ``+`` (ISO code).
        currency: what a bare ``$`` means.
        tagger: a trained :class:`~chattune.nlu.tokens.Tagger` for the types no pattern
            covers (a gazetteer match wins where the two overlap).
    """

    def __init__(
        self,
        patterns: Mapping[str, str | list[str]] | None = None,
        gazetteer: Mapping[str, list[str]] | None = None,
        region: str = "US",
        currency: str = "USD",
        tagger: Any = None,
    ) -> None:
        given = {k: [v] if isinstance(v, str) else list(v) for k, v in (patterns or {}).items()}
        self.patterns = {"order_id": given.pop("order_id", list(ORDER_ID)), **given}
        self.compiled = {t: [_compile(t, p) for p in ps] for t, ps in self.patterns.items()}
        self.gazetteer = {
            t: sorted(set(names), key=len, reverse=True) for t, names in (gazetteer or {}).items()
        }
        self._names = {
            t: re.compile("|".join(rf"(?<!\w){re.escape(n)}(?!\w)" for n in names), re.I)
            for t, names in self.gazetteer.items()
            if names
        }
        self.region, self.currency, self.tagger = region, currency, tagger

    def extract(self, text: str, today: dt.date | None = None) -> list[Entity]:
        """Every entity in ``text``, in reading order, overlaps settled (see module doc)."""
        found = [*self._patterns(text), *_emails(text), *self._phones(text)]
        found += [*self._amounts(text), *_dates(text, today), *self._gazetteer(text)]
        if self.tagger is not None:  # learned types only: patterns own the shaped ones
            owned = set(PRIORITY) | set(self.patterns)
            found += [e for e in self.tagger.extract(text) if e.type not in owned]
        rank = {t: i for i, t in enumerate(PRIORITY)}
        found.sort(key=lambda e: (rank.get(e.type, len(rank)), e.source == "model",
                                  -(e.end - e.start), e.start))  # fmt: skip
        return _settle(found)[:MAX_ENTITIES]

    def _patterns(self, text: str) -> list[Entity]:
        out = []
        for kind, patterns in self.compiled.items():
            for pattern in patterns:
                for m in pattern.finditer(text):
                    group = "value" if "value" in pattern.groupindex else 0
                    start, end = m.span(group)
                    if end > start:
                        out.append(Entity(kind, text[start:end], start, end, text[start:end]))
        return out

    def _phones(self, text: str) -> list[Entity]:
        if sum(c.isdigit() for c in text) < 7:  # cheap: no phone number has fewer digits
            return []
        import phonenumbers

        out = []
        # POSSIBLE: the right length for its country; VALID would also need an assigned
        # range, and drops fictional numbers (555-..., +44 7700 900...) customers type too
        leniency = phonenumbers.Leniency.POSSIBLE
        for m in phonenumbers.PhoneNumberMatcher(text, self.region, leniency):
            e164 = phonenumbers.format_number(m.number, phonenumbers.PhoneNumberFormat.E164)
            out.append(Entity("phone", m.raw_string, m.start, m.end, e164))
        return out

    def _amounts(self, text: str) -> list[Entity]:
        out = []
        for m in AMOUNT.finditer(text):
            number = m.group("n1") or m.group("n2") or m.group("n3")
            code = m.group("code1") or m.group("code2") or m.group("code3")
            symbol = m.group("sym")
            currency = _CODES[code.lower()] if code else _SYMBOLS.get(symbol or "", self.currency)
            if symbol == "$" and not code:
                currency = self.currency
            value = f"{float(number.replace(',', '')):.2f} {currency}"
            out.append(Entity("amount", m.group(0), m.start(), m.end(), value))
        return out

    def _gazetteer(self, text: str) -> list[Entity]:
        out = []
        for kind, pattern in self._names.items():
            canonical = {n.lower(): n for n in self.gazetteer[kind]}
            for m in pattern.finditer(text):
                value = canonical.get(m.group(0).lower(), m.group(0))
                out.append(Entity(kind, m.group(0), m.start(), m.end(), value, "gazetteer"))
        return out


def _settle(found: list[Entity]) -> list[Entity]:
    """The entities of ``found`` (best first) that overlap no better one, in reading
    order; the kept spans stay sorted, so each check is a binary search."""
    starts: list[int] = []
    kept: list[Entity] = []
    for e in found:
        i = bisect.bisect_right(starts, e.start)
        if (i > 0 and kept[i - 1].end > e.start) or (i < len(kept) and kept[i].start < e.end):
            continue
        starts.insert(i, e.start)
        kept.insert(i, e)
    return kept


def _emails(text: str) -> list[Entity]:
    return [
        Entity("email", m.group(0), m.start(), m.end(), m.group(0).lower())
        for m in EMAIL.finditer(text)
    ]


def _dates(text: str, today: dt.date | None) -> list[Entity]:
    """Date-shaped spans, each read by dateparser (a span it cannot read is dropped)."""
    spans = list(itertools.islice(DATE.finditer(text), MAX_DATE_SPANS))
    if not spans:
        return []
    import dateparser

    day = today or dt.date.today()
    settings = {"RELATIVE_BASE": dt.datetime.combine(day, dt.time(12)),
                "PREFER_DAY_OF_MONTH": "first"}  # fmt: skip
    out = []
    for m in spans:
        if m.group(0).isdigit():  # a year alone ("in 2024") is a year, not a day of it
            out.append(Entity("date", m.group(0), m.start(), m.end(), m.group(0), "pattern"))
            continue
        phrase = _readable(m.group(0), day)
        parsed = dateparser.parse(phrase, languages=["en"], settings=settings)  # type: ignore[arg-type]
        if parsed is not None:
            value = parsed.date().isoformat()
            out.append(Entity("date", m.group(0), m.start(), m.end(), value, "parser"))
    return out


def _readable(phrase: str, today: dt.date) -> str:
    """The phrase in words dateparser reads: "this morning" is today, "friday evening" is
    friday, "the end of May" is May 31, "this weekend" is the coming Saturday."""
    p = phrase.lower()
    if p.startswith("this ") and p.split()[1] in ("morning", "afternoon", "evening"):
        return "today"
    if p == "last night":
        return "yesterday"
    if m := re.fullmatch(r"(next|last|this)\s+(weekend|spring|summer|fall|autumn|winter)", p):
        return _season(m.group(1), m.group(2), today).isoformat()
    if m := re.fullmatch(r"(today|tomorrow|yesterday)\s+\w+", p):
        return m.group(1)
    if m := re.match(r"(?:the\s+)?(start|beginning|middle|end)\s+of\s+(\w+)", p):
        day = {"start": "1", "beginning": "1", "middle": "15"}.get(m.group(1))
        return f"{m.group(2)} {day}" if day else f"{m.group(2)} 28"  # never past the month
    p = re.sub(r"\s+(morning|afternoon|evening|night)$", "", p)
    p = re.sub(r"^(days?|weeks?|months?|years?) ago", r"1 \1 ago", p)  # "weeks ago": 1 at least
    return re.sub(r"\bmin\b", "minutes", p)


#: The day each season starts (northern hemisphere; month, day).
_SEASONS = {"spring": (3, 20), "summer": (6, 21), "fall": (9, 22), "autumn": (9, 22),
            "winter": (12, 21)}  # fmt: skip


def _season(which: str, name: str, today: dt.date) -> dt.date:
    """The Saturday of "next/last/this weekend", or the first day of that season."""
    if name == "weekend":
        saturday = today + dt.timedelta(days=(5 - today.weekday()) % 7)
        return saturday + dt.timedelta(days={"next": 7, "last": -7}.get(which, 0))
    month, day = _SEASONS[name]
    start = dt.date(today.year, month, day)
    if which == "next" and start <= today:
        start = start.replace(year=today.year + 1)
    if which == "last" and start >= today:
        start = start.replace(year=today.year - 1)
    return start


def _compile(kind: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(
            f"nlu.patterns.{kind}: {pattern!r} is not a regular expression: {e}"
        ) from None
