"""The registry, the learning round and its gate, the anchors, and ``chattune learn``.

Rounds run on the tiny random Llama: the numbers mean nothing, the mechanics are real
(a continued adapter, replay drawn from stored manifests, a gate on measured losses).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from chattune.config import dump_config
from chattune.data.readers import read_conversations
from chattune.data.types import Conversation, Message
from chattune.errors import ConfigError
from chattune.learn.registry import Registry
from chattune.learn.round import (
    LearnSettings,
    NotEnoughData,
    compile_retired,
    fingerprint,
    gate,
    gather,
    read_lineage,
    run_round,
)
from tests.conftest import run_cli, write_jsonl


def conv(question: str, answer: str) -> Conversation:
    return Conversation([Message("user", question), Message("assistant", answer)])


def fake_run(folder: Path, base: str = "smollm2-135m-instruct") -> Path:
    """A folder shaped like a `chattune train` output (no weights: registry tests only)."""
    folder.mkdir(parents=True)
    (folder / "chattune.json").write_text(json.dumps({"base": base, "method": "lora"}))
    (folder / "adapter_config.json").write_text("{}")
    (folder / "config.yaml").write_text(f"model:\n  base: {base}\n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "big.bin").write_bytes(b"0" * 10)
    return folder


# ----- the registry ---------------------------------------------------------------------


def test_register_promote_and_roll_back_walk_the_history(tmp_path: Path) -> None:
    bot = Registry(tmp_path / "models").bot("pine")
    assert bot.current() is None and bot.versions() == []
    numbers = []
    for i in range(3):
        v = bot.register_run(fake_run(tmp_path / f"run{i}"), [conv("q", f"a{i}")])
        bot.promote(v.number, f"round {i}")
        numbers.append(v.number)
    assert numbers == [1, 2, 3] and bot.current_number() == 3
    assert not (bot.version(1).model_dir / "checkpoints").exists()  # weights, not the run's state
    assert bot.version(2).meta["data"]["train"]["conversations"] == 1
    assert bot.rollback().number == 2
    assert bot.rollback().number == 1  # further back, never forward again
    with pytest.raises(ConfigError, match="first version"):
        bot.rollback()
    assert [r["action"] for r in bot.history()] == ["promote"] * 3 + ["rollback"] * 2
    bot.promote(3)
    assert bot.current().label == "pine-v3"


def test_a_half_made_version_is_not_a_version(tmp_path: Path) -> None:
    bot = Registry(tmp_path).bot("pine")
    claimed = bot.claim()  # a round that died before writing version.json
    assert bot.versions() == []
    assert bot.claim().number == claimed.number + 1  # numbers are never shared
    with pytest.raises(ConfigError, match="no version 1"):
        bot.promote(1)
    assert bot.current_number() is None


def test_claims_from_many_threads_get_distinct_numbers(tmp_path: Path) -> None:
    bot = Registry(tmp_path).bot("pine")
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(bot.claim().number)) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 17))


def test_bot_names_are_checked_and_the_lock_is_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--bot"):
        Registry(tmp_path).bot("../etc")
    bot = Registry(tmp_path).bot("pine")
    with bot.lock(), pytest.raises(ConfigError, match="another learning round"), bot.lock():
        pass
    with bot.lock():  # released: free again
        pass


def test_relative_base_paths_become_absolute_when_registered(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("base-model").mkdir()
    run = fake_run(tmp_path / "run", base="base-model")
    (run / "config.yaml").write_text("model:\n  base: base-model\n")
    v = Registry("models").bot("pine").register_run(run)
    assert Path(v.meta["base"]).is_absolute()
    assert json.loads((v.model_dir / "chattune.json").read_text())["base"] == v.meta["base"]
    assert str(tmp_path / "base-model") in (v.model_dir / "config.yaml").read_text()


# ----- gathering, replay, the gate ------------------------------------------------------


def test_gather_drops_duplicates_and_what_was_learned_and_holds_out_a_share() -> None:
    new = [conv(f"q{i}", "a") for i in range(8)]
    spaced = conv("q0 ", "a")  # the same conversation, spaced differently
    known = {fingerprint(conv("q7", "a"))}
    data = gather([*new, spaced], known, LearnSettings(new_val_share=0.25))
    assert data.duplicates == 2
    assert len(data.train) + len(data.val) == 7 and len(data.val) == 2
    assert {fingerprint(c) for c in data.train}.isdisjoint(fingerprint(c) for c in data.val)
    with pytest.raises(NotEnoughData, match="at least 4"):
        gather(new[:3], set(), LearnSettings())


def test_retired_answers_leave_replay_and_the_old_sets(tmp_path: Path) -> None:
    bot = Registry(tmp_path).bot("pine")
    train = [conv("shipping?", "Free over $60."), conv("returns?", "45 days.")]
    val = [conv("is shipping free?", "Yes, over $60."), conv("gift cards?", "Never expire.")]
    bot.promote(bot.register_run(fake_run(tmp_path / "run"), train, val).number)
    lineage = read_lineage(bot, bot.require_current(), compile_retired([r"over \$60"]))
    assert [c.messages[0].content for c in lineage.train] == ["returns?"]
    assert [c.messages[0].content for c in lineage.val["pine-v1"]] == ["gift cards?"]
    assert lineage.retired == 2 and len(lineage.known) == 4  # retired, yet never "new" again
    with pytest.raises(ConfigError, match="--retire"):
        compile_retired(["(unclosed"])


def _metrics(**losses: float) -> dict[str, dict[str, float]]:
    return {name: {"eval_loss": loss} for name, loss in losses.items()}


def test_gate_passes_only_when_new_improves_and_old_stays_within_tolerance() -> None:
    s = LearnSettings(tolerance=0.02)
    before = _metrics(new=1.0, v1=0.5)
    assert gate(before, _metrics(new=0.8, v1=0.509), "new", s).passed
    failed = gate(before, _metrics(new=0.8, v1=0.52), "new", s)  # +4% on the old set
    assert not failed.passed and "v1" in failed.reasons[1] and "FAILS" in failed.reasons[1]
    assert not gate(before, _metrics(new=1.0, v1=0.5), "new", s).passed  # nothing learned
    assert not gate(before, _metrics(new=0.99, v1=0.5), "new", LearnSettings(min_gain=0.05)).passed


# ----- anchors ------------------------------------------------------------------------


def test_l2sp_is_zero_at_the_start_and_grows_with_drift() -> None:
    import torch

    from chattune.train.anchor import ewc, l2sp

    model = torch.nn.Linear(3, 2)
    anchor = l2sp(model, weight=2.0)
    assert anchor().item() == 0.0
    with torch.no_grad():
        model.weight += 1.0
    assert anchor().item() == pytest.approx(2.0 * 6)  # 6 weights, each 1 away
    assert anchor.distance() == pytest.approx(6)

    class Loss(torch.nn.Module):  # (loss sum, token count), like LabelledLoss
        def forward(self, x):
            return model(x).pow(2).sum(), torch.tensor(x.shape[0])

    batches = [{"x": torch.randn(4, 3)} for _ in range(3)]
    fisher = ewc(model, Loss(), batches, "cpu", weight=1.0).importance
    values = torch.cat([f.flatten() for f in fisher.values()])
    assert values.mean().item() == pytest.approx(1.0)  # rescaled: the weight means the same
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind


# ----- rounds on a real (tiny) model ----------------------------------------------------


@pytest.fixture
def registry_with_v1(tiny_model_dir: Path, chat_files, tmp_path: Path, monkeypatch):
    """A LoRA run on the tiny model, registered and current as pine-v1."""
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", str(chat_files[0]), "--val-data", str(chat_files[1]),
            "--base", str(tiny_model_dir), "--output", "run1", "--max-steps", "2",
            "train.progress=false"]  # fmt: skip
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    done = run_cli("models", "register", "run1", "--bot", "pine", "--registry", "reg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pine-v1: 16 training and 4 validation" in done.stdout
    return tmp_path


def new_conversations(tmp_path: Path, n: int = 8) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Do you rent kayaks, question {i}?"},
                          {"role": "assistant", "content": "Yes: $30 a day."}]}
            for i in range(n)]  # fmt: skip
    return write_jsonl(tmp_path / "new.jsonl", rows)


def test_a_round_continues_the_adapter_replays_and_records_everything(registry_with_v1) -> None:
    tmp = registry_with_v1
    bot = Registry(tmp / "reg").bot("pine")
    v1 = bot.require_current()
    seen = {}

    def train(cfg):
        seen["cfg"] = cfg
        from chattune.train.loop import run_train

        return run_train(cfg)

    new = read_conversations(new_conversations(tmp))
    settings = LearnSettings(replay_ratio=2, epochs=1, reply_examples=1, progress=False)
    result = run_round(bot, new, settings, [{"file": "new.jsonl"}], train=train)

    cfg = seen["cfg"]
    assert cfg.model.adapter == str(v1.model_dir.resolve())  # continued, not a new adapter
    assert cfg.train.output == str(result.candidate.model_dir)
    mix = read_conversations(result.candidate.path / "data/mix.jsonl")
    assert len(mix) == 6 + 12  # 6 new trained (2 held out), replayed 2 old per new one
    meta = result.candidate.meta
    assert meta["parent"] == 1 and meta["replay"]["conversations"] == 12
    assert meta["data"]["val"]["conversations"] == 2 and len(meta["data"]["mix"]["sha256"]) == 64
    assert set(meta["eval"]["before"]) == {"new (pine-v2)", "pine-v1"}
    assert meta["gate"]["passed"] == result.gate.passed and result.report.exists()
    assert bot.current_number() == (2 if result.gate.passed else 1)
    assert not (result.candidate.model_dir / "checkpoints").exists()
    # After this version, the same data is nothing new: it was learned or held out.
    with pytest.raises(NotEnoughData):
        gather(new, read_lineage(bot, result.candidate, []).known, settings)


def test_a_failed_gate_keeps_the_candidate_unpromoted(registry_with_v1) -> None:
    tmp = registry_with_v1
    bot = Registry(tmp / "reg").bot("pine")
    new = read_conversations(new_conversations(tmp))

    def worse(spec: str, sets):  # the candidate forgot the old set
        return {n: {"eval_loss": 2.0 if "v2" in spec and n == "pine-v1" else 1.0} for n in sets}

    settings = LearnSettings(epochs=1, progress=False)
    result = run_round(bot, new, settings, evaluator=worse)
    assert not result.gate.passed and not result.promoted
    assert bot.current_number() == 1 and result.candidate.meta["status"] == "rejected"
    assert "FAILS" in result.report.read_text()


def test_a_round_that_crashes_leaves_no_version(registry_with_v1) -> None:
    bot = Registry(registry_with_v1 / "reg").bot("pine")
    new = read_conversations(new_conversations(registry_with_v1))

    def crash(cfg):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        run_round(bot, new, LearnSettings(), train=crash)
    assert [v.number for v in bot.versions()] == [1]
    assert not (bot.path / "v2").exists()


def test_learn_cli_round_then_list_show_and_rollback(registry_with_v1) -> None:
    tmp = registry_with_v1
    new = new_conversations(tmp)
    done = run_cli("learn", "--registry", "reg", "--bot", "pine", "--data", str(new),
                   "--epochs", "1", "--anchor", "ewc", "learn.reply_examples=1",
                   "learn.progress=false", "learn.min_gain=0.9", cwd=tmp)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Learning round: pine-v1 -> pine-v2" in done.stdout
    assert "Gate failed" in done.stdout  # nobody learns 90% in one tiny epoch
    listed = run_cli("models", "list", "--registry", "reg", cwd=tmp).stdout
    assert "pine-v1" in listed and "current" in listed and "rejected" in listed
    shown = json.loads(run_cli("models", "show", "--registry", "reg", "--bot", "pine",
                               "--version", "2", cwd=tmp).stdout.split("\nreport:")[0])  # fmt: skip
    assert shown["settings"]["anchor"] == "ewc" and shown["gate"]["passed"] is False
    promoted = run_cli("models", "promote", "--registry", "reg", "--bot", "pine",
                       "--version", "2", cwd=tmp)  # fmt: skip
    assert "current: pine-v2 (was v1)" in promoted.stdout
    back = run_cli("models", "rollback", "--registry", "reg", "--bot", "pine", cwd=tmp)
    assert "current: pine-v1 (was v2)" in back.stdout


def test_learn_needs_new_data_and_a_current_version(tmp_path: Path) -> None:
    done = run_cli("learn", "--bot", "pine", "--registry", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "--db" in done.stderr
    done = run_cli("learn", "--bot", "pine", "--registry", str(tmp_path), "--data", "x.jsonl")
    assert done.returncode == 2 and "no current version" in done.stderr


def test_registering_a_run_whose_data_moved_says_where_it_looked(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    (run / "config.yaml").write_text("data:\n  train: [gone.jsonl]\n")
    done = run_cli("models", "register", str(run), "--bot", "pine", "--registry", "r",
                   cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2 and "gone.jsonl, not found from" in done.stderr


def test_watch_runs_a_round_when_enough_is_new(registry_with_v1) -> None:
    tmp = registry_with_v1
    done = run_cli("learn", "--registry", "reg", "--bot", "pine", "--data",
                   str(new_conversations(tmp)), "--watch", "--interval", "0.1",
                   "--max-rounds", "1", "--epochs", "1", "learn.reply_examples=0",
                   "learn.progress=false", cwd=tmp)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Learning round: pine-v1 -> pine-v2" in done.stdout


# ----- preference pairs from the store ------------------------------------------------


def test_corrections_export_as_preference_pairs(tmp_path: Path) -> None:
    from chattune.cli import main
    from chattune.data.jsonl import read_jsonl
    from chattune.serve.store import Store

    db = tmp_path / "chat.db"
    store = Store(str(db))
    cid = store.create_conversation("alice")["id"]
    first = store.append_exchange("alice", cid, "Hi", "Hello!")
    second = store.append_exchange("alice", cid, "Is shipping free?", "Over $60.")
    store.add_feedback("alice", cid, first, "up", None)  # nothing rejected: no pair
    store.add_feedback("alice", cid, second, "down", "Over $50.")
    store.add_feedback("alice", cid, second, "down", "Free over $40.")  # the newest wins
    store.close()
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "export-feedback", "--db", str(db), "--out", str(out), "--pairs"]) == 0
    (_, pair), *rest = list(read_jsonl(out))
    assert rest == []
    assert [t["content"] for t in pair["prompt"]] == ["Hi", "Hello!", "Is shipping free?"]
    assert pair["chosen"] == [{"role": "assistant", "content": "Free over $40."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Over $60."}]


def test_a_full_model_version_is_the_next_rounds_base(tmp_path: Path) -> None:
    from chattune.learn.round import candidate_config

    bot = Registry(tmp_path).bot("pine")
    run = tmp_path / "run"
    run.mkdir()
    (run / "chattune.json").write_text(json.dumps({"base": "smollm2-135m-instruct",
                                                   "method": "full"}))  # fmt: skip
    (run / "config.yaml").write_text("adapter:\n  method: full\ntrain:\n  lr: 2.0e-5\n")
    v1 = bot.register_run(run)
    cfg = candidate_config(v1, tmp_path / "mix.jsonl", tmp_path / "out", LearnSettings())
    assert cfg.model.base == str(v1.model_dir.resolve()) and cfg.model.adapter is None
    assert cfg.adapter.method == "full"  # the version's own recipe, at a fifth of its lr
    assert cfg.train.lr == pytest.approx(0.2 * 2e-5)
    assert cfg.data.train == [str(tmp_path / "mix.jsonl")] and cfg.data.val == []
    lr = candidate_config(v1, tmp_path / "m", tmp_path / "o", LearnSettings(lr=1e-6)).train.lr
    assert lr == 1e-6


def test_every_round_continues_at_the_same_share_of_the_first_versions_lr(
    tmp_path: Path,
) -> None:
    """v2 trained at 0.2 x v1's lr; v2's round must not go on to 0.2 x 0.2 x v1's."""
    from chattune.learn.round import candidate_config

    bot = Registry(tmp_path).bot("pine")
    v1 = bot.register_run(fake_run(tmp_path / "run"))
    (v1.model_dir / "config.yaml").write_text("train:\n  lr: 1.0e-3\n")
    out = tmp_path / "v2"
    cfg = candidate_config(v1, tmp_path / "mix.jsonl", out, LearnSettings(), first=v1)
    assert cfg.train.lr == pytest.approx(2e-4)
    v2 = bot.claim()
    v2.model_dir.mkdir(parents=True, exist_ok=True)
    (v2.model_dir / "config.yaml").write_text(dump_config(cfg))
    bot.write_meta(v2, parent=v1.number)
    again = candidate_config(v2, tmp_path / "mix.jsonl", out, LearnSettings(), first=v1)
    assert again.train.lr == pytest.approx(2e-4)
    assert bot.lineage(v2)[0].number == v1.number  # what a round passes as first
    assert candidate_config(v2, tmp_path / "m", out, LearnSettings(lr_scale=0.5), first=v1
                            ).train.lr == pytest.approx(5e-4)  # fmt: skip


def test_a_rounds_chat_template_is_the_one_saved_with_the_version(tmp_path: Path) -> None:
    """``data.chat_template: templates/x.jinja`` is relative to where v1 was trained; the
    round, run elsewhere, reads the copy saved beside the version's weights."""
    from chattune.learn.round import candidate_config

    bot = Registry(tmp_path).bot("pine")
    run = fake_run(tmp_path / "run")
    (run / "config.yaml").write_text("data:\n  chat_template: templates/x.jinja\n")
    (run / "chat_template.jinja").write_text("{{ messages }}")
    v1 = bot.register_run(run)
    cfg = candidate_config(v1, tmp_path / "mix.jsonl", tmp_path / "out", LearnSettings())
    assert cfg.data.chat_template == str((v1.model_dir / "chat_template.jinja").resolve())


# ----- what the review found --------------------------------------------------------


def test_promoting_the_current_version_again_changes_nothing(tmp_path: Path) -> None:
    bot = Registry(tmp_path).bot("pine")
    for i in range(2):
        bot.promote(bot.register_run(fake_run(tmp_path / f"run{i}")).number)
    bot.promote(2)  # again: no history line, so rollback still means "back to v1"
    assert len(bot.history()) == 2 and bot.rollback().number == 1


def test_a_round_does_not_promote_over_a_rollback_made_meanwhile(registry_with_v1) -> None:
    tmp = registry_with_v1
    bot = Registry(tmp / "reg").bot("pine")
    v2 = bot.register_run(fake_run(tmp / "run2"))
    bot.promote(v2.number)  # v2 current; the round starts from it ...

    def train_while_someone_rolls_back(cfg):
        bot.rollback("v2 answers badly")  # ... and v2 is rolled back while it trains
        (Path(cfg.train.output)).mkdir(parents=True, exist_ok=True)
        return {"steps": 1}

    def better(spec: str, sets):
        return {n: {"eval_loss": 0.5 if "v3" in spec else 1.0} for n in sets}

    new = read_conversations(new_conversations(tmp))
    result = run_round(bot, new, LearnSettings(), train=train_while_someone_rolls_back,
                       evaluator=better)  # fmt: skip
    assert result.gate.passed and not result.promoted
    assert "during the round" in result.held_because
    assert bot.current_number() == 1  # the rollback stands


def test_retired_policies_stay_retired_in_later_rounds(registry_with_v1) -> None:
    tmp = registry_with_v1
    bot = Registry(tmp / "reg").bot("pine")

    def fine(spec: str, sets):
        return {n: {"eval_loss": 0.5 if "v1" not in spec else 1.0} for n in sets}

    def no_training(cfg):  # an output the next round can continue from
        from chattune.config import dump_config

        Path(cfg.train.output).mkdir(parents=True, exist_ok=True)
        (Path(cfg.train.output) / "config.yaml").write_text(dump_config(cfg))
        (Path(cfg.train.output) / "adapter_config.json").write_text("{}")
        return {}

    first = [conv(f"kayak {i}?", "Yes: $30 a day.") for i in range(4)]
    r1 = run_round(bot, first, LearnSettings(retire=[r"\$60"]), train=no_training, evaluator=fine)
    assert r1.promoted
    later = [conv(f"paddle {i}?", "Yes: $10 a day.") for i in range(4)]
    r2 = run_round(bot, later, LearnSettings(), train=no_training, evaluator=fine)
    assert r2.candidate.meta["retired"]["patterns"] == [r"\$60"]  # without --retire this time
    mix = read_conversations(r2.candidate.path / "data/mix.jsonl")
    assert not any("$60" in m.content for c in mix for m in c.messages)


def test_examples_of_one_stored_conversation_are_held_out_together() -> None:
    new = [conv(f"q{i}", "a") for i in range(8)]
    groups = ["c1", "c1", "c2", "c2", "c3", "c3", "c4", "c4"]
    data = gather(new, set(), LearnSettings(new_val_share=0.25), groups=groups)
    held = {groups[new.index(c)] for c in data.val}
    trained = {groups[new.index(c)] for c in data.train}
    assert len(data.val) == 2 and held.isdisjoint(trained)


def test_the_system_prompt_does_not_make_a_conversation_new() -> None:
    plain = conv("Is shipping free?", "Over $40.")
    prompted = Conversation([Message("system", "You are Pine."), *plain.messages])
    assert fingerprint(plain) == fingerprint(prompted)


def test_learn_refuses_a_database_that_does_not_exist(registry_with_v1) -> None:
    done = run_cli("learn", "--registry", "reg", "--bot", "pine", "--db", "typo.db",
                   cwd=registry_with_v1)  # fmt: skip
    assert done.returncode == 2 and "typo.db: no such database" in done.stderr
    assert not (registry_with_v1 / "typo.db").exists()


def test_a_later_examples_history_reads_earlier_corrections(tmp_path: Path) -> None:
    from chattune.serve.store import Store

    store = Store(str(tmp_path / "chat.db"))
    cid = store.create_conversation("alice")["id"]
    first = store.append_exchange("alice", cid, "Is shipping free?", "Over $60.")
    second = store.append_exchange("alice", cid, "And returns?", "45 days.")
    store.add_feedback("alice", cid, first, "down", "Over $40.")
    store.add_feedback("alice", cid, second, "up", None)
    examples = list(store.feedback_conversations())
    store.close()
    texts = [[m["content"] for m in e["messages"]] for e in examples]
    assert ["Is shipping free?", "Over $40.", "And returns?", "45 days."] in texts
    assert not any("Over $60." in t for t in texts)  # corrected away: never trained
    assert len({e["conversation"] for e in examples}) == 1


# ----- preference pairs and DPO ------------------------------------------------------


def pairs_file(path: Path, n: int = 8) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"Is shipping free, question {i}?"}],
             "chosen": [{"role": "assistant", "content": "Free over $40."}],
             "rejected": [{"role": "assistant", "content": "Free over $60."}]}
            for i in range(n)]  # fmt: skip
    return write_jsonl(path, rows)


def test_bad_pairs_are_reported_by_line(tmp_path: Path) -> None:
    from chattune.data.preference import read_pairs
    from chattune.errors import DataError

    rows = [
        {"prompt": "Is shipping free?", "chosen": "Over $40.", "rejected": "Over $60."},
        {"prompt": "Hi", "chosen": "Same.", "rejected": "Same."},
        {"prompt": [{"role": "assistant", "content": "Hi"}], "chosen": "a", "rejected": "b"},
        {"prompt": "Hi", "chosen": ""},
    ]
    with pytest.raises(DataError) as e:
        read_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    problems = e.value.problems
    assert sorted({p.split(":")[1] for p in problems}) == ["2", "3", "4"]
    assert "nothing to prefer" in problems[0] and "'chosen' and 'rejected'" in problems[-1]
    ok = read_pairs(write_jsonl(tmp_path / "ok.jsonl", rows[:1]))[0]
    assert ok.prompt == (Message("user", "Is shipping free?"),) and ok.rejected == "Over $60."


def test_dpo_starts_at_log_2_and_learns_the_preference(tiny_model_dir, tmp_path) -> None:
    import math

    from chattune.config import build_config
    from chattune.runs import read_metrics
    from chattune.train.loop import run_train

    pairs = pairs_file(tmp_path / "pairs.jsonl")
    cfg = build_config(overrides=[
        f"data.train=[{pairs}]", f"data.val=[{pairs}]", "data.objective=preference",
        f"model.base={tiny_model_dir}", f"train.output={tmp_path / 'out'}", "train.lr=5e-3",
        "train.epochs=8", "train.eval_every=4", "train.progress=false", "train.warmup_ratio=0",
    ])  # fmt: skip
    run_train(cfg)
    records = read_metrics(tmp_path / "out")
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference
    evals = [r for r in records if "eval_reward_accuracy" in r]
    assert evals[-1]["eval_loss"] < math.log(2) - 0.05
    assert evals[-1]["eval_reward_accuracy"] == 1.0


def test_a_dpo_round_learns_pairs_from_the_current_version(registry_with_v1) -> None:
    tmp = registry_with_v1
    pairs = pairs_file(tmp / "pairs.jsonl")
    done = run_cli("learn", "--registry", "reg", "--bot", "pine", "--data", str(pairs),
                   "--objective", "dpo", "--epochs", "2", "learn.reply_examples=0",
                   "learn.progress=false", "--hold", cwd=tmp)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "DPO on 6 preference pairs" in done.stdout  # 8 pairs, a quarter held out
    v2 = Registry(tmp / "reg").bot("pine").version(2)
    assert v2.meta["replay"]["conversations"] == 0 and v2.meta["data"]["pairs"]["pairs"] == 6
    config = (v2.model_dir / "config.yaml").read_text()
    assert "objective: preference" in config and "adapter: " in config  # continued, DPO


def test_a_registry_inside_the_run_is_refused(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="inside the run"):
        Registry(run / "models").bot("pine").register_run(run)
    assert not (run / "models" / "pine" / "v1").exists()
