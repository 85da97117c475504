"""The conversation store on SQLite and on PostgreSQL (``db_url`` runs each test on both).

What must hold: a question and its reply are stored together or not at all; message numbers
stay 0..n-1 under concurrent writers; processes starting at once on a fresh database all
migrate it; deleting a conversation leaves nothing of it; feedback exports say whose data
each example is, and can be limited to one owner.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, event, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chattune.serve.schema import MIGRATIONS, FeedbackRow, MessageRow, migrate, now, owner_of
from chattune.serve.store import Store

ALICE, BOB = owner_of("sk-alice"), owner_of("sk-bob")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    store = Store(db_url)
    yield store
    store.close()


def stored_seqs(store: Store, conversation_id: str) -> list[tuple[int, str, str]]:
    """(seq, role, content) of every stored message of the conversation, in seq order."""
    with Session(store.engine) as s:
        rows = s.execute(
            select(MessageRow.seq, MessageRow.role, MessageRow.content)
            .where(MessageRow.conversation_id == conversation_id)
            .order_by(MessageRow.seq)
        ).all()
    return [tuple(r) for r in rows]


def test_append_exchange_stores_question_then_reply(store: Store) -> None:
    conv = store.create_conversation(ALICE)["id"]
    first = store.append_exchange(ALICE, conv, "Is shipping free?", "Over $60.", {"x": 1})
    second = store.append_exchange(ALICE, conv, "And returns?", "45 days.")
    assert stored_seqs(store, conv) == [
        (0, "user", "Is shipping free?"),
        (1, "assistant", "Over $60."),
        (2, "user", "And returns?"),
        (3, "assistant", "45 days."),
    ]
    found = store.get_conversation(ALICE, conv)
    assert found["title"] == "Is shipping free?"
    assert [m["id"] for m in found["messages"]][1::2] == [first, second]
    assert found["messages"][1]["x"] == 1 and "x" not in found["messages"][0]
    assert store.append_exchange(BOB, conv, "mine now?", "no") is None
    assert store.append_exchange(ALICE, "conv-missing", "hi", "hello") is None
    assert len(stored_seqs(store, conv)) == 4


def test_failed_reply_write_leaves_no_question_behind(store: Store) -> None:
    conv = store.create_conversation(ALICE)["id"]

    def fail_on_reply(_mapper, _connection, message: MessageRow) -> None:
        if message.role == "assistant":  # the question's INSERT has already run by now
            raise RuntimeError("disk full")

    event.listen(MessageRow, "after_insert", fail_on_reply)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            store.append_exchange(ALICE, conv, "Is shipping free?", "Over $60.")
    finally:
        event.remove(MessageRow, "after_insert", fail_on_reply)
    assert stored_seqs(store, conv) == []
    assert store.get_conversation(ALICE, conv)["title"] == "New chat"
    store.append_exchange(ALICE, conv, "Is shipping free?", "Over $60.")  # still usable
    assert [seq for seq, _, _ in stored_seqs(store, conv)] == [0, 1]


def test_the_database_refuses_two_messages_with_one_seq(store: Store) -> None:
    conv = store.create_conversation(ALICE)["id"]
    store.append(ALICE, conv, "user", "hi")
    duplicate = MessageRow(
        id="msg-duplicate", conversation_id=conv, seq=0, role="user", content="hi again",
        created_at=now(), meta="{}",
    )  # fmt: skip
    with pytest.raises(IntegrityError), Session(store.engine) as s, s.begin():
        s.add(duplicate)


def test_concurrent_appends_to_one_conversation_get_seqs_0_to_n(store: Store) -> None:
    conv = store.create_conversation(ALICE)["id"]
    threads, rounds = 6, 5
    start = threading.Barrier(threads)
    written: list[str | None] = []
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            start.wait()
            for i in range(rounds):
                if i % 2:
                    written.append(store.append_exchange(ALICE, conv, f"q{t}.{i}", f"a{t}.{i}"))
                else:
                    written.append(store.append(ALICE, conv, "user", f"u{t}.{i}"))
        except BaseException as e:  # surfaced below: a thread's exception is otherwise lost
            errors.append(e)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    stored = stored_seqs(store, conv)
    exchanges = threads * (rounds // 2)
    assert [seq for seq, _, _ in stored] == list(range(threads * rounds + exchanges))
    assert None not in written and len(set(written)) == threads * rounds
    for seq, role, content in stored:  # each reply right after its own question
        if role == "assistant":
            assert stored[seq - 1][1:] == ("user", "q" + content[1:])


def open_store(url: str, start: multiprocessing.synchronize.Barrier) -> None:
    """One process starting on the database: wait for the others, then open (migrate) it."""
    start.wait(timeout=120)
    Store(url).close()


def test_processes_starting_at_once_all_migrate_a_fresh_database(db_url: str) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(4)
    processes = [spawn.Process(target=open_store, args=(db_url, start)) for _ in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=180)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]  # a failure's traceback is above
    engine = create_engine(db_url)
    with engine.connect() as con:
        current = set(MigrationContext.configure(con).get_current_heads())
    engine.dispose()
    assert current == set(ScriptDirectory(str(MIGRATIONS)).get_heads())


def test_upgrade_renumbers_seqs_that_older_servers_duplicated(db_url: str) -> None:
    migrate(db_url, "0001")
    engine = create_engine(db_url)
    with engine.begin() as con:
        con.execute(
            text(
                "INSERT INTO conversations (id, owner, title, created_at, updated_at)"
                " VALUES ('conv-1', 'o', 't', :t, :t)"
            ),
            {"t": now()},
        )
        for i, seq in enumerate([0, 1, 1, 3]):  # two concurrent appends both counted 1
            con.execute(
                text(
                    "INSERT INTO messages (id, conversation_id, seq, role, content, created_at)"
                    " VALUES (:id, 'conv-1', :seq, 'user', 'hi', :t)"
                ),
                {"id": f"msg-{i}", "seq": seq, "t": now()},
            )
    migrate(db_url)
    with engine.connect() as con:
        rows = con.execute(text("SELECT seq, id FROM messages ORDER BY seq")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [(0, "msg-0"), (1, "msg-1"), (2, "msg-2"), (3, "msg-3")]


def feedback_on_one_exchange(store: Store, owner: str, question: str) -> tuple[str, str]:
    """A conversation of ``owner`` with one exchange whose reply got a thumbs up."""
    conv = store.create_conversation(owner)["id"]
    reply = store.append_exchange(owner, conv, question, f"answer to {question}")
    assert store.add_feedback(owner, conv, reply, "up", None)
    return conv, reply


def test_delete_conversation_removes_it_with_messages_and_feedback(store: Store) -> None:
    conv, _ = feedback_on_one_exchange(store, ALICE, "delete me")
    kept, kept_reply = feedback_on_one_exchange(store, ALICE, "keep me")
    assert store.delete_conversation(BOB, conv) is False  # not Bob's
    assert store.get_conversation(ALICE, conv) is not None
    assert store.delete_conversation(ALICE, conv) is True
    assert store.get_conversation(ALICE, conv) is None
    assert [c["id"] for c in store.list_conversations(ALICE)] == [kept]
    assert stored_seqs(store, conv) == []
    with Session(store.engine) as s:
        assert s.scalars(select(FeedbackRow.message_id)).all() == [kept_reply]
    assert [e["messages"][0]["content"] for e in store.feedback_conversations()] == ["keep me"]
    assert store.delete_conversation(ALICE, conv) is False  # already gone
    assert store.append_exchange(ALICE, conv, "hi", "hello") is None


def test_feedback_export_names_and_filters_owners(store: Store, tmp_path) -> None:
    from chattune.cli import main
    from chattune.data.readers import read_conversations

    feedback_on_one_exchange(store, ALICE, "alice asks")
    feedback_on_one_exchange(store, BOB, "bob asks")
    assert [(e["owner"], e["messages"][0]["content"]) for e in store.feedback_conversations()] == [
        (ALICE, "alice asks"),
        (BOB, "bob asks"),
    ]
    assert [e["owner"] for e in store.feedback_conversations(owner=BOB)] == [BOB]
    assert list(store.feedback_conversations(owner=owner_of("sk-nobody"))) == []
    out = tmp_path / "bob.jsonl"
    assert main(["data", "export-feedback", "--db", store.url, "--out", str(out),
                 "--owner", BOB]) == 0  # fmt: skip
    (line,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert isinstance(line.pop("conversation"), str)  # its id: a learning round's group
    assert line == {
        "messages": [
            {"role": "user", "content": "bob asks"},
            {"role": "assistant", "content": "answer to bob asks"},
        ],
        "owner": BOB,
    }
    assert len(read_conversations(out)) == 1  # still valid training data


def test_a_live_server_writes_through_the_database(db_url: str, tokenizer) -> None:
    """The real client against uvicorn on 127.0.0.1, storing in SQLite or PostgreSQL."""
    import httpx
    from openai import OpenAI

    from chattune.chat.engine import ChatEngine
    from chattune.serve.app import build_app
    from tests.conftest import FakeBackend, live_server

    store = Store(db_url)
    app = build_app(ChatEngine(FakeBackend(tokenizer, ["Over ", "$60."])), store, "tiny", ["k"])
    with live_server(app) as url:
        headers = {"Authorization": "Bearer k"}
        conv = httpx.post(f"{url}/v1/conversations", json={}, headers=headers).json()["id"]
        client = OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
        reply = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Is shipping free?"}],
            extra_body={"conversation_id": conv},
        )
        assert reply.choices[0].message.content == "Over $60."
        read_back = httpx.get(f"{url}/v1/conversations/{conv}", headers=headers).json()
    store.close()
    assert [(m["role"], m["content"]) for m in read_back["messages"]] == [
        ("user", "Is shipping free?"),
        ("assistant", "Over $60."),
    ]
    assert read_back["messages"][1]["id"] == reply.model_extra["message_id"]
    reopened = Store(db_url)  # from the database itself, not the server's memory
    assert stored_seqs(reopened, conv) == [
        (0, "user", "Is shipping free?"),
        (1, "assistant", "Over $60."),
    ]
    reopened.close()
