"""The recipe of the default trained parts that ``EditableModel.from_defaults`` uses.

The scope classifier is all-MiniLM-L6-v2 fine-tuned as a cross-encoder; the counterfactual model is
SmolLM2-135M-Instruct fine-tuned to answer a query given an edit (see the README for why). Both are trained
once from the embedded synthetic data and cached under :func:`serac.offline.cache_dir`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from serac.data import EditExample, SyntheticDataConfig, generate_synthetic_examples
from serac.durable_folder import fsync_tree, replace_folder
from serac.folder import CONFIG_NAME, SeracConfig
from serac.offline import DEFAULT_BASE_MODEL, MissingDefaultModelError, cache_dir
from serac.training.arguments import CounterfactualTrainingArguments, ScopeTrainingArguments
from serac.training.output import train_parts

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PARTS_VERSION",
    "DEFAULT_TRAINING_SEED",
    "default_parts_dir",
    "default_training_examples",
    "train_default_parts",
]

#: Bump when the default training recipe changes, so caches of an older recipe are not reused.
DEFAULT_PARTS_VERSION = 4
DEFAULT_SYNTHETIC_EDITS = 3000
DEFAULT_SCOPE_STEPS = 800
DEFAULT_COUNTERFACTUAL_STEPS = 120
#: Small batches: a SmolLM2 step costs about 2 s per 8 rows on two CPU cores, and copying the edit's answer
#: is learnt from a few hundred rows.
DEFAULT_COUNTERFACTUAL_BATCH_SIZE = 8
DEFAULT_COUNTERFACTUAL_LEARNING_RATE = 1e-4
#: The seed of the synthetic data and of both trainings.
DEFAULT_TRAINING_SEED = 0


def default_training_examples(
    num_edits: int = DEFAULT_SYNTHETIC_EDITS, seed: int = DEFAULT_TRAINING_SEED
) -> list[EditExample]:
    """The synthetic edits the default parts are trained on."""
    # Four questions per edit about other relations of its subject: with the subject match, those are the
    # out-of-scope queries that reach the classifier.
    return generate_synthetic_examples(
        num_edits, seed=seed, config=SyntheticDataConfig(same_subject_other_relation=4)
    )


def default_parts_dir(*, train_if_missing: bool = True) -> Path:
    """The SERAC folder of the default trained scope classifier and counterfactual model.

    If the cache does not hold them yet and ``train_if_missing`` is true, they are trained from the embedded
    synthetic data (:func:`train_default_parts`) and cached; otherwise :class:`MissingDefaultModelError`.
    """
    target = cache_dir() / "parts" / f"default-v{DEFAULT_PARTS_VERSION}"
    if (target / CONFIG_NAME).exists():
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
    seed: int = DEFAULT_TRAINING_SEED,
) -> Path:
    """Train the default parts from synthetic data and write them as a SERAC folder.

    Training happens in a staging folder next to ``output_dir`` with resumable checkpoints; the finished
    folder is renamed into place, so an interrupted run never leaves a folder that looks complete.
    """
    output_dir = Path(output_dir)
    # A fixed staging name (not a random one) lets an interrupted run resume: a part already trained with
    # the same arguments and data is kept, and a part stopped half-way resumes from its checkpoint.
    staging = output_dir.parent / f".{output_dir.name}.training"
    staging.mkdir(parents=True, exist_ok=True)
    logger.info("Training the default scope classifier and counterfactual model into %s", output_dir)
    examples = default_training_examples(num_edits, seed)
    train_parts(
        staging,
        examples,
        scope_arguments=ScopeTrainingArguments(
            max_steps=scope_steps,
            seed=seed,
            mined_negatives_per_edit=4,
            hard_negative_fraction=0.6,
        ),
        counterfactual_arguments=CounterfactualTrainingArguments(
            max_steps=counterfactual_steps,
            batch_size=DEFAULT_COUNTERFACTUAL_BATCH_SIZE,
            learning_rate=DEFAULT_COUNTERFACTUAL_LEARNING_RATE,
            seed=seed,
            # Answers in the base model's voice: a question gets a sentence that ends with the new answer,
            # so readers of a generation need room for the sentence (the benchmark generates 32 tokens).
            answer_style="voice",
        ),
        base_model_name_or_path=DEFAULT_BASE_MODEL,
    )
    # Record the base model by its default name, not by the cache path it was converted to.
    SeracConfig(base_model_name_or_path=DEFAULT_BASE_MODEL).save_json(staging / CONFIG_NAME)
    fsync_tree(staging)
    replace_folder(staging, output_dir.absolute())
    return output_dir
