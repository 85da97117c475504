"""The machine a benchmark figure was measured on: CPU model, cores and the instruction sets
that decide bf16 and int8 speed. Every bench prints it with its table."""

from __future__ import annotations

import os
from pathlib import Path

FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def machine() -> str:
    """``"AMD EPYC, 2 cores, flags: avx2 avx512f avx512_bf16"``."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = info.splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    found = " ".join(f for f in FLAGS if f in flags) or "none of " + " ".join(FLAGS)
    return f"{name}, {os.cpu_count()} cores, flags: {found}"
