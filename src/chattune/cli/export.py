"""``chattune export``: a tuned bot as a merged Hugging Face folder or a GGUF file.

The merged folder loads in transformers and vLLM as it is; the GGUF file in llama.cpp,
llama-cpp-python (``chattune chat --model bot.gguf``) and Ollama (a Modelfile is written
beside it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from chattune.cli.command import Command
from chattune.config import FieldProblem, Section
from chattune.model.export import Dtype
from chattune.model.gguf import Quant


class ExportConfig(Section):
    """``chattune export``: which model, to which format, where."""

    model: str = Field(min_length=1, description="chattune run folder, HF folder or model name")
    format: Literal["merged", "gguf"] = Field(
        "gguf", description="merged: a Hugging Face folder; gguf: one llama.cpp file"
    )
    quant: Quant = Field("q8_0", description="gguf: f32, f16, bf16, q8_0 or q4_k_m")
    dtype: Dtype = Field("float32", description="merged: the weights' dtype")
    output: str = Field(min_length=1, description="the folder (merged) or .gguf file")
    profile: str | None = Field(
        None, description="gguf: put this bot profile's system prompt and sampling in the Modelfile"
    )

    @model_validator(mode="after")
    def _gguf_is_a_file(self) -> ExportConfig:
        if self.format == "gguf" and not self.output.endswith(".gguf"):
            raise FieldProblem("output", "a GGUF export is one file: name it *.gguf")
        return self


def cmd_export(cfg: ExportConfig) -> int:
    """Export a model (a tuned run: its adapter merged in) as a Hugging Face folder or a
    GGUF file for llama.cpp and Ollama."""
    from pathlib import Path

    from chattune.chat.profile import load_profile
    from chattune.model.export import export_model, modelfile_path
    from chattune.model.loading import quiet_transformers

    quiet_transformers()
    profile = load_profile(cfg.profile) if cfg.profile else None
    out = export_model(cfg.model, cfg.format, Path(cfg.output), cfg.quant, cfg.dtype, profile)
    print(f"wrote {out}")
    if cfg.format == "gguf":
        print(f"wrote {modelfile_path(out)} (ollama create NAME -f {modelfile_path(out)})")
    return 0


EXPORT = Command(
    "export",
    ExportConfig,
    {
        "--model": "model",
        "--format": "format",
        "--quant": "quant",
        "--dtype": "dtype",
        "--output": "output",
        "--profile": "profile",
    },
    cmd_export,
)
COMMANDS = [EXPORT]
