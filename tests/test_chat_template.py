"""``data.chat_template``: a template of one's own, checked, trained with and saved."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from chattune.data.render import (
    apply_chat_template_override,
    encode_conversation,
    generation_prompt_ids,
    read_chat_template,
)
from chattune.errors import ConfigError, DataError
from chattune.model.loading import load_model, load_tokenizer
from chattune.train import run_train
from tests.test_render import CONV, trained_spans
from tests.test_train import config

#: Prefix-stable, and unlike the tiny tokenizer's own ChatML (no default system turn).
SAYS = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + ' says:\n' + m['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant says:\n' }}{% endif %}"
)


@pytest.fixture
def bare(tokenizer):
    """The tiny tokenizer without any chat template."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    return tok


def test_inline_template_on_a_tokenizer_without_one_renders_and_masks(bare) -> None:
    apply_chat_template_override(bare, SAYS)
    enc = encode_conversation(CONV, bare, 512)
    assert bare.decode(enc.input_ids).startswith(
        "<|im_start|>system says:\nBe brief.<|im_end|>\n<|im_start|>user says:\nHello!"
    )
    assert trained_spans(bare, enc) == [
        "Hi! How can I help?<|im_end|>\n",
        "Over $60, yes.<|im_end|>\n",
    ]
    prompt = bare.decode(generation_prompt_ids(bare, CONV.messages[:2]))
    assert prompt.endswith("<|im_start|>assistant says:\n")


@pytest.mark.parametrize("name", ["says.jinja", "says.j2", "says.txt"])
def test_template_from_a_file(bare, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(SAYS + "\n")  # editors end files with a newline; Jinja drops it
    apply_chat_template_override(bare, str(path))
    assert bare.chat_template == SAYS + "\n"
    enc = encode_conversation(CONV, bare, 512)
    assert trained_spans(bare, enc)[-1] == "Over $60, yes.<|im_end|>\n"


def test_no_override_keeps_the_tokenizers_template(tokenizer) -> None:
    tok = copy.deepcopy(tokenizer)
    apply_chat_template_override(tok, None)
    assert tok.chat_template == tokenizer.chat_template


def test_missing_file_names_the_field_and_the_path(bare, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jinja"
    with pytest.raises(ConfigError, match=r"data.chat_template: no such file '.*nope\.jinja'"):
        apply_chat_template_override(bare, str(missing))
    with pytest.raises(ConfigError, match="cannot read template file"):
        read_chat_template(str(tmp_path))  # a folder


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for m in messages %}{{ m['content'] }}", r" line 1\): .*TemplateSyntaxError"),
        ("{{ raise_exception('no system turns') }}", r"\): .*TemplateError: no system turns"),
        ("{{ messages[0]['content'] + 1 }}", r"\): .*TypeError: can only concatenate"),
    ],
)
def test_bad_jinja_is_a_config_error_and_changes_nothing(tokenizer, template, message) -> None:
    tok = copy.deepcopy(tokenizer)
    with pytest.raises(ConfigError, match=r"data.chat_template \(inline template" + message):
        apply_chat_template_override(tok, template)
    assert tok.chat_template == tokenizer.chat_template


def test_template_that_is_not_prefix_stable_says_how_to_replace_it(bare) -> None:
    odd = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT >' }}{% endif %}"
    )
    apply_chat_template_override(bare, odd)  # it renders: only encoding can tell
    with pytest.raises(DataError, match=r"data\.chat_template=path/to/template\.jinja"):
        encode_conversation(CONV, bare, 512)


def test_saved_tokenizer_keeps_the_override(bare, tmp_path: Path) -> None:
    apply_chat_template_override(bare, SAYS)
    bare.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.chat_template == SAYS
    assert generation_prompt_ids(again, CONV.messages[:2]) == generation_prompt_ids(
        bare, CONV.messages[:2]
    )


def test_trained_model_serves_with_the_override(tiny_model_dir, chat_files, tmp_path) -> None:
    """``chattune train ... data.chat_template=FILE``: the output renders with FILE."""
    template = tmp_path / "says.jinja"
    template.write_text(SAYS)
    out = tmp_path / "out"
    cfg = config(
        tiny_model_dir, chat_files[0], out, f"data.chat_template={template}", "train.max_steps=1"
    )
    assert run_train(cfg)["steps"] == 1
    assert (out / "chat_template.jinja").read_text() == SAYS
    _, tok = load_model(str(out))
    assert tok.decode(generation_prompt_ids(tok, CONV.messages[:2])).endswith(
        "<|im_start|>assistant says:\n"
    )


def test_data_stats_counts_under_the_template_training_will_use(
    tiny_model_dir, tmp_path: Path, capsys
) -> None:
    from chattune.cli import main
    from tests.conftest import write_jsonl

    data = tmp_path / "d.jsonl"
    write_jsonl(data, [{"messages": [{"role": m.role, "content": m.content}
                                     for m in CONV.messages]}])  # fmt: skip
    args = ["data", "stats", str(data), "--base", str(tiny_model_dir)]
    assert main(args) == 0
    own = capsys.readouterr().out
    template = tmp_path / "says.jinja"
    template.write_text(SAYS)
    assert main([*args, "--chat-template", str(template)]) == 0
    says = capsys.readouterr().out
    assert own != says  # "says:" adds tokens to every turn
    assert main([*args, "--chat-template", str(tmp_path / "missing.jinja")]) != 0
    assert "data.chat_template: no such file" in capsys.readouterr().err
