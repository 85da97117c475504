"""One end-to-end run per user-facing command, through the real entry point."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from chattune.cli import COMMANDS, build_parser, main
from tests.conftest import run_cli, train_args

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


REQUIRED = {
    "data check": ["x.jsonl"],
    "data stats": ["x.jsonl"],
    "data export-feedback": ["--out", "x.jsonl"],
    "rate": ["--data", "x.jsonl", "--models", "a", "b", "--out", "r.jsonl"],
    "kb add": ["doc.md", "--kb", "kb"],
    "kb remove": ["doc.md", "--kb", "kb"],
    "kb list": ["--kb", "kb"],
    "kb stats": ["--kb", "kb"],
    "kb rebuild": ["--kb", "kb"],
    "kb search": ["query", "--kb", "kb"],
    "kb eval": ["--kb", "kb", "--data", "q.jsonl"],
}


def test_command_table_matches_the_parser() -> None:
    parser = build_parser()
    for verb in COMMANDS:
        args = parser.parse_args([*verb.split(), *REQUIRED.get(verb, [])])
        assert args.func is COMMANDS[verb]
        assert COMMANDS[verb].__doc__  # the docstring is the command's help


def test_help_is_instant_and_imports_no_torch() -> None:
    code = (
        "import sys; from chattune.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


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
    assert [sorted(m) for m in metrics] == [
        ["epoch", "loss", "lr", "step", "tokens_per_s"],
        ["epoch", "loss", "lr", "step", "tokens_per_s"],
        ["epoch", "eval_loss", "eval_ppl", "step"],
    ]
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
