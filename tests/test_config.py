"""Configuration: YAML 1:1, flags, dotted overrides, every problem reported together."""

from __future__ import annotations

import pytest

from chattune.config import RunConfig, build_config, dump_config, parse_override
from chattune.errors import ConfigError


def test_layers_apply_in_order(tmp_path) -> None:
    run = tmp_path / "run.yaml"
    run.write_text("train:\n  lr: 1.0e-3\n  epochs: 2\nadapter:\n  method: ia3\n")
    cfg = build_config(run, {"train.lr": 5e-4}, ["train.lr=2e-4", "data.mask=last"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.adapter.method) == (2e-4, 2, "ia3")
    assert cfg.data.mask.value == "last"


def test_resolved_config_round_trips(tmp_path) -> None:
    cfg = build_config(overrides=["data.train=[a.jsonl, b.jsonl]", "train.max_steps=5"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert build_config(path) == cfg
    assert RunConfig() == build_config()


def test_all_problems_at_once_with_field_and_flag() -> None:
    with pytest.raises(ConfigError) as e:
        build_config(
            overrides=[
                "train.lr=abc",
                "train.colour=red",
                "adapter.method=prefix",
                "data.val_split=0.2",
                "data.val=[v.jsonl]",
            ]
        )
    text = str(e.value)
    assert "train.lr (--lr): Input should be a valid number" in text
    assert "train.colour: unknown key" in text
    assert "adapter.method" in text and "data.val (--val-data) or data.val_split" in text


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
