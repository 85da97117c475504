"""One end-to-end run per user-facing command, through the real entry point."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from chattune.cli import COMMANDS, build_parser, main, parse
from chattune.cli.command import field_info
from chattune.cli.common import load_bot
from chattune.errors import ConfigError
from tests.conftest import ROOT, run_cli, train_args

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
SRC = Path(__file__).resolve().parents[1] / "src" / "chattune"

#: The least each command needs to validate.
REQUIRED = {
    "data check": ["x.jsonl"],
    "data stats": ["x.jsonl"],
    "data export-feedback": ["--out", "x.jsonl"],
    "train": ["--data", "x.jsonl"],
    "tune": ["--data", "x.jsonl", "--val-data", "v.jsonl", "--space", "train.lr=1e-5:1e-3:log"],
    "export": ["--model", "runs/x", "--output", "x.gguf"],
    "eval": ["--data", "x.jsonl"],
    "rate": ["--data", "x.jsonl", "--models", "a", "b", "--out", "r.jsonl"],
    "kb add": ["doc.md", "--kb", "kb"],
    "kb remove": ["doc.md", "--kb", "kb"],
    "kb list": ["--kb", "kb"],
    "kb stats": ["--kb", "kb"],
    "kb rebuild": ["--kb", "kb"],
    "kb search": ["query", "--kb", "kb"],
    "kb eval": ["--kb", "kb", "--data", "q.jsonl"],
    "nlu train": ["--data", "x.csv", "--output", "nlu"],
    "nlu eval": ["--model", "nlu", "--data", "x.csv"],
    "models show": ["--bot", "pine", "--version", "1"],
    "models promote": ["--bot", "pine", "--version", "1"],
    "models rollback": ["--bot", "pine"],
    "models register": ["runs/x", "--bot", "pine"],
    "learn": ["--bot", "pine", "--data", "x.jsonl"],
}


def test_command_table_is_complete_and_maps_every_flag_to_a_field() -> None:
    for name, command in COMMANDS.items():
        assert command.name == name and command.help  # the docstring is the command's help
        for flag, dotted in command.flags.items():
            kind = field_info(command.config, dotted).annotation  # KeyError: no such field
            assert not (isinstance(kind, type) and issubclass(kind, BaseModel)), f"{name} {flag}"
        assert len(set(command.flags.values())) == len(command.flags), name  # one flag a field
        assert sum(not f.startswith("-") for f in command.flags) <= 1, name
        found, cfg = parse([*name.split(), *REQUIRED.get(name, [])])
        assert found is command and isinstance(cfg, command.config)


def test_every_flag_sets_its_field() -> None:
    """Each named flag, given a value, changes its field in the validated config."""
    values = {int: "9", float: "0.5", str: "x"}
    special = {"--max-body-bytes": "4096", "--output": "y.gguf",  # fields "9" or "x" fail
               "--handoff-webhook": "http://127.0.0.1:9/hook"}  # fmt: skip
    for name, command in COMMANDS.items():
        base = [*name.split(), *REQUIRED.get(name, [])]
        for flag, dotted in command.flags.items():
            if not flag.startswith("-"):
                continue
            action = _action(name, flag)
            before = _field(parse(base)[1], dotted)
            if action.choices:
                argv = [flag, next(str(c) for c in action.choices if str(c) != str(before))]
            elif action.nargs == 0:
                argv = [flag]
            else:
                value = special.get(flag, values.get(action.type, "x"))
                argv = [flag] + [value] * (action.nargs if isinstance(action.nargs, int) else 1)
            if (name, flag) in {("serve", "--registry"), ("serve", "--follow-interval")}:
                argv += ["--bot", "pine"]
            if (name, flag) == ("serve", "--host"):
                argv += ["--api-key", "k"]  # a public host needs a key
            after = _field(parse([*base, *argv])[1], dotted)
            assert after != before, f"{name} {flag}: {dotted} stayed {before!r}"


def _field(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _action(name: str, flag: str):
    parser = build_parser()
    for word in name.split():
        sub = next(a for a in parser._actions if a.dest in ("verb", f"{name.split()[0]}_verb"))
        parser = sub.choices[word]
    return next(a for a in parser._actions if flag in a.option_strings)


def test_help_is_instant_and_imports_no_torch() -> None:
    code = (
        "import sys; from chattune.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["train", "--config", str(ROOT / "configs/lora.yaml"), "train.lr=1e-4"],
            "data.train (--data): required",
        ),
        (["eval", "--model", "runs/x"], "data (--data): required"),
        (["rate", "--models", "a", "b"], "data (--data): required"),
        (["kb", "search", "where?"], "kb (--kb): required"),
        (["generate", "--prompt", "hi", "--data", "x.jsonl"], "data (--data): give prompts"),
        (["chat", "--temperature", "0"], "generation.temperature (--temperature): Input should be"),
    ],
)
def test_required_fields_fail_before_anything_loads(argv, expected) -> None:
    """Each problem is found by validation alone: no torch import, no model, in a blink."""
    probe = (
        "import sys, contextlib, io\n"
        "from chattune.cli import main\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        f"    code = main({argv!r})\n"
        "print(code, 'torch' in sys.modules, err.getvalue())\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("2 False error: invalid configuration:"), out.stdout + out.stderr
    assert expected in out.stdout


def test_every_problem_is_reported_at_once(capsys) -> None:
    argv = ["serve", "--port", "99999", "--max-tokens-limit", "0", "--top-p", "2", "color=red"]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[1:] == [
        "  generation.top_p (--top-p): Input should be less than or equal to 1 (got 2.0)",
        "  http.port (--port): Input should be less than or equal to 65535 (got 99999)",
        "  limits.max_tokens_limit (--max-tokens-limit): Input should be greater than or equal "
        "to 1 (got 0)",
        "  color: unknown key",
    ]


def test_yaml_flags_and_overrides_layer_for_every_verb(tmp_path) -> None:
    run = tmp_path / "eval.yaml"
    run.write_text("data: [a.jsonl]\ngeneration: {max_new_tokens: 5, top_k: 3}\nbatch_size: 2\n")
    _, cfg = parse(["eval", "--config", str(run), "--max-new-tokens", "7", "output.report=r.html"])
    assert cfg.data == ["a.jsonl"] and cfg.batch_size == 2 and cfg.output.report == "r.html"
    assert cfg.generation.given() == {"max_new_tokens": 7, "top_k": 3}
    with pytest.raises(ConfigError, match=r"--config .*no such file"):
        parse(["chat", "--config", str(tmp_path / "missing.yaml")])


def test_positionals_and_overrides_mix_in_any_order() -> None:
    _, cfg = parse(["data", "check", "a.jsonl", "--format", "csv", "b.csv", "objective=lm"])
    assert (cfg.files, cfg.format, cfg.objective) == (["a.jsonl", "b.csv"], "csv", "lm")
    _, cfg = parse(["kb", "search", "do you ship?", "--kb", "kb", "k=2"])
    assert (cfg.query, cfg.k) == ("do you ship?", 2)
    with pytest.raises(ConfigError, match="QUERY: one expected"):
        parse(["kb", "search", "do", "you", "--kb", "kb"])
    with pytest.raises(SystemExit):
        parse(["data", "check", "a.jsonl", "--colour", "red"])


def test_generation_flags_override_only_what_they_name() -> None:
    profile_path = str(ROOT / "examples/support/bot.yaml")
    _, cfg = parse(["eval", "--data", "x.jsonl", "--profile", profile_path,
                    "--temperature", "0.2", "--system", "Be terse."])  # fmt: skip
    assert cfg.generation.given() == {"temperature": 0.2}
    from chattune.chat.profile import load_profile

    profile = load_profile(ROOT / "examples/support/bot.yaml")
    bot = load_bot(cfg.bot, cfg.generation)
    assert bot.generation == profile.generation.model_copy(update={"temperature": 0.2})
    assert bot.system_prompt == "Be terse." and bot.persona == profile.persona


def test_shared_sections_mirror_the_library() -> None:
    from chattune.cli.kb import Mode
    from chattune.knowledge.retrieve import MODES

    # cli/kb.py mirrors the retrieval modes because importing knowledge.retrieve would
    # load numpy and the knowledge stack for `chattune --help`; this keeps the copy true.
    assert typing.get_args(Mode) == MODES


def test_cli_modules_stay_small() -> None:
    for path in sorted((SRC / "cli").glob("*.py")):
        tree = ast.parse(path.read_text())
        assert len(path.read_text().splitlines()) <= 300, path.name
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 60, f"{path.name}: {node.name}"


def test_max_steps_2_run_leaves_exactly_the_expected_files(tiny_model_dir, chat_files, tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        *train_args(tiny_model_dir, chat_files, out),
        "--max-steps",
        "2",
        "train.batch_size=4",
        "train.progress=false",
    )
    assert result.returncode == 0, result.stderr
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    events = {f for f in files if f.startswith("tensorboard/events.out.tfevents.")}
    assert len(events) == 1
    checkpoint = {
        f"checkpoints/step-0000002/{name}"
        for name in (
            "COMPLETE",
            "batches.json",
            "config.yaml",
            "optimizer.pt",
            "rng.pt",
            "scheduler.pt",
            "state.json",
            "trainable.safetensors",
        )
    }
    best = {f"checkpoints/best/{n}" for n in ("COMPLETE", "state.json", "trainable.safetensors")}
    assert files - events == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
        "tokenizer.json",
        "tokenizer_config.json",
        "config.yaml",
        "chattune.json",
        "metrics.jsonl",
        "README.md",
        *checkpoint,
        *best,
    }
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # train.eval_every unset with validation data: 8 evaluations, here one after each step
    step, evaluation = (
        ["epoch", "loss", "lr", "step", "tokens_per_s"],
        ["epoch", "eval_loss", "eval_ppl", "step"],
    )
    assert [sorted(m) for m in metrics] == [step, evaluation, step, evaluation]
    assert "done:" in result.stdout and "best_eval_loss" in result.stdout


def test_data_check_reports_file_and_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "bot", "content": "hi"}]}\n')
    assert main(["data", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}:1: turn 1: unknown role 'bot'")
    assert "Traceback" not in err


def test_data_check_ok(chat_files, capsys) -> None:
    assert main(["data", "check", *map(str, chat_files)]) == 0
    assert capsys.readouterr().out == "ok: 20 conversations in 2 file(s)\n"


def test_data_stats(tiny_model_dir, chat_files, capsys) -> None:
    assert (
        main(
            ["data", "stats", str(chat_files[0]), "--base", str(tiny_model_dir), "--max-len", "80"]
        )
        == 0
    )
    out = dict(
        re.split(r"\s{2,}", line, maxsplit=1) for line in capsys.readouterr().out.splitlines()
    )
    assert out["conversations"] == "16"
    assert out["turns"] == "72"  # 16 x 4 turns + 8 system turns
    assert out["trained tokens (assistant)"] == "608 (35.8%)"
    assert (out["truncated at --max-len 80"], out["dropped at --max-len 80"]) == ("12", "4")


def test_bad_flag_value_names_the_flag(chat_files, capsys) -> None:
    assert main(["train", "--data", str(chat_files[0]), "train.batch_size=zero"]) == 2
    assert (
        "train.batch_size (--batch-size): Input should be a valid integer"
        in capsys.readouterr().err
    )


def test_unknown_model_lists_what_is_accepted(chat_files, capsys) -> None:
    assert main(["train", "--data", str(chat_files[0]), "--base", "gpt-17"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'gpt-17'" in err and "smollm2-135m-instruct" in err


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tiny_model_dir, chat_files, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chattune.cli",
            "train",
            "--data",
            str(chat_files[0]),
            "--base",
            str(tiny_model_dir),
            "--output",
            str(out),
            "--max-steps",
            "100000",
            "train.batch_size=2",
            "train.progress=false",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume with --resume" in err
    (checkpoint,) = (out / "checkpoints").glob("step-*")
    state = json.loads((checkpoint / "state.json").read_text())
    assert (checkpoint / "COMPLETE").exists() and state["step"] >= 1
