"""GGUF files through llama.cpp's own tools: its converter, its quantizer, its metadata.

Nothing here writes GGUF by hand. ``scripts/install-llama-cpp.sh`` (run by ``make setup``)
builds llama-cpp-python from its PyPI sdist and copies the sdist's
``convert_hf_to_gguf.py``, with the ``gguf-py`` it was written against, to
``$VENV/share/chattune/llama.cpp/``: the converter and the library that loads its output
come from the same llama.cpp commit. Quantization is ``llama_model_quantize`` from that
library (what the ``llama-quantize`` binary calls).

Both tools run in a child process: a crash in native code, or the converter's own
``sys.exit``, fails the export with its message instead of taking the caller down.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal

from chattune.errors import ModelError

log = logging.getLogger(__name__)

#: What ``chattune export --quant`` offers. The float types come straight from the
#: converter; the others are quantized from a float32 conversion by llama.cpp.
Quant = Literal["f32", "f16", "bf16", "q8_0", "q4_k_m"]
CONVERTER_TYPES = ("f32", "f16", "bf16")
#: llama.cpp's ``enum llama_ftype`` values of the quantized types.
FTYPES = {"q8_0": 7, "q4_k_m": 15}

_INSTALL = "run scripts/install-llama-cpp.sh .venv (make setup does)"


def converter_path() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` installed beside this environment."""
    override = os.environ.get("CHATTUNE_GGUF_CONVERTER")
    path = Path(override) if override else Path(sys.prefix) / "share/chattune/llama.cpp"
    script = path if path.suffix == ".py" else path / "convert_hf_to_gguf.py"
    if not script.exists():
        raise ModelError(f"llama.cpp's GGUF converter is not installed ({script}); {_INSTALL}")
    return script


def _run(args: list[str], what: str, timeout: float = 3600) -> None:
    """Run a tool in a child process; its last lines become the error if it fails."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        raise ModelError(f"{what} failed ({how}):\n{tail}")


def convert(folder: Path, output: Path, outtype: str, name: str) -> None:
    """Convert a Hugging Face folder to one GGUF file of ``outtype`` (f32, f16, bf16)."""
    args = [sys.executable, str(converter_path()), str(folder), "--outtype", outtype,
            "--outfile", str(output), "--model-name", name]  # fmt: skip
    _run(args, f"llama.cpp's converter on {folder}")


def quantize(source: Path, output: Path, quant: str, threads: int = 0) -> None:
    """Quantize a float GGUF file with llama.cpp's quantizer (in a child process)."""
    args = [sys.executable, "-m", "chattune.model.gguf", str(source), str(output), quant,
            str(threads)]  # fmt: skip
    _run(args, f"llama.cpp's quantizer ({quant})")


def write_gguf(folder: Path, output: Path, quant: Quant, name: str) -> Path:
    """``folder`` (Hugging Face) -> ``output`` (GGUF of ``quant``), written atomically."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=output.parent) as tmp:
        staged = Path(tmp) / output.name
        if quant in CONVERTER_TYPES:
            convert(folder, staged, quant, name)
        else:
            floats = Path(tmp) / "f32.gguf"
            convert(folder, floats, "f32", name)
            quantize(floats, staged, quant)
        os.replace(staged, output)
    return output


def read_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """Scalar metadata of a GGUF file (``general.architecture``, ``llama.context_length``,
    ...), read with the ``gguf`` package without loading any tensor."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(path).fields
    except (ValueError, OSError) as e:
        raise ModelError(f"{path}: not a readable GGUF file: {e}") from None
    out: dict[str, Any] = {}
    for key in keys:
        if key in fields:
            out[key] = fields[key].contents()
    return out


def context_length(path: Path) -> int | None:
    """The context the model in a GGUF file was trained with (``<arch>.context_length``)."""
    arch = read_metadata(path, ("general.architecture",)).get("general.architecture")
    key = f"{arch}.context_length"
    value = read_metadata(path, (key,)).get(key)
    return int(value) if value is not None else None


def _quantize_main(argv: list[str]) -> int:
    """``python -m chattune.model.gguf SOURCE OUTPUT QUANT THREADS`` (run by :func:`quantize`)."""
    import llama_cpp

    source, output, quant, threads = argv
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[quant]
    params.nthread = int(threads)
    code = llama_cpp.llama_model_quantize(source.encode(), output.encode(), params)
    if code != 0:
        print(f"llama_model_quantize returned {code}", file=sys.stderr)
    return 1 if code != 0 else 0


__all__ = ["Quant", "context_length", "convert", "quantize", "read_metadata", "write_gguf"]

if __name__ == "__main__":
    sys.exit(_quantize_main(sys.argv[1:]))
