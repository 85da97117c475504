"""The training loop on a tiny random Llama: invariants, not just "it ran"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chattune.config import build_config
from chattune.data.batching import collate
from chattune.errors import ConfigError
from chattune.model.loading import load_model
from chattune.model.loss import LabelledLoss
from chattune.runs import read_meta, read_metrics
from chattune.train import TrainHooks, run_train
from chattune.train.loop import train_step
from chattune.train.setup import build_run
from tests.conftest import conversation, write_jsonl


def config(tiny_model_dir: Path, train: Path, out: Path, *overrides: str, val: Path | None = None):
    flags = {
        "model.base": str(tiny_model_dir),
        "data.train": [str(train)],
        "train.output": str(out),
        "train.progress": False,
    }
    if val:
        flags["data.val"] = [str(val)]
    return build_config(flags=flags, overrides=list(overrides))


def test_labelled_loss_matches_transformers_loss(tiny_model_dir, tokenizer, chat_files) -> None:
    """Computing the head only at labelled positions gives the model's own mean loss."""
    cfg = config(tiny_model_dir, chat_files[0], Path("unused"), "train.batch_size=4")
    run = build_run(cfg)
    batch = collate(run.data.train[:4], tokenizer.pad_token_id)
    model = run.model.get_base_model()
    expected = model(**batch).loss
    loss_sum, n = LabelledLoss(run.model)(**batch)
    torch.testing.assert_close(loss_sum / n, expected)
    assert n == (batch["labels"][:, 1:] != -100).sum()


@pytest.mark.parametrize(
    ("method", "optimizer"),
    [
        ("lora", "adamw"),
        ("lora", "sgd"),
        ("lora", "lamb"),
        ("adalora", "adamw"),
        ("ia3", "adamw"),
        ("freeze", "adamw"),
        ("full", "adamw"),
    ],
)
def test_every_trainable_parameter_changes(
    tiny_model_dir, chat_files, tmp_path, method: str, optimizer: str
) -> None:
    # LoRA's B starts at zero, so A only receives gradient from the second step on, and that
    # gradient is tiny: plain SGD needs a large rate for the update to show in float32.
    lr = 1.0 if optimizer == "sgd" else 1e-2
    cfg = config(
        tiny_model_dir,
        chat_files[0],
        tmp_path / "out",
        f"adapter.method={method}",
        f"train.optimizer={optimizer}",
        "train.max_steps=20",
        "train.batch_size=4",
        f"train.lr={lr}",
        "train.warmup_ratio=0",
        "adapter.train_layers=1",
    )
    run = build_run(cfg)
    before = {n: p.detach().clone() for n, p in run.model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in run.model.named_parameters() if not p.requires_grad}
    assert before, "nothing to train"
    for _ in range(2):
        train_step(run, [[0, 1, 2, 3]])
        run.state.step += 1
    after = dict(run.model.named_parameters())
    unchanged = [n for n, p in before.items() if torch.equal(p, after[n].detach())]
    assert unchanged == []
    assert all(torch.equal(p, after[n].detach()) for n, p in frozen.items())
    if method == "freeze":
        assert not any(".layers.0." in n for n in before)  # bottom block stays frozen
        assert any(".layers.1." in n for n in before)


def test_loss_falls_when_overfitting_four_examples(tiny_model_dir, tmp_path) -> None:
    data = write_jsonl(tmp_path / "four.jsonl", [conversation(i) for i in range(4)])
    cfg = config(
        tiny_model_dir,
        data,
        tmp_path / "out",
        "train.max_steps=40",
        "train.lr=3e-2",
        "train.batch_size=4",
        "adapter.method=full",
        "train.warmup_ratio=0",
    )
    run_train(cfg)
    losses = [m["loss"] for m in read_metrics(tmp_path / "out") if "loss" in m]
    assert len(losses) == 40
    assert losses[-1] < 0.3 * losses[0]


def test_gradient_accumulation_counts_steps_and_tokens(tiny_model_dir, chat_files, tmp_path):
    cfg = config(
        tiny_model_dir,
        chat_files[0],
        tmp_path / "out",
        "train.batch_size=2",
        "train.grad_accum=4",
        "train.epochs=2",
    )
    summary = run_train(cfg)
    assert summary["steps"] == 4  # 16 examples / (2 x 4) per step, two epochs
    epochs = [m["epoch"] for m in read_metrics(tmp_path / "out")]
    assert epochs == [0.5, 1.0, 1.5, 2.0]


def test_early_stopping_keeps_the_best_checkpoint(tiny_model_dir, chat_files, tmp_path) -> None:
    out = tmp_path / "out"
    # min_delta is unreachable, so only the first evaluation counts as a gain.
    cfg = config(
        tiny_model_dir,
        chat_files[0],
        out,
        "train.max_steps=50",
        "train.eval_every=1",
        "train.patience=2",
        "train.min_delta=100",
        "train.batch_size=4",
        "train.lr=1e-2",
        val=chat_files[1],
    )
    summary = run_train(cfg)
    assert summary["steps"] == 3 and summary["best_step"] == 1
    evals = [m for m in read_metrics(out) if "eval_loss" in m]
    assert [m["step"] for m in evals] == [1, 2, 3]
    assert summary["best_eval_loss"] == round(evals[0]["eval_loss"], 4)
    model, _ = load_model(str(out))  # the output holds the best (step 1) weights
    from safetensors.torch import load_file

    best = load_file(out / "checkpoints" / "best" / "trainable.safetensors")
    params = dict(model.named_parameters())
    assert best and all(torch.equal(params[n], t) for n, t in best.items())


@pytest.mark.parametrize("method", ["full", "freeze"])
def test_full_model_output_loads_and_generates(tiny_model_dir, chat_files, tmp_path, method):
    out = tmp_path / "out"
    run_train(
        config(tiny_model_dir, chat_files[0], out, f"adapter.method={method}", "train.max_steps=1")
    )
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    model, _ = load_model(str(out))
    ids = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False)
    assert ids.shape == (1, 6)


def test_continued_pretraining_on_raw_text(tiny_model_dir, tmp_path) -> None:
    doc = tmp_path / "manual.txt"
    doc.write_text("Pitch the Ridgeline tent in five minutes. " * 60)
    cfg = config(
        tiny_model_dir,
        doc,
        tmp_path / "out",
        "data.objective=lm",
        "data.block_size=64",
        "train.batch_size=2",
    )
    summary = run_train(cfg)
    assert summary["trained_tokens"] == summary["train_tokens"] > 0  # every token is a label
    assert summary["steps"] >= 2


def test_output_of_a_previous_run_is_not_overwritten(tiny_model_dir, chat_files, tmp_path):
    cfg = config(tiny_model_dir, chat_files[0], tmp_path / "out", "train.max_steps=1")
    run_train(cfg)
    with pytest.raises(ConfigError, match=r"already holds checkpoints.*--resume"):
        run_train(cfg)


def test_ctrl_c_checkpoints_the_step_then_resume_finishes(tiny_model_dir, chat_files, tmp_path):
    """First Ctrl+C: the step ends, a checkpoint is written, KeyboardInterrupt; --resume goes on."""
    import os
    import signal

    def ctrl_c_at_step_2(name: str, step: int) -> None:
        if (name, step) == ("step.after_update", 2):  # mid-step: the step must still finish
            os.kill(os.getpid(), signal.SIGINT)

    out, before = tmp_path / "out", signal.getsignal(signal.SIGINT)
    settings = ("train.max_steps=4", "train.batch_size=4")
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved at step 2"):
        run_train(
            config(tiny_model_dir, chat_files[0], out, *settings),
            TrainHooks(point=ctrl_c_at_step_2),
        )
    assert signal.getsignal(signal.SIGINT) is before  # the run's handler is gone
    assert [p.name for p in (out / "checkpoints").glob("step-*")] == ["step-0000002"]
    summary = run_train(config(tiny_model_dir, chat_files[0], out, *settings, "train.resume=true"))
    assert summary["steps"] == 4
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4]


def test_adalora_needs_enough_steps(tiny_model_dir, chat_files, tmp_path) -> None:
    cfg = config(
        tiny_model_dir, chat_files[0], tmp_path / "o", "adapter.method=adalora", "train.max_steps=2"
    )
    with pytest.raises(ConfigError, match="adalora needs more than"):
        build_run(cfg)


def test_model_card_and_metadata(tiny_model_dir, chat_files, tmp_path) -> None:
    out = tmp_path / "out"
    run_train(config(tiny_model_dir, chat_files[0], out, "train.max_steps=2", val=chat_files[1]))
    meta = read_meta(out)
    assert meta == json.loads((out / "chattune.json").read_text())
    assert meta["base"] == str(tiny_model_dir) and meta["method"] == "lora"
    card = (out / "README.md").read_text()
    assert f"`{tiny_model_dir}`" in card and "best_eval_loss" in card


def test_on_evaluate_metrics_join_each_evaluation_record(tiny_model_dir, chat_files, tmp_path):
    """The loop calls the caller's hook after each evaluation, in eval mode, on the step."""
    calls: list[tuple[int, bool]] = []

    def on_evaluate(model, tokenizer, step: int) -> dict[str, float]:
        calls.append((step, model.training))
        return {"eval_answer_len": float(step)}

    out = tmp_path / "out"
    cfg = config(
        tiny_model_dir, chat_files[0], out, "train.max_steps=4", "train.eval_every=2",
        val=chat_files[1],
    )  # fmt: skip
    run_train(cfg, TrainHooks(on_evaluate=on_evaluate))
    assert calls == [(2, False), (4, False)]  # the final evaluation is step 4's, not a third
    evals = [m for m in read_metrics(out) if "eval_loss" in m]
    assert [(m["step"], m["eval_answer_len"]) for m in evals] == [(2, 2.0), (4, 4.0)]
    train_records = [m for m in read_metrics(out) if "loss" in m]
    assert len(train_records) == 4  # training went on in train mode after the hook


def test_eval_generate_hook_logs_generation_metrics(tiny_model_dir, chat_files, tmp_path):
    """``--eval-generate N``: evaluate builds the hook, train only calls it (as the CLI does)."""
    from chattune.evaluate.during_training import eval_generate_callback

    out = tmp_path / "out"
    cfg = config(
        tiny_model_dir, chat_files[0], out, "train.max_steps=2", "train.eval_every=2",
        "train.eval_generate=3", val=chat_files[1],
    )  # fmt: skip
    run_train(cfg, TrainHooks(on_evaluate=eval_generate_callback(cfg)))
    (evaluation,) = [m for m in read_metrics(out) if "eval_loss" in m]
    assert {"eval_bleu", "eval_rouge_l", "eval_f1", "eval_distinct_2"} <= set(evaluation)


def test_generation_hook_scores_the_conversations_training_held_out(chat_files) -> None:
    """With --val-split, replies are generated for the held-out share, never training data."""
    from chattune.evaluate.during_training import validation_conversations
    from chattune.train.setup import read_items

    for split in ("data.val_split=0.25", None):
        extra = [split] if split else []
        val = [str(chat_files[1])] if not split else []
        cfg = build_config(
            flags={"data.train": [str(chat_files[0])], "data.val": val}, overrides=extra
        )
        held_out = read_items(cfg)[1]
        assert held_out and validation_conversations(cfg) == held_out


def test_model_without_chat_template_gets_the_default(tmp_path, chat_files) -> None:
    """A GPT-2 style base model (no chat template, Conv1D layers, `h`/`ln_f` blocks)."""
    import shutil

    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import TOKENIZER_DIR

    folder = tmp_path / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=384,
            n_embd=32,
            n_layer=2,
            n_head=2,
            n_positions=256,
            bos_token_id=1,
            eos_token_id=2,
        )
    ).save_pretrained(folder)
    for f in TOKENIZER_DIR.iterdir():
        if f.name != "chat_template.jinja":
            shutil.copy(f, folder / f.name)
    for method in ("lora", "freeze"):
        out = tmp_path / method
        summary = run_train(
            config(
                folder,
                chat_files[0],
                out,
                f"adapter.method={method}",
                "adapter.train_layers=1",
                "train.max_steps=2",
            )
        )
        assert summary["steps"] == 2
        template = (out / "chat_template.jinja").read_text()
        assert "<|assistant|>" in template and "eos_token" in template


def test_auto_precision_is_bf16_only_where_it_is_native(monkeypatch) -> None:
    """oneDNN's check says yes on AVX-512 CPUs that emulate bf16 (10x slow): auto must ask
    for AVX512_BF16 / AMX instead, and on CUDA for bf16 without emulation."""
    from chattune.train.setup import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for avx512_bf16, amx, expected in [(False, False, "no"), (True, False, "bf16"),
                                       (False, True, "bf16")]:  # fmt: skip
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert resolve_precision("auto") == expected
    assert resolve_precision("bf16") == "bf16" and resolve_precision("fp32") == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # a GPU that only emulates bf16 (pre-Ampere): supported with emulation, not natively
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert resolve_precision("auto") == "no"


def test_frozen_weights_in_bf16_keep_the_trained_ones_in_float32(tiny_model_dir) -> None:
    from chattune.config import AdapterConfig
    from chattune.model.adapters import prepare
    from chattune.model.loading import load_base
    from chattune.model.loss import LabelledLoss
    from chattune.train.setup import frozen_weights_in_bf16

    model, _ = load_base(str(tiny_model_dir))
    prepared = prepare(model, AdapterConfig(), total_steps=1)
    assert frozen_weights_in_bf16(prepared.model) > 0
    dtypes = {(p.requires_grad, p.dtype) for p in prepared.model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    ids = torch.tensor([[1, 5, 6, 7, 2]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, n = LabelledLoss(prepared.model)(ids, torch.ones_like(ids), ids)
    loss.backward()
    assert torch.isfinite(loss) and n == 4
    grads = [p.grad for p in prepared.model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
