"""Configuration: YAML 1:1, flags, dotted overrides, every problem reported together."""

from __future__ import annotations

import re

import pytest
from pydantic import Field, model_validator

from chattune.config import (
    FieldProblem,
    RunConfig,
    Section,
    build_config,
    dump_config,
    load_config,
    merge_layers,
    parse_override,
)
from chattune.errors import ConfigError

FLAGS = {"--lr": "train.lr", "--val-data": "data.val", "--val-split": "data.val_split"}


def test_layers_apply_in_order(tmp_path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text("train:\n  lr: 1.0e-3\n  epochs: 2\nadapter:\n  method: ia3\n")
    cfg = build_config(run, {"train.lr": 5e-4}, ["train.lr=2e-4", "data.mask=last"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.adapter.method) == (2e-4, 2, "ia3")
    assert cfg.data.mask.value == "last"
    assert merge_layers(run, {"train.lr": 5e-4})["train"] == {"lr": 5e-4, "epochs": 2}


def test_resolved_config_round_trips(tmp_path) -> None:
    cfg = build_config(overrides=["data.train=[a.jsonl, b.jsonl]", "train.max_steps=5"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert build_config(path) == cfg
    assert RunConfig() == build_config()


def test_all_problems_at_once_with_field_and_flag() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(
            RunConfig,
            overrides=[
                "train.lr=abc",
                "train.colour=red",
                "adapter.method=prefix",
                "data.val_split=0.2",
                "data.val=[v.jsonl]",
            ],
            flag_table=FLAGS,
        )
    lines = str(e.value).splitlines()
    assert lines[0] == "invalid configuration:"
    assert (
        "  train.lr (--lr): Input should be a valid number, unable to parse string as a "
        "number (got 'abc')" in lines
    )
    assert "  train.colour: unknown key" in lines
    assert any(line.startswith("  adapter.method: Input should be 'lora'") for line in lines)
    assert (
        "  data.val_split (--val-split): give either data.val (--val-data) or data.val_split, "
        "not both" in lines
    )
    assert len(lines) == 5  # one line a problem


class _Job(Section):
    """A made-up command's config: the machinery knows no real one."""

    files: list[str] = Field(min_length=1)
    name: str
    ratings: str | None = None
    limit: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _ratings_need_a_limit(self) -> _Job:
        if self.ratings and self.limit < 5:
            raise FieldProblem("limit", "at least 5 with ratings")
        return self


def test_required_fields_and_cross_field_problems_name_their_flag() -> None:
    flags = {"FILE": "files", "--name": "name", "--limit": "limit"}
    with pytest.raises(ConfigError) as e:
        load_config(_Job, given={"files": []}, flag_table=flags)
    assert str(e.value).splitlines()[1:] == [
        "  files (FILE): required: give at least one",
        "  name (--name): required",
    ]
    with pytest.raises(ConfigError, match=r"limit \(--limit\): at least 5 with ratings$"):
        load_config(_Job, given={"files": ["a"], "name": "x"}, overrides=["ratings=r.jsonl"],
                    flag_table=flags)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.lr=2e-4", ("train.lr", 2e-4)),
        ("train.resume=true", ("train.resume", True)),
        ("model.base=runs/x", ("model.base", "runs/x")),
        ("data.train=[a, b]", ("data.train", ["a", "b"])),
    ],
)
def test_parse_override(text, expected) -> None:
    assert parse_override(text) == expected


def test_bad_yaml_and_bad_override(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"--config .*not valid YAML"):
        build_config(bad)
    with pytest.raises(ConfigError, match="expected key=value"):
        build_config(overrides=["train.lr"])
    with pytest.raises(ConfigError, match="no such file"):
        build_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="'lr' is a value, not a section"):
        build_config(overrides=["train.lr=1", "train.lr.x=2"])


def test_an_empty_path_is_an_error_not_the_current_folder(tmp_path) -> None:
    """``data.kb_profile=`` (say, a Makefile variable that expanded to nothing) would read
    the current folder as a YAML file; it fails at validation, naming the field."""
    for field in ("data.kb", "data.kb_profile", "data.chat_template", "model.adapter"):
        with pytest.raises(ConfigError, match=rf"{re.escape(field)}: String should have at"):
            build_config(overrides=[f"{field}="])


def test_a_folder_given_as_a_yaml_file_is_named(tmp_path) -> None:
    from chattune.chat.profile import load_profile

    where = re.escape(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"--config {where}: a folder, not a YAML file"):
        build_config(tmp_path)
    with pytest.raises(ConfigError, match=rf"data\.kb_profile {where}: a folder"):
        load_profile(tmp_path, "data.kb_profile")
    (tmp_path / "latin1.yaml").write_bytes(b"system_prompt: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"--profile .*latin1\.yaml: cannot read it as UTF-8"):
        load_profile(tmp_path / "latin1.yaml")
