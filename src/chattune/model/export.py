"""``chattune export``: a tuned bot as files other engines load as they are.

* ``merged``: the adapter (LoRA, AdaLoRA, IA3) folded into its base with peft's
  ``merge_and_unload``, saved as a plain Hugging Face folder: safetensors weights, config,
  the tokenizer with its chat template, and a ``generation_config.json`` listing every
  end-of-turn id, so transformers and vLLM stop where chattune stops.
* ``gguf``: that folder converted by llama.cpp's own converter (and quantizer), one file
  that llama.cpp, llama-cpp-python and Ollama load, carrying the chat template and the
  end-of-turn tokens; an Ollama ``Modelfile`` is written beside it.

Example:
    >>> export_model("runs/mybot", "gguf", Path("mybot.gguf"), quant="q8_0")  # doctest: +SKIP
    PosixPath('mybot.gguf')
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

from chattune.errors import ModelError
from chattune.model.gguf import Quant, write_gguf
from chattune.model.loading import load_model, resolve, save_folder

log = logging.getLogger(__name__)

Format = Literal["merged", "gguf"]
Dtype = Literal["float32", "bfloat16", "float16"]

#: Ollama's template for ChatML (what SmolLM2, Qwen and the test tokenizer use). Ollama
#: reads Go templates, not the Jinja one in the GGUF, so only a template we can verify
#: (see :func:`_is_chatml`) is written out; for others Ollama uses its own detection.
CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


def merge(spec: str, output: Path, dtype: Dtype = "float32") -> Path:
    """Write ``spec`` (a run folder, Hugging Face folder, GGUF or embedded model) as a plain
    Hugging Face folder with any adapter merged in. Written to a temporary folder and
    renamed, so a failed export never leaves a half-written folder behind."""
    import torch

    from chattune.model.generation import end_of_turn_ids

    if output.exists():
        raise ModelError(f"{output}: already exists; remove it or choose another --output")
    model, tokenizer = load_model(spec)
    if hasattr(model, "merge_and_unload"):  # a peft model: fold the adapter in
        model = model.merge_and_unload()
    model = model.to(getattr(torch, dtype))
    ends = end_of_turn_ids(tokenizer, model.generation_config.eos_token_id)
    model.generation_config.eos_token_id = ends if len(ends) > 1 else ends[0]
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_folder(output, model, tokenizer)
    log.info("merged %s into %s (end-of-turn ids %s)", spec, output, ends)
    return output


def export_model(
    spec: str,
    fmt: Format,
    output: Path,
    quant: Quant = "q8_0",
    dtype: Dtype = "float32",
    profile: Any = None,
) -> Path:
    """Export ``spec`` as a merged folder or a GGUF file (with an Ollama Modelfile)."""
    resolve(spec)  # a bad model fails before anything is written
    if profile is not None:
        _modelfile_system(profile)  # so does a profile the Modelfile cannot hold
    if fmt == "merged":
        return merge(spec, output, dtype)
    if output.suffix != ".gguf":
        raise ModelError(f"--output {output}: a GGUF export is one file; name it *.gguf")
    if output.exists():
        raise ModelError(f"{output}: already exists; remove it or choose another --output")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".merged-", dir=output.parent) as tmp:
        folder = merge(spec, Path(tmp) / "merged")
        write_gguf(folder, output, quant, name=output.stem)
        write_modelfile(folder, output, profile)
    return output


def modelfile_path(gguf: Path) -> Path:
    return gguf.with_suffix(".Modelfile")


def write_modelfile(folder: Path, gguf: Path, profile: Any = None) -> Path:
    """An Ollama Modelfile beside ``gguf``: ``ollama create NAME -f NAME.Modelfile``.

    It stops on every end-of-turn token, carries the chat template where it is ChatML,
    and, given a bot profile, its system prompt and generation defaults.
    """
    from chattune.model.loading import load_tokenizer

    tokenizer = load_tokenizer(folder)
    config = json.loads((folder / "generation_config.json").read_text())
    ends = config.get("eos_token_id")
    ends = ends if isinstance(ends, list) else [ends]
    lines = [f"FROM ./{gguf.name}"]
    if _is_chatml(tokenizer):
        lines.append(f'TEMPLATE """{CHATML_TEMPLATE}"""')
    for token in dict.fromkeys(tokenizer.convert_ids_to_tokens(ends)):
        lines.append(f"PARAMETER stop {json.dumps(token)}")
    if profile is not None:
        system = _modelfile_system(profile)
        if system is not None:
            lines.append(f'SYSTEM """{system}"""')
        g = profile.generation
        temperature = g.temperature if g.do_sample else 0
        lines += [f"PARAMETER temperature {temperature}", f"PARAMETER top_p {g.top_p}",
                  f"PARAMETER top_k {g.top_k}", f"PARAMETER repeat_penalty {g.repetition_penalty}",
                  f"PARAMETER num_predict {g.max_new_tokens}"]  # fmt: skip
    path = modelfile_path(gguf)
    path.write_text("\n".join(lines) + "\n")
    return path


def _modelfile_system(profile: Any) -> str | None:
    """The profile's system turn for the Modelfile's triple-quoted ``SYSTEM``, which has no
    escapes: a prompt holding three double quotes is refused."""
    system = profile.system_message()
    if system is not None and '"""' in system.content:
        raise ModelError('--profile: a system prompt holding """ cannot go in a Modelfile')
    return system.content if system is not None else None


def _is_chatml(tokenizer: Any) -> bool:
    """Whether the tokenizer's template renders a probe conversation exactly as ChatML."""
    from chattune.data.render import render
    from chattune.data.types import Message

    probe = [Message("system", "S"), Message("user", "U"), Message("assistant", "A")]
    expected = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in probe)
    try:
        return render(tokenizer, probe) == expected
    except Exception:  # a template that cannot render the probe is not ChatML
        return False


def cached_gguf(spec: str, quant: Quant = "q8_0") -> Path:
    """A GGUF file for ``spec``: the file itself for a GGUF or embedded model, else an
    export made once and cached (``$CHATTUNE_CACHE/exports``), keyed by the folder's files,
    so ``--backend llama.cpp`` works on a run folder directly."""
    import hashlib

    from chattune.model.loading import cache_dir

    kind, path = resolve(spec)
    if kind in ("gguf", "embedded"):
        return path
    digest = hashlib.sha256(quant.encode())
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        stat = f.stat()
        digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    if kind == "adapter":
        from chattune.model.loading import _adapter_base

        digest.update(_adapter_base(path).encode())
    target = cache_dir() / "exports" / f"{path.name}-{digest.hexdigest()[:16]}-{quant}.gguf"
    if not target.exists():
        log.info("exporting %s to %s (once; cached)", spec, target)
        export_model(spec, "gguf", target, quant)
    return target
