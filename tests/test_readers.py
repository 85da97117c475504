"""Format readers: each format becomes the same conversations; every bad line is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chattune.data.files import NotText, decode_text, read_text_file
from chattune.data.jsonl import append_jsonl, read_jsonl, write_jsonl
from chattune.data.qa import QA_COLUMNS
from chattune.data.readers import detect_format, read_conversations, read_documents, read_many
from chattune.data.types import Message
from chattune.errors import DataError
from chattune.knowledge.documents import read_file

EXPECTED = [Message("user", "Is shipping free?"), Message("assistant", "Over $60, yes.")]


def test_messages_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"messages": [m.as_dict() for m in EXPECTED]}) + "\n\n")
    (conv,) = read_conversations(p)
    assert conv.messages == EXPECTED
    assert conv.source == f"{p}:1"


def test_sharegpt_json_array_keeps_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    good = {
        "conversations": [
            {"from": "human", "value": "Is shipping free?"},
            {"from": "gpt", "value": "Over $60, yes."},
        ]
    }
    bad = {"conversations": [{"from": "bot", "value": "hi"}]}
    p.write_text("[\n" + json.dumps(good) + ",\n\n" + json.dumps(bad) + "\n]\n")
    with pytest.raises(DataError) as e:
        read_conversations(p)
    assert str(e.value) == (
        f"{p}:4: turn 1: unknown role 'bot' (expected one of: system, user, human, assistant, gpt)"
    )
    p.write_text(json.dumps([good]))
    assert read_conversations(p)[0].messages == EXPECTED


def test_sharegpt_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    row = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Is shipping free?"},
            {"from": "gpt", "value": "Over $60, yes."},
        ]
    }
    p.write_text(json.dumps(row) + "\n")
    assert read_conversations(p)[0].messages == [Message("system", "Be brief."), *EXPECTED]


def test_csv_and_tsv(tmp_path: Path) -> None:
    csv_path = tmp_path / "faq.csv"
    csv_path.write_text('Question,Answer\n"Is shipping free?","Over $60, yes."\n')
    tsv_path = tmp_path / "faq.tsv"
    tsv_path.write_text("prompt\tresponse\tsystem\nIs shipping free?\tOver $60, yes.\tBe brief.\n")
    assert read_conversations(csv_path)[0].messages == EXPECTED
    assert read_conversations(tsv_path)[0].messages == [Message("system", "Be brief."), *EXPECTED]


def test_csv_errors_name_the_row(tmp_path: Path) -> None:
    p = tmp_path / "faq.csv"
    p.write_text("question,answer\nhello,hi\n,no question here\n")
    with pytest.raises(DataError, match=r"faq.csv:3: turn 1: empty user content"):
        read_conversations(p)
    p.write_text("q_text,a_text\nhello,hi\n")
    with pytest.raises(
        DataError, match=r"faq.csv:1: a question/answer table needs .* found: 'q_text', 'a_text'"
    ):
        read_conversations(p)


def test_dailydialog_drops_unanswered_last_turn(tmp_path: Path) -> None:
    p = tmp_path / "dialogues.txt"
    p.write_text("Is shipping free? __eou__ Over $60, yes. __eou__ Thanks! __eou__\n")
    assert read_conversations(p)[0].messages == EXPECTED


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"messages": [m.as_dict() for m in EXPECTED]}),
        "{not json",
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            }
        ),
        json.dumps({"messages": [{"role": "user"}]}),
        json.dumps({"text": "no messages"}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
    ]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        read_conversations(p)
    assert e.value.problems == [
        f"{p}:2: not valid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{p}:3: turn 2: two user turns in a row",
        f"{p}:4: turn 1: missing content ('content')",
        f"{p}:5: expected an object with a 'messages' list",
        f"{p}:6: no assistant turn: nothing to train on",
    ]


def test_problem_list_is_capped(tmp_path: Path) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"messages": [m.as_dict() for m in EXPECTED]}) + "\n" + "{\n" * 30)
    with pytest.raises(DataError) as e:
        read_conversations(p)
    message = str(e.value)
    assert message.count("\n") == 20 and message.endswith("... and 10 more problems")


@pytest.mark.parametrize(
    ("content", "name", "expected"),
    [
        (b"", "empty.jsonl", "empty file"),
        (b"  \n\n", "blank.jsonl", "empty file"),
        (b'{"messages": []}\n\xff\xfe', "latin.jsonl", ":2: not valid UTF-8"),
        (b"a,b\n", "data.parquet", "unknown file type '.parquet'"),
        (b'{"foo": 1}\n', "odd.jsonl", ":1: cannot tell the format"),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes, name: str, expected: str) -> None:
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DataError, match=expected):
        read_conversations(p)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_conversations(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a folder"):
        read_conversations(tmp_path)


def test_raw_text_for_lm_objective(tmp_path: Path) -> None:
    txt = tmp_path / "manual.md"
    txt.write_text("# Tents\nPitch the Ridgeline in 5 minutes.\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert detect_format(txt, txt.read_text()) == "text"
    assert read_documents(txt)[0].text.startswith("# Tents")
    assert [d.text for d in read_documents(jsonl)] == ["one", "two"]
    with pytest.raises(DataError, match="train on it with --objective lm"):
        read_conversations(txt)


def test_read_many_collects_problems_across_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("{\n")
    b.write_text("{\n")
    with pytest.raises(DataError) as e:
        read_many([str(a), str(b)])
    assert [p.split(":")[0] for p in e.value.problems] == [str(a), str(b)]


def test_example_dataset_is_valid() -> None:
    root = Path(__file__).parent.parent / "examples" / "support"
    train = read_conversations(root / "train.jsonl")
    val = read_conversations(root / "val.jsonl")
    assert len(train) >= 100 and len(val) >= 10
    assert sum(c.assistant_turns > 1 for c in train) > len(train) // 2  # mostly multi-turn


# -- the shared reader layer: one decoder, one JSONL reader/writer, one Q/A column table ----


@pytest.mark.parametrize(
    ("question", "answer"),
    [(q, a) for q, a in zip(QA_COLUMNS["user"], QA_COLUMNS["assistant"], strict=True)],
)
def test_one_alias_table_for_training_csv_and_faq(tmp_path: Path, question, answer) -> None:
    p = tmp_path / "faq.csv"
    p.write_text(f'id,{question.title()},{answer}\nship,"Is shipping free?","Over $60, yes."\n')
    assert read_conversations(p)[0].messages == EXPECTED
    (block,) = read_file(p)
    assert (block.faq_id, block.question, block.answer, block.line) == (
        "ship",
        "Is shipping free?",
        "Over $60, yes.",
        2,
    )


def test_faq_jsonl_with_prompt_response_keys(tmp_path: Path) -> None:
    p = tmp_path / "faq.jsonl"
    write_jsonl(p, [{"prompt": "Is shipping free?", "response": "Over $60, yes."}, {"prompt": "?"}])
    with pytest.raises(DataError) as e:
        read_file(p)
    assert e.value.problems == [f"{p}:2: empty or missing answer"]


def test_missing_columns_named_the_same_by_both_readers(tmp_path: Path) -> None:
    p = tmp_path / "faq.tsv"
    p.write_text("Query\tReply\nhi\thello\n")
    expected = (
        f"{p}:1: a question/answer table needs a question column (question / prompt / input) "
        "and an answer column (answer / response / output); optional: system, id; "
        "columns found: 'Query', 'Reply'"
    )
    for read in (read_conversations, read_file):
        with pytest.raises(DataError) as e:
            read(p)
        assert e.value.problems == [expected]


def test_byte_order_mark_is_dropped_everywhere(tmp_path: Path) -> None:
    p = tmp_path / "faq.csv"
    p.write_bytes(b'\xef\xbb\xbfquestion,answer\nIs shipping free?,"Over $60, yes."\n')
    assert read_text_file(p).startswith("question,")
    assert read_conversations(p)[0].messages == EXPECTED
    assert read_file(p)[0].question == "Is shipping free?"
    q = tmp_path / "q.jsonl"
    q.write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert read_jsonl(q) == [(1, {"a": 1})]


def test_nul_bytes_are_refused_with_their_line(tmp_path: Path) -> None:
    p = tmp_path / "chats.jsonl"
    p.write_bytes(b'{"messages": []}\n{"x": "\x00"}\n')
    with pytest.raises(DataError) as e:
        read_conversations(p)
    assert e.value.problems == [f"{p}:2: binary file (NUL byte at byte 24), not text"]
    # UTF-16 is all NULs to a UTF-8 reader: refused, not read as garbage.
    with pytest.raises(NotText, match=r"u16.txt:1: binary file"):
        decode_text("hello".encode("utf-16"), "u16.txt")


def test_invalid_utf8_reported_at_its_line_with_and_without_bom() -> None:
    latin = "question,answer\ncafé?,oui\n".encode("latin-1")
    for prefix, offset in ((b"", 0), (b"\xef\xbb\xbf", 3)):
        with pytest.raises(NotText) as e:
            decode_text(prefix + latin, "faq.csv")
        assert (e.value.line, e.value.problems) == (
            2,
            [f"faq.csv:2: not valid UTF-8 (byte {19 + offset}); re-save the file as UTF-8"],
        )


def test_knowledge_skips_what_training_refuses(tmp_path: Path) -> None:
    from chattune.knowledge.documents import Unreadable

    p = tmp_path / "notes.md"
    p.write_bytes(b"# Notes\n\nna\xefve\n")
    with pytest.raises(Unreadable, match=r"^line 3: not valid UTF-8 \(byte 11\)"):
        read_file(p)


def test_jsonl_round_trip_is_compact_utf8_one_record_per_line(tmp_path: Path) -> None:
    p = tmp_path / "out" / "feedback.jsonl"
    p.parent.mkdir()
    records = [
        {"messages": [{"role": "user", "content": "Grüße\u2028zwei Zeilen\x85"}]},
        {"n": 1, "xs": [1.5, None, True]},
        "just a string",
    ]
    assert write_jsonl(p, iter(records)) == 3
    raw = p.read_bytes()
    assert raw.count(b"\n") == 3 and "Grüße".encode() in raw and b", " not in raw
    # Every record stays on one line, even for readers that split on U+2028 too.
    assert len(raw.decode().splitlines()) == 3
    assert read_jsonl(p) == list(enumerate(records, start=1))
    append_jsonl(p, {"step": 4}, {"step": 5})
    assert [r for _, r in read_jsonl(p)][-2:] == [{"step": 4}, {"step": 5}]
    assert [x.name for x in p.parent.iterdir()] == ["feedback.jsonl"]  # no temp file left


def test_write_jsonl_keeps_the_old_file_when_a_record_fails(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    write_jsonl(p, [{"ok": 1}])
    with pytest.raises(TypeError):
        write_jsonl(p, [{"ok": 2}, {"bad": object()}])
    assert read_jsonl(p) == [(1, {"ok": 1})]
    assert [x.name for x in tmp_path.iterdir()] == ["a.jsonl"]


def test_read_jsonl_reports_every_bad_line(tmp_path: Path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"a": 1}\n\n{oops\n{"b": 2}\n[1,\n')
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    assert [x.split(": ")[0] for x in e.value.problems] == [f"{p}:3", f"{p}:5"]
    problems: list[str] = []
    assert read_jsonl(p, problems) == [(1, {"a": 1}), (4, {"b": 2})]
    assert len(problems) == 2
    assert read_jsonl(tmp_path / "none.jsonl", missing_ok=True) == []
    with pytest.raises(DataError, match=r"none\.jsonl: no such file"):
        read_jsonl(tmp_path / "none.jsonl")
