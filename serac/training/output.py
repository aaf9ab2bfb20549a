"""Assembling a SERAC folder: train the requested parts into it and write ``serac_config.json``.

A SERAC folder is what ``EditableModel.save_pretrained`` writes and ``EditableModel.from_pretrained`` reads:
the scope classifier, the counterfactual model, the edit store and the config naming the base model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serac import offline
from serac.counterfactual import COUNTERFACTUAL_CONFIG_NAME, CounterfactualModel
from serac.data import EditExample
from serac.folder import CONFIG_NAME, COUNTERFACTUAL_FOLDER, SCOPE_FOLDER, SeracConfig
from serac.scope import SCOPE_CONFIG_NAME
from serac.store import EditStoreConfig
from serac.training.arguments import PARTS, CounterfactualTrainingArguments, ScopeTrainingArguments
from serac.training.counterfactual import train_counterfactual_model
from serac.training.loop import data_fingerprint, finished_part, model_reference
from serac.training.scope import train_scope_classifier

logger = logging.getLogger(__name__)

__all__ = ["train_parts", "write_serac_config"]


def write_serac_config(
    output_dir: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    embedder_name_or_path: str | None = None,
) -> Path | None:
    """Write ``serac_config.json`` once both trained parts are in ``output_dir``.

    Returns the config's path, or ``None`` (with a warning) while a part is missing, since
    ``EditableModel.from_pretrained`` could not load the directory yet.
    """
    directory = Path(output_dir)
    missing = [
        folder
        for folder, marker in (
            (SCOPE_FOLDER, SCOPE_CONFIG_NAME),
            (COUNTERFACTUAL_FOLDER, COUNTERFACTUAL_CONFIG_NAME),
        )
        if not (directory / folder / marker).exists()
    ]
    if missing:
        logger.warning(
            "%s has no %s yet: train it before loading the directory", directory, " or ".join(missing)
        )
        return None
    config = SeracConfig(
        base_model_name_or_path=base_model_name_or_path,
        scope_classifier_path=SCOPE_FOLDER,
        counterfactual_model_path=COUNTERFACTUAL_FOLDER,
        store=EditStoreConfig(embedder_name_or_path=embedder_name_or_path),
    )
    # Written atomically: an interrupted run never leaves half a config behind.
    config.save_json(directory / CONFIG_NAME)
    return directory / CONFIG_NAME


def train_parts(
    output_dir: str | os.PathLike,
    examples: Sequence[EditExample],
    *,
    parts: Sequence[str] = PARTS,
    scope_arguments: ScopeTrainingArguments | None = None,
    counterfactual_arguments: CounterfactualTrainingArguments | None = None,
    base_model_name_or_path: str | None = None,
    counterfactual_model_name_or_path: str | os.PathLike | CounterfactualModel | None = None,
    eval_examples: Sequence[EditExample] | None = None,
    embedder: Any | None = None,
) -> Path | None:
    """Train the requested parts into a SERAC folder that ``EditableModel.from_pretrained`` loads.

    The scope classifier goes to ``output_dir/scope_classifier``, the counterfactual model to
    ``output_dir/counterfactual_model``, and ``serac_config.json`` is written once both are there (a part
    trained by an earlier run is kept). A part whose training report shows the same arguments, data and
    starting model is not trained again, so re-running an interrupted pipeline only redoes what is missing
    (and a part stopped part-way resumes from its checkpoint). ``base_model_name_or_path`` is recorded as the base model the folder
    is for (default: the default base model, or the one an earlier run recorded); the counterfactual model
    starts from ``counterfactual_model_name_or_path`` (default: the base model).

    Returns:
        The path of ``serac_config.json``, or ``None`` while a part is still missing.

    Example:
        >>> from serac.data import generate_synthetic_examples
        >>> train_parts("my-serac-folder", generate_synthetic_examples(2000))  # doctest: +SKIP
        >>> EditableModel.from_pretrained(base_model, "my-serac-folder")  # doctest: +SKIP
    """
    parts = [parts] if isinstance(parts, str) else list(parts)
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be some of {PARTS}, got {parts}")
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    scope_arguments = scope_arguments if scope_arguments is not None else ScopeTrainingArguments()
    base = base_model_name_or_path
    if base is None and (directory / CONFIG_NAME).exists():
        base = SeracConfig.load_json(directory / CONFIG_NAME).base_model_name_or_path
    counterfactual_arguments = (
        counterfactual_arguments
        if counterfactual_arguments is not None
        else CounterfactualTrainingArguments()
    )
    fingerprint = data_fingerprint(examples, eval_examples)
    if "scope" in parts:
        start = scope_arguments.cross_encoder_name_or_path or offline.resolve_embedder()
        if finished_part(directory / SCOPE_FOLDER, scope_arguments, fingerprint, str(start)):
            logger.info(
                "%s already holds this scope classifier; not training it again", directory / SCOPE_FOLDER
            )
        else:
            train_scope_classifier(
                examples,
                scope_arguments,
                directory / SCOPE_FOLDER,
                eval_examples=eval_examples,
                embedder=embedder,
            )
    if "counterfactual" in parts:
        start = counterfactual_model_name_or_path
        if start is None:
            # The default base model is a GGUF file converted once to a local checkpoint: use and record that path.
            start = offline.resolve_base_model(base_model_name_or_path)
            if base_model_name_or_path in (None, offline.DEFAULT_BASE_MODEL):
                base = start
        part_dir = directory / COUNTERFACTUAL_FOLDER
        if finished_part(part_dir, counterfactual_arguments, fingerprint, model_reference(start)):
            logger.info("%s already holds this counterfactual model; not training it again", part_dir)
        else:
            train_counterfactual_model(
                examples, counterfactual_arguments, start, part_dir, eval_examples=eval_examples
            )
    return write_serac_config(
        directory, base or offline.DEFAULT_BASE_MODEL, scope_arguments.embedder_name_or_path
    )
