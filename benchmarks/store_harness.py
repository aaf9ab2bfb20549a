"""What the store-durability study's sections share: a cheap deterministic embedder, forked child
processes reporting through a pipe, and a tiny SERAC editor built from configs.

The tiny models come from ``tests/conftest.py``, so the repository root must be on ``sys.path``
(``store_durability.py`` puts it there).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from serac.store import EditStore


class TokenEmbedder:
    """Deterministic sentence vectors: the sum of a fixed random vector per word (distinct word sets give
    clearly distinct vectors). Cheap enough that a killed writer spends its time in the store."""

    def __init__(self, dimension: int = 64) -> None:
        self.dimension = dimension
        self._cache: dict[str, np.ndarray] = {}

    def _word(self, word: str) -> np.ndarray:
        vector = self._cache.get(word)
        if vector is None:
            vector = np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dimension)
            self._cache[word] = vector.astype(np.float32)
            vector = self._cache[word]
        return vector

    def encode(self, texts, **kwargs):
        import re

        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                vectors[row] += self._word(word)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_child(target, *args) -> tuple[int, int]:
    """Fork a child running ``target(*args, write_fd)``; returns (pid, read fd)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            target(*args, write_fd)
        except BaseException:  # pragma: no cover - reported through the exit code
            import traceback

            traceback.print_exc()
            os._exit(3)
        os._exit(0)
    os.close(write_fd)
    return pid, read_fd


def collect(pid: int, read_fd: int) -> str:
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"worker {pid} exited with status {status}")
    return text


def editor_parts():
    import torch

    from serac.counterfactual import CounterfactualModel
    from tests.conftest import make_char_tokenizer, make_tiny_llama, make_tiny_t5

    torch.set_num_threads(1)
    tokenizer = make_char_tokenizer()
    return (
        tokenizer,
        make_tiny_llama(tokenizer),
        CounterfactualModel(make_tiny_t5(tokenizer, seed=2), tokenizer),
    )


def make_editor(parts, folder: Path):
    from serac.modeling import EditableModel
    from serac.scope import EmbeddingScopeClassifier, ScopeClassifierConfig

    tokenizer, base, counterfactual = parts
    if (folder / "serac_config.json").exists():
        return EditableModel.from_pretrained(base, folder, tokenizer=tokenizer, embedder=TokenEmbedder())
    scope = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.8, top_k=2))
    return EditableModel(
        base,
        tokenizer,
        scope_classifier=scope,
        counterfactual_model=counterfactual,
        store=EditStore(TokenEmbedder()),
    )
