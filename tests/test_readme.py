"""Every ``chattune`` command in README.md (and the Makefile's demo) works as written.

Each command is parsed and its config validated exactly as ``chattune`` would, from the
repository root, without running it: an unknown verb or flag, a bad value or a missing
required field fails here. Each one's ``--help`` is printed too, and the cheap ones (data
checks and statistics, the feedback export) really run on tiny files named as in the README.
"""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from chattune.cli import main, parse
from tests.conftest import ROOT, conversation, write_jsonl


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script: ``\\`` continuations joined, comments dropped,
    split at ``;``, ``|`` and ``&&``."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";|&")
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token.strip(";|&"):
                command.append(token)
            elif command:
                commands.append(command)
                command = []
    return commands


def chattune_argv(command: list[str]) -> list[str] | None:
    """``command``'s arguments to chattune (``chattune ...``, ``... -m chattune.cli ...``)."""
    for i, word in enumerate(command):
        if word == "chattune" or word.endswith("/chattune"):
            return command[i + 1 :]
        if word == "chattune.cli" and command[i - 1] == "-m":
            return command[i + 1 :]
    return None


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    found = [chattune_argv(c) for block in blocks for c in shell_commands(block)]
    return [argv for argv in found if argv is not None]


def makefile_commands() -> list[list[str]]:
    """chattune commands of the demo as ``make -n demo`` prints them: make expands the
    variables itself, so one defined after its use (empty under ``:=``) shows here."""
    out = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    found = [chattune_argv(c) for c in shell_commands(out.stdout)]
    return [argv for argv in found if argv is not None]


README = readme_commands()
ids = [" ".join(argv)[:60] for argv in README]


def test_the_readme_shows_every_command() -> None:
    from chattune.cli import COMMANDS

    shown = {parse(argv)[0].name for argv in README}
    assert shown == set(COMMANDS), sorted(set(COMMANDS) - shown)


@pytest.mark.parametrize("argv", README, ids=ids)
def test_readme_command_parses_and_validates(argv, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # configs/lora.yaml, examples/...
    command, cfg = parse(argv)
    assert isinstance(cfg, command.config)


@pytest.mark.parametrize("argv", README, ids=ids)
def test_readme_command_help(argv, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: chattune {argv[0]}")


def test_the_makefile_demo_has_commands() -> None:
    """Without this, a Makefile that lost its commands would skip the test below silently."""
    assert len(makefile_commands()) >= 5


@pytest.mark.parametrize("argv", makefile_commands(), ids=lambda a: " ".join(a)[:60])
def test_makefile_command_parses_and_validates(argv, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    command, cfg = parse(argv)
    assert isinstance(cfg, command.config)


@pytest.fixture
def readme_files(tmp_path, monkeypatch) -> Path:
    """The README's example inputs, tiny, in a fresh working directory."""
    write_jsonl(tmp_path / "chats.jsonl", [conversation(i, i % 2 == 0) for i in range(6)])
    with open(tmp_path / "more.csv", "w", newline="") as f:
        csv.writer(f).writerows([("question", "answer"), ("Is shipping free?", "Over $60.")])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_cheap_readme_commands_really_run(readme_files, tiny_model_dir, capsys) -> None:
    """``data check``, ``data stats`` (on the tiny model) and ``data export-feedback``."""
    cheap = [argv for argv in README if argv[0] == "data"]
    assert {argv[1] for argv in cheap} == {"check", "stats", "export-feedback"}
    for argv in cheap:
        if "--base" in argv:  # the tiny model, not the embedded one
            argv = [*argv]
            argv[argv.index("--base") + 1] = str(tiny_model_dir)
        assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "ok: 7 conversations in 2 file(s)" in out
    assert re.search(r"^conversations\s+6$", out, re.M)
    assert "wrote 0 conversations to feedback.jsonl" in out
    assert (readme_files / "feedback.jsonl").read_text() == ""
