"""Training of SERAC's two trained parts, and of the SERAC folder that holds them.

* :mod:`~serac.training.arguments`: the training settings (:class:`ScopeTrainingArguments`,
  :class:`CounterfactualTrainingArguments`);
* :mod:`~serac.training.loop`: what both trainings share (the split of edits, checkpoints, reports);
* :mod:`~serac.training.scope`: :func:`train_scope_classifier` and the choice of its thresholds;
* :mod:`~serac.training.counterfactual`: :func:`train_counterfactual_model`;
* :mod:`~serac.training.output`: :func:`train_parts`, both parts and ``serac_config.json`` in one folder;
* :mod:`~serac.training.recipe`: the default parts ``EditableModel.from_defaults`` uses;
* :mod:`~serac.training.cli`: the ``serac train`` command.

Both trainings run on the Hugging Face ``Trainer`` loop: progress bars, a seed, evaluation every
``eval_steps`` on held-out edits, and checkpoints every ``save_steps``. A run that stops part-way resumes
from its last checkpoint when started again with the same ``output_dir`` (``resume=True``). Checkpoints live
in ``output_dir/checkpoints`` and are removed once the trained part is saved, unless ``keep_checkpoints``.

Example:
    >>> from serac.data import generate_synthetic_examples
    >>> train_parts("my-serac-folder", generate_synthetic_examples(2000, seed=0))  # doctest: +SKIP
"""

from serac.training.arguments import PARTS, CounterfactualTrainingArguments, ScopeTrainingArguments
from serac.training.counterfactual import evaluate_counterfactual_model, train_counterfactual_model
from serac.training.loop import CHECKPOINT_FOLDER, TRAINING_REPORT_NAME, data_fingerprint, split_examples
from serac.training.output import train_parts, write_serac_config
from serac.training.scope import (
    ThresholdChoice,
    choose_retrieval_threshold,
    choose_threshold,
    evaluate_scope_classifier,
    train_scope_classifier,
)

__all__ = [
    "CHECKPOINT_FOLDER",
    "PARTS",
    "TRAINING_REPORT_NAME",
    "CounterfactualTrainingArguments",
    "ScopeTrainingArguments",
    "ThresholdChoice",
    "choose_retrieval_threshold",
    "choose_threshold",
    "data_fingerprint",
    "evaluate_counterfactual_model",
    "evaluate_scope_classifier",
    "split_examples",
    "train_counterfactual_model",
    "train_parts",
    "train_scope_classifier",
    "write_serac_config",
]
