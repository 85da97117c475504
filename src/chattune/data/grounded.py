"""Grounded fine-tuning: every assistant turn trained on the prompt serving builds for it.

With a knowledge base attached, the chat engine puts a quoted context block of retrieved
passages into the system message before the model answers. A model fine-tuned on plain
conversations has never seen that block, so it invents instead of reading it. Here each
assistant turn of each conversation becomes its own example: the engine's grounding step is
run on the conversation so far, the prompt is rendered exactly as serving renders it (same
block, same quoting, same numbering, same few-shot examples) and the loss is on the reply
only. One conversation with three replies is three examples, as serving sees three prompts.

What each turn is trained on (``Retrieved.kind`` is the engine's decision):

- ``passages``: the engine's passages. If the reply names its source (``source`` /
  ``faq_id``, :class:`~chattune.data.types.Message`), the *gold* passage is the retrieved one
  that matches; when retrieval missed it, it is inserted at a seeded random position among
  the others (``data.kb_distractors`` of them are kept), so the model learns to find the
  answer wherever it sits. With ``data.kb_cite`` the reply gets the gold passage's ``[n]``.
  Retrieval usually ranks the gold passage first, so a model trained on its order learns to
  cite ``[1]`` whatever it says; ``data.kb_shuffle`` puts the kept passages in a seeded random
  order instead (RAFT's mixing of the oracle document among distractors).
- ``faq``: serving answers with the stored FAQ answer and never calls the model
  (``faq_answers: verbatim``), so there is no prompt to copy; the turn is trained on the
  prompt a paraphrase just below the FAQ threshold gets (FAQ entries as ordinary passages),
  which holds that entry. With ``faq_answers: rephrase`` the engine's own prompt (the entry
  as the only passage) is used. Skipping them would drop the most factual turns of a
  support data set.
- ``no_answer``: serving replies "I don't know" without the model. A reply with a known
  source is trained with its gold passage (retrieval's threshold missed it, not the data);
  any other (greetings, thanks) on the prompt without a context block, which is what an
  ``llm`` route gives the model, so small talk is not lost.

``data.kb_no_gold_share`` of the turns whose gold is known and that have other passages are
trained with every gold passage removed and the profile's ``no_answer`` as the target: the
"say that you don't know" half of the instruction. Everything is deterministic given
``train.seed``. Earlier turns in a prompt are the data's own replies.

``data.kb_counterfactual`` of the turns whose reply repeats numbers from its gold passage
are trained with those numbers changed in both (:func:`counterfactual`): a fact that a model
could have memorised from the rest of the data is then only in the passage.

The knowledge base itself sits above this package: a :class:`Grounder` built by
``chattune train --kb`` (cli/train.py) does the retrieval and renders the head.
"""

from __future__ import annotations

import difflib
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from chattune.data.batching import EncodeReport
from chattune.data.dataset import encode_each
from chattune.data.render import (
    Encoded,
    MaskPolicy,
    encode_messages,
    keep_newest,
    neutralise_messages,
)
from chattune.data.types import Conversation, Message
from chattune.errors import DataError

log = logging.getLogger(__name__)

Kind = Literal["passages", "faq", "no_answer"]


@dataclass(frozen=True)
class Passage:
    """A retrieved passage as training sees it: where it comes from, its id in the knowledge
    base, and the retriever's own object (``hit``), which only the grounder reads."""

    source: str
    faq_id: str | None
    id: int
    hit: Any = field(compare=False, repr=False)


@dataclass(frozen=True)
class Retrieved:
    """The grounding step's result for one turn: the engine's decision and the passages the
    model would read (for ``faq`` turns, see the module doc)."""

    kind: Kind
    passages: tuple[Passage, ...] = ()


class Grounder(Protocol):
    """What training needs from a knowledge base and a bot profile."""

    #: the folder, for messages
    kb: str
    #: passages the profile puts in a prompt (``knowledge.k``)
    k: int
    #: the profile's "don't know" reply (``knowledge.no_answer``)
    no_answer: str

    def names(self) -> tuple[list[str], set[str]]:
        """(document names, FAQ ids) of the knowledge base."""
        ...

    def ground(self, histories: list[list[Message]]) -> list[Retrieved]:
        """The grounding of each history (the conversation so far, ending with a user
        turn), as the chat engine would do it; batched so embeddings are computed once."""
        ...

    def gold(self, history: list[Message], reply: Message) -> Passage | None:
        """The knowledge base's passage holding ``reply``'s answer that best matches the
        conversation, for when retrieval did not return one."""
        ...

    def head(self, system: str | None, passages: Sequence[Passage]) -> list[Message]:
        """The turns before the conversation, as the engine builds them: the system turn
        (``system`` or the profile's, with the context block of ``passages`` if any) and the
        profile's few-shot examples."""
        ...

    def cite(self, reply: str, n: int) -> str:
        """``reply`` citing passage ``n`` as the engine's FAQ answers do (``... [n]``);
        unchanged if it already cites a passage."""
        ...

    def text(self, passage: Passage) -> str:
        """The passage's own words as the context block quotes them (not its headings)."""
        ...

    def rewrite(self, passage: Passage, swap: Callable[[str], str]) -> Passage:
        """``passage`` with ``swap`` applied to its words (:meth:`text`), for the prompt only:
        the knowledge base is not touched."""
        ...


@dataclass(frozen=True)
class GroundedOptions:
    """``data.kb_*``: see :class:`chattune.config.DataConfig`."""

    distractors: int | None = None  # None: as many as knowledge.k leaves beside the gold one
    no_gold_share: float = 0.0
    cite: bool = True
    shuffle: bool = False  # passages in a seeded random order, not retrieval's
    counterfactual: float = 0.0  # share of turns trained with the gold numbers changed
    seed: int = 0
    last_only: bool = False  # data.mask=last: only each conversation's final reply


@dataclass(frozen=True)
class Turn:
    """One assistant turn to train: ``history`` is the conversation before it (no system
    turn: that is ``system``), ending with the user's message."""

    where: str
    system: str | None
    history: list[Message]
    reply: Message


@dataclass(frozen=True)
class Example:
    """What a turn is trained on: its passages (None: no context block) and target."""

    passages: list[Passage] | None
    target: str
    gold_at: int | None = None  # the number ([n]) of the gold passage in the block
    inserted: bool = False  # the gold passage was not retrieved and was put in
    no_gold: bool = False
    counterfactual: bool = False  # its gold numbers were changed (data.kb_counterfactual)


def source_matches(name: str, given: str) -> bool:
    """Whether a document named ``name`` is the ``given`` source: the same name, or ``given``
    is its trailing path components (as ``kb eval`` matches them).

    Example:
        >>> source_matches("examples/support/kb/returns.md", "returns.md")
        True
        >>> source_matches("examples/support/kb/returns.md", "turns.md")
        False
    """
    return name == given or name.endswith("/" + given.lstrip("/"))


def is_gold(passage: Passage, reply: Message) -> bool:
    """Whether ``passage`` is one ``reply`` names as the place its answer comes from."""
    if passage.faq_id is not None and passage.faq_id in reply.faq_ids:
        return True
    return any(source_matches(passage.source, s) for s in reply.sources)


def check_gold_names(
    conversations: list[Conversation], sources: list[str], faq_ids: set[str], kb: str
) -> list[str]:
    """One ``FILE:LINE: turn N:`` problem per ``source``/``faq_id`` the knowledge base lacks.

    Example:
        >>> conv = Conversation([Message("user", "?"), Message("assistant", "45 days.",
        ...     faq_ids=("return-window",))], "train.jsonl:3")
        >>> problem = check_gold_names([conv], ["kb/faq.csv"], {"returns-window"}, "runs/kb")[0]
        >>> problem.split(" (")[0]
        "train.jsonl:3: turn 2: faq_id 'return-window' is not in the knowledge base runs/kb"
    """
    problems = []
    for conv in conversations:
        for i, m in enumerate(conv.messages, start=1):
            where = f"{conv.source}: turn {i}"
            for faq_id in m.faq_ids:
                if faq_id not in faq_ids:
                    problems.append(
                        f"{where}: faq_id {faq_id!r} is not in the knowledge base {kb}"
                        f"{_did_you_mean(faq_id, sorted(faq_ids))}; fix the id, or add the "
                        f"entry to an FAQ file and `chattune kb add` it --kb {kb}"
                    )
            for source in m.sources:
                if not any(source_matches(name, source) for name in sources):
                    tails = sorted({name.rsplit("/", 1)[-1] for name in sources})
                    problems.append(
                        f"{where}: source {source!r} is no document of the knowledge base "
                        f"{kb}{_did_you_mean(source, tails)}; give a name `chattune kb list "
                        f"--kb {kb}` shows (or its last path components)"
                    )
    return problems


def require_known_gold(conversations: list[Conversation], grounder: Grounder) -> None:
    """:class:`DataError` with every :func:`check_gold_names` problem, if there is one."""
    problems = check_gold_names(conversations, *grounder.names(), grounder.kb)
    if problems:
        raise DataError(problems)


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def grounded_turns(conversations: list[Conversation], last_only: bool = False) -> list[Turn]:
    """Every assistant turn of every conversation with the conversation before it.

    Example:
        >>> conv = Conversation([Message("system", "Be brief."), Message("user", "Hi"),
        ...     Message("assistant", "Hello!")], "chats.jsonl:1")
        >>> t = grounded_turns([conv])[0]
        >>> t.where, t.system, [m.content for m in t.history], t.reply.content
        ('chats.jsonl:1: turn 3', 'Be brief.', ['Hi'], 'Hello!')
    """
    turns = []
    for conv in conversations:
        messages = conv.messages
        system = messages[0].content if messages and messages[0].role == "system" else None
        offset = 1 if system is not None else 0
        answers = [i for i, m in enumerate(messages) if m.role == "assistant"]
        for i in answers[-1:] if last_only else answers:
            history = messages[offset:i]
            turns.append(Turn(f"{conv.source}: turn {i + 1}", system, history, messages[i]))
    return turns


def distractor_cap(options: GroundedOptions, k: int) -> int:
    """How many non-gold passages a prompt keeps: ``data.kb_distractors``, or ``k - 1``."""
    return options.distractors if options.distractors is not None else max(0, k - 1)


def pick_no_gold(
    turns: list[Turn], retrieved: list[Retrieved], cap: int, options: GroundedOptions
) -> set[int]:
    """Indices of the turns trained without their gold passage: a seeded
    ``no_gold_share`` of the turns whose gold is known and that keep another passage."""
    eligible = [
        i
        for i, (t, r) in enumerate(zip(turns, retrieved, strict=True))
        if t.reply.grounded and cap > 0 and any(not is_gold(p, t.reply) for p in r.passages)
    ]
    n = round(options.no_gold_share * len(eligible))
    if options.no_gold_share and not eligible:
        log.warning("data.kb_no_gold_share: no turn has both a known source and another "
                    "passage to keep, so none is trained to say it doesn't know")  # fmt: skip
    return set(random.Random(options.seed).sample(eligible, n))


def choose(
    turn: Turn,
    found: Retrieved,
    grounder: Grounder,
    options: GroundedOptions,
    no_gold: bool = False,
) -> Example:
    """The passages and target one turn is trained on (see the module doc)."""
    reply = turn.reply
    passages = list(found.passages)
    if not reply.grounded:  # the engine's prompt as it is; no passage: no block
        return Example(passages or None, reply.content)
    cap = distractor_cap(options, grounder.k)
    golds = [p for p in passages if is_gold(p, reply)]
    others = [p for p in passages if not is_gold(p, reply)][:cap]
    if no_gold:
        return Example(others, grounder.no_answer, no_gold=True)
    inserted = not golds
    if inserted:
        gold = grounder.gold(turn.history, reply)
        if gold is None:  # cannot happen after check_gold_names; trained as retrieved
            return Example(passages or None, reply.content)
        rng = random.Random(_turn_seed(options.seed, turn))
        kept = list(others)
        kept.insert(rng.randint(0, len(kept)), gold)
    else:  # retrieval's order, less the distractors past the cap
        keep = {p.id for p in golds + others}
        kept = [p for p in passages if p.id in keep]
    if options.shuffle:  # the gold passage anywhere, not mostly at [1]
        random.Random(_turn_seed(options.seed, turn) + "\x1fshuffle").shuffle(kept)
    gold_at = _cited(kept, reply)
    content, changed = reply.content, False
    if options.counterfactual > 0 and gold_at is not None:
        kept, content, changed = counterfactual(turn, kept, gold_at, grounder, options)
    target = grounder.cite(content, gold_at) if options.cite else content
    return Example(kept, target, gold_at, inserted, counterfactual=changed)


#: A number as facts are written: 45, 6.95, 10,000 ($, %, units around it), ASCII digits
#: only. Not part of a word or code (Ridgeline2, mp3, 1st), a citation ([1]), a range or
#: date or time (3-5, 2024-05-01, 24/7, 9:30) or a phone number: changing one part of
#: those would make nonsense of the whole.
_NUMBER = re.compile(r"(?<![\w.,/:\[【［])(?<!\d-)\d+(?:[.,]\d+)*(?![\w\]】］]|[/:-]\d)", re.ASCII)


def _numbers(*texts: str) -> set[str]:
    return {m.group() for t in texts for m in _NUMBER.finditer(t)}


def counterfactual(
    turn: Turn, kept: list[Passage], gold_at: int, grounder: Grounder, options: GroundedOptions
) -> tuple[list[Passage], str, bool]:
    """For ``data.kb_counterfactual`` of the turns: every number that the reply takes from
    its gold passage, and that the conversation so far does not mention, replaced by another
    of the same shape in the reply and in every passage shown (45 -> 72, $6.95 -> $8.31).

    Why: the support data's facts repeat across its conversations, so a model can lower its
    loss by recalling "45 days" as well as by reading it, and the first run of grounded
    training did recall: misses were memorised training replies next to the right passage
    (docs/evaluation.md). With the number changed only the passage holds the answer. This is
    the substitution training of Longpre et al. 2021 ("Entity-Based Knowledge Conflicts in
    Question Answering"), which cut such memorisation; it is done here by hand because it
    needs the engine's own prompt, which no data library builds.

    A number left anywhere in the prompt after the swap (a heading, the system prompt) is
    not changed at all, so the prompt never holds the old value beside the new; a new value
    is never one the prompt or the reply already holds, and no two numbers get the same one.
    Returns (passages, reply text, whether anything changed).
    """
    rng = random.Random(_turn_seed(options.seed, turn) + "\x1fcounterfactual")
    reply = turn.reply.content
    shared = _numbers(reply) & _numbers(grounder.text(kept[gold_at - 1]))
    shared -= _numbers(*(h.content for h in turn.history))
    if not shared or rng.random() >= options.counterfactual:
        return kept, reply, False
    head = "\n".join(m.content for m in grounder.head(turn.system, kept))
    taken = _numbers(head, reply, *(h.content for h in turn.history))
    mapping: dict[str, str] = {}
    for n in sorted(shared):
        new = _another_number(n, rng, taken)
        if new != n:
            mapping[n] = new
            taken.add(new)

    def swap(text: str) -> str:
        return _NUMBER.sub(lambda m: mapping.get(m.group(), m.group()), text)

    rewritten = [grounder.rewrite(p, swap) for p in kept]
    left = _numbers(*(m.content for m in grounder.head(turn.system, rewritten))) & set(mapping)
    for n in left:  # outside what rewrite reaches: keep it as it is everywhere
        del mapping[n]
    if not mapping:
        return kept, reply, False
    if left:
        rewritten = [grounder.rewrite(p, swap) for p in kept]
    return rewritten, swap(reply), True


def _another_number(number: str, rng: random.Random, taken: Collection[str] = ()) -> str:
    """A different number written the same way: as many digits in each group, the same
    separators, no new leading zero (``6.95`` -> ``8.31``, ``10,000`` -> ``37,000``: groups
    after a thousands comma keep their zeros, so the result still reads as a round figure),
    none of ``taken``; ``number`` itself when there is no such number."""
    for _ in range(100):
        out = []
        for i, part in enumerate(re.split(r"([.,])", number)):
            if part in {".", ","} or (i > 0 and set(part) == {"0"}):
                out.append(part)
            else:
                first = "0" if part[0] == "0" else rng.choice("123456789")
                out.append(first + "".join(rng.choice("0123456789") for _ in part[1:]))
        if "".join(out) != number and "".join(out) not in taken:
            return "".join(out)
    return number  # a lone 0, or every other one-digit number taken


def _turn_seed(seed: int, turn: Turn) -> str:
    """A seed for one turn's draw from its words: the same wherever the file lives and
    whatever the order or split of the data (``random`` hashes a string with SHA-512, not
    with the per-process ``hash``)."""
    return "\x1f".join([str(seed), *(m.content for m in turn.history), turn.reply.content])


def _cited(passages: list[Passage], reply: Message) -> int:
    """The number of the gold passage to cite: an FAQ entry the reply names, else the
    first (best-ranked) passage of a source it names."""
    numbered = list(enumerate(passages, 1))
    for n, p in numbered:
        if p.faq_id is not None and p.faq_id in reply.faq_ids:
            return n
    return next(n for n, p in numbered if is_gold(p, reply))


def encode_turn(
    tokenizer: Any,
    head: list[Message],
    history: list[Message],
    target: str,
    max_len: int,
    where: str,
) -> Encoded | None:
    """``head`` + ``history`` + the reply ``target``, labelled on the reply only.

    Content is neutralised and the oldest exchanges dropped to fit ``max_len`` exactly as
    the engine does for its context window (``head`` always stays), so the unlabelled part
    is token for token :meth:`ChatEngine.build_prompt`'s prompt when nothing is cut.
    None when not even the last exchange fits.
    """
    head = neutralise_messages(tokenizer, head)
    turns = neutralise_messages(tokenizer, [*history, Message("assistant", target)])

    def build(kept: list[Message]) -> tuple[float, Encoded]:
        enc = encode_messages(tokenizer, kept, MaskPolicy.LAST, where)
        return (len(enc.input_ids) if enc.n_trained > 0 else float("inf")), enc

    found = keep_newest(tokenizer, head, turns, max_len, build)
    if found is None:
        return None
    found[1].dropped_turns = found[0]
    return found[1]


def grounded_examples(
    conversations: list[Conversation], grounder: Grounder, options: GroundedOptions
) -> list[tuple[Turn, Example]]:
    """Every turn to train with what it is trained on: retrieval once per turn, batched."""
    turns = grounded_turns(conversations, options.last_only)
    retrieved = grounder.ground([t.history for t in turns]) if turns else []
    cap = distractor_cap(options, grounder.k)
    no_gold = pick_no_gold(turns, retrieved, cap, options)
    examples = [
        choose(t, r, grounder, options, i in no_gold)
        for i, (t, r) in enumerate(zip(turns, retrieved, strict=True))
    ]
    _log_counts(retrieved, examples)
    return list(zip(turns, examples, strict=True))


def encode_grounded(
    conversations: list[Conversation],
    tokenizer: Any,
    max_len: int,
    grounder: Grounder,
    options: GroundedOptions,
) -> tuple[list[Encoded], EncodeReport]:
    """Encode each assistant turn on its grounded prompt; the report counts turns (each is
    an example), not conversations."""

    def encoder(turn: Turn, ex: Example) -> Callable[[], Encoded | None]:
        head = grounder.head(turn.system, ex.passages or [])
        return lambda: encode_turn(tokenizer, head, turn.history, ex.target, max_len, turn.where)

    return encode_each([encoder(t, ex) for t, ex in grounded_examples(conversations, grounder,
                                                                       options)])  # fmt: skip


def _log_counts(retrieved: list[Retrieved], examples: list[Example]) -> None:
    kinds = Counter(r.kind for r in retrieved)
    gold = [e for e in examples if e.gold_at is not None]
    log.info(
        "grounded %d turns (engine: %d passages, %d FAQ, %d no answer); %d without a context "
        "block; gold passage retrieved %d, inserted %d; %d trained to say they don't know; "
        "%d with their gold numbers changed",
        len(examples),
        kinds["passages"],
        kinds["faq"],
        kinds["no_answer"],
        sum(e.passages is None for e in examples),
        sum(not e.inserted for e in gold),
        sum(e.inserted for e in gold),
        sum(e.no_gold for e in examples),
        sum(e.counterfactual for e in examples),
    )
