"""Training of SERAC's two trained parts: the scope classifier and the counterfactual model.

* :func:`train_scope_classifier` fine-tunes a cross-encoder (all-MiniLM-L6-v2 by default) on
  (edit text, query) pairs, in scope against easy and hard out-of-scope pairs, then picks the classifier's
  ``threshold`` and the embedding ``retrieval_threshold`` on held-out edits;
* :func:`train_counterfactual_model` teacher-forces any seq2seq or causal LM to answer in-scope queries
  given the edit: paraphrases, statement-form edits, yes/no questions and single-edit multi-hop questions.

Both run on the Hugging Face ``Trainer`` loop: progress bars, a seed, evaluation every ``eval_steps`` on
held-out edits, and checkpoints every ``save_steps``. A run that stops part-way resumes from its last
checkpoint when started again with the same ``output_dir`` (``resume=True``). Checkpoints live in
``output_dir/checkpoints`` and are removed once the trained part is saved, unless ``keep_checkpoints``.

Example:
    >>> from serac.data import generate_synthetic_examples
    >>> examples = generate_synthetic_examples(2000, seed=0)
    >>> scope = train_scope_classifier(examples, ScopeTrainingArguments(max_steps=500), "out/scope_classifier")  # doctest: +SKIP
    >>> counterfactual = train_counterfactual_model(
    ...     examples, CounterfactualTrainingArguments(max_steps=500), "google/flan-t5-small", "out/counterfactual_model"
    ... )  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serac.counterfactual import CounterfactualConfig, CounterfactualModel
from serac.data import (
    COUNTERFACTUAL_KINDS,
    IN_SCOPE_KINDS,
    EditExample,
    counterfactual_pairs,
    edits_from_column,
    mine_hard_negatives,
    scope_pairs,
)
from serac.scope import CrossEncoderScopeClassifier, ScopeClassifierConfig

logger = logging.getLogger(__name__)

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
    "train_editor",
    "train_scope_classifier",
    "write_editor_config",
]

#: Where checkpoints go, inside a training ``output_dir``.
CHECKPOINT_FOLDER = "checkpoints"
#: The JSON file (arguments, held-out metrics, loss history) written next to a trained part.
TRAINING_REPORT_NAME = "training_report.json"
#: The parts :func:`train_editor` can train.
PARTS = ("scope", "counterfactual")

THRESHOLD_STRATEGIES = ("f_beta", "false_positive_rate")
#: The ``scope_pairs`` column holding each ``ScopeClassifierConfig.edit_input`` view of the edit.
_EDIT_COLUMNS = {"query": "edit_query", "text": "edit_text"}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class _LoopArguments:
    """Settings shared by both trainings (the optimisation loop, evaluation, checkpoints)."""

    max_steps: int = field(default=-1, metadata=_help("optimizer steps; -1 trains for num_epochs instead"))
    num_epochs: float = field(
        default=1.0, metadata=_help("passes over the training pairs when max_steps is -1")
    )
    batch_size: int = field(default=32, metadata=_help("pairs per optimizer step (per device)"))
    gradient_accumulation_steps: int = field(
        default=1, metadata=_help("batches accumulated per optimizer step")
    )
    learning_rate: float = field(default=3e-5, metadata=_help("peak learning rate (AdamW, linear decay)"))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay"))
    warmup_ratio: float = field(
        default=0.1, metadata=_help("share of the steps spent warming up the learning rate")
    )
    validation_fraction: float = field(
        default=0.1, metadata=_help("share of the edits held out (when no eval_examples are given)")
    )
    eval_steps: int = field(
        default=200, metadata=_help("evaluate on held-out edits every this many steps; 0: never")
    )
    save_steps: int = field(default=200, metadata=_help("write a resumable checkpoint every this many steps"))
    save_total_limit: int = field(default=2, metadata=_help("checkpoints kept on disk"))
    logging_steps: int = field(default=25, metadata=_help("log the training loss every this many steps"))
    seed: int = field(
        default=0, metadata=_help("seeds data selection, the split, initialisation and shuffling")
    )
    resume: bool = field(
        default=True, metadata=_help("resume from the last checkpoint in output_dir if one exists")
    )
    keep_checkpoints: bool = field(default=False, metadata=_help("keep checkpoints after the part is saved"))
    show_progress: bool = field(default=True, metadata=_help("show progress bars"))
    use_cpu: bool = field(
        default=False, metadata=_help("train on the CPU even when an accelerator is available")
    )

    def __post_init__(self) -> None:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be a positive number of steps or -1, got {self.max_steps}")
        if self.max_steps == -1 and not self.num_epochs > 0:
            raise ValueError(f"num_epochs must be > 0, got {self.num_epochs}")
        for name in (
            "batch_size",
            "gradient_accumulation_steps",
            "save_steps",
            "save_total_limit",
            "logging_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_steps < 0:
            raise ValueError(f"eval_steps must be >= 0, got {self.eval_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("warmup_ratio", "validation_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }


@dataclass
class ScopeTrainingArguments(_LoopArguments):
    """Settings of :func:`train_scope_classifier`.

    Example:
        >>> ScopeTrainingArguments(max_steps=300, threshold_strategy="false_positive_rate").target_false_positive_rate
        0.02
    """

    cross_encoder_name_or_path: str | None = field(
        default=None,
        metadata=_help("starting cross-encoder or encoder (default: the packaged all-MiniLM-L6-v2)"),
    )
    embedder_name_or_path: str | None = field(
        default=None, metadata=_help("sentence embedder of the edit store (default: all-MiniLM-L6-v2)")
    )
    max_length: int = field(default=128, metadata=_help("token limit of an (edit text, query) pair"))
    edit_input: str = field(
        default="query",
        metadata=_help(
            "what the cross-encoder reads of an edit: 'query' (without its target) or 'text' (with it)"
        ),
    )
    negatives_per_positive: float = field(default=1.0, metadata=_help("out-of-scope pairs per in-scope pair"))
    hard_negative_fraction: float = field(default=0.5, metadata=_help("share of negatives that are hard"))
    max_positives_per_edit: int | None = field(default=None, metadata=_help("cap on in-scope pairs per edit"))
    statement_fraction: float = field(default=0.2, metadata=_help("share of edits shown in statement form"))
    mined_negatives_per_edit: int = field(
        default=2,
        metadata=_help("nearest other-edit queries (by embedding) added as hard negatives; 0: none"),
    )
    mining_candidates_per_edit: int = field(
        default=3,
        metadata=_help("queries of each edit embedded as mining candidates (bounds the mining cost)"),
    )
    threshold_strategy: str = field(
        default="f_beta",
        metadata=_help("'f_beta': threshold maximising F-beta on held-out pairs; 'false_positive_rate': the "
                       "lowest threshold whose held-out false-positive rate is at most target_false_positive_rate"),
    )  # fmt: skip
    beta: float = field(default=0.5, metadata=_help("F-beta weight of recall (< 1 favours precision)"))
    target_false_positive_rate: float = field(
        default=0.02, metadata=_help("for threshold_strategy false_positive_rate")
    )
    retrieval_quantile: float = field(
        default=0.01,
        metadata=_help("quantile of held-out in-scope cosine similarities the retrieval filter keeps"),
    )
    retrieval_margin: float = field(default=0.05, metadata=_help("safety margin below that quantile"))
    top_k: int = field(default=4, metadata=_help("candidate edits the saved classifier scores per query"))
    eval_batch_size: int = field(default=64, metadata=_help("pairs per batch when scoring held-out pairs"))
    learning_rate: float = field(default=3e-5, metadata=_help("peak learning rate (AdamW, linear decay)"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")
        if self.edit_input not in ScopeClassifierConfig.EDIT_INPUTS:
            raise ValueError(
                f"edit_input must be one of {ScopeClassifierConfig.EDIT_INPUTS}, got {self.edit_input!r}"
            )
        if self.negatives_per_positive < 0:
            raise ValueError(f"negatives_per_positive must be >= 0, got {self.negatives_per_positive}")
        for name in ("hard_negative_fraction", "statement_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_positives_per_edit is not None and self.max_positives_per_edit < 1:
            raise ValueError(
                f"max_positives_per_edit must be >= 1 or None, got {self.max_positives_per_edit}"
            )
        if self.mined_negatives_per_edit < 0:
            raise ValueError(f"mined_negatives_per_edit must be >= 0, got {self.mined_negatives_per_edit}")
        if self.mining_candidates_per_edit < 1:
            raise ValueError(
                f"mining_candidates_per_edit must be >= 1, got {self.mining_candidates_per_edit}"
            )
        if self.threshold_strategy not in THRESHOLD_STRATEGIES:
            raise ValueError(
                f"threshold_strategy must be one of {THRESHOLD_STRATEGIES}, got {self.threshold_strategy!r}"
            )
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.target_false_positive_rate < 1.0:
            raise ValueError(
                f"target_false_positive_rate must be in [0, 1), got {self.target_false_positive_rate}"
            )
        if not 0.0 <= self.retrieval_quantile < 1.0:
            raise ValueError(f"retrieval_quantile must be in [0, 1), got {self.retrieval_quantile}")
        if self.retrieval_margin < 0:
            raise ValueError(f"retrieval_margin must be >= 0, got {self.retrieval_margin}")
        if self.top_k < 1 or self.eval_batch_size < 1:
            raise ValueError("top_k and eval_batch_size must be >= 1")


@dataclass
class CounterfactualTrainingArguments(_LoopArguments):
    """Settings of :func:`train_counterfactual_model`.

    Example:
        >>> CounterfactualTrainingArguments(max_steps=200, batch_size=8).kinds
        ('edit', 'question', 'cloze', 'paraphrase', 'yes_no')
    """

    batch_size: int = field(default=16, metadata=_help("pairs per optimizer step (per device)"))
    learning_rate: float = field(default=5e-5, metadata=_help("peak learning rate (AdamW, linear decay)"))
    kinds: tuple[str, ...] = field(
        default=COUNTERFACTUAL_KINDS,
        metadata=_help("in-scope query kinds trained on (comma-separated on the CLI)"),
    )
    statement_fraction: float = field(default=0.25, metadata=_help("share of edits shown in statement form"))
    include_portability: bool = field(
        default=True, metadata=_help("train on single-edit multi-hop questions")
    )
    input_template: str | None = field(
        default=None, metadata=_help("input format with {edit} and {query} (default: the model's own)")
    )
    max_input_length: int | None = field(
        default=None, metadata=_help("token limit of the input (default: the model's)")
    )
    eval_generations: int = field(
        default=200,
        metadata=_help("held-out pairs answered with generate() after training to measure accuracy"),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.kinds = tuple(self.kinds.split(",")) if isinstance(self.kinds, str) else tuple(self.kinds)
        unknown = [kind for kind in self.kinds if kind not in IN_SCOPE_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be some of {IN_SCOPE_KINDS}, got {self.kinds}")
        if not 0.0 <= self.statement_fraction <= 1.0:
            raise ValueError(f"statement_fraction must be in [0, 1], got {self.statement_fraction}")
        if self.input_template is not None:
            CounterfactualConfig(input_template=self.input_template)  # validates the placeholders
        if self.max_input_length is not None and self.max_input_length < 8:
            raise ValueError(f"max_input_length must be >= 8, got {self.max_input_length}")
        if self.eval_generations < 0:
            raise ValueError(f"eval_generations must be >= 0, got {self.eval_generations}")


# --------------------------------------------------------------------------------------------- helpers


def _check_examples(examples: Sequence[EditExample], name: str = "examples") -> list[EditExample]:
    if isinstance(examples, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of EditExample objects")
    examples = list(examples)
    for example in examples:
        if not isinstance(example, EditExample):
            raise TypeError(f"{name} must be EditExample objects, got {type(example).__name__}")
    return examples


def split_examples(
    examples: Sequence[EditExample], validation_fraction: float, seed: int
) -> tuple[list[EditExample], list[EditExample]]:
    """A seeded split of edits (never of pairs, so held-out edits are unseen) into (train, held-out).

    Edits sharing a dataset case (MQuAKE's multi-edit cases) stay on one side.
    """
    examples = _check_examples(examples)
    if len(examples) < 2:
        raise ValueError(f"need at least 2 examples to hold some out, got {len(examples)}")
    groups: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        key = f"{example.source}:{example.case_id}" if example.case_id is not None else f"#{index}"
        groups[key].append(index)
    keys = list(groups)
    random.Random(f"split:{seed}").shuffle(keys)
    wanted = max(1, round(validation_fraction * len(examples)))
    held_out: list[int] = []
    for key in keys:
        if len(held_out) >= wanted or len(held_out) + len(groups[key]) >= len(examples):
            break
        held_out.extend(groups[key])
    if not held_out:
        raise ValueError("could not hold out any example: all examples share one case")
    chosen = set(held_out)
    return [e for i, e in enumerate(examples) if i not in chosen], [
        e for i, e in enumerate(examples) if i in chosen
    ]


@contextmanager
def _checkpoint_directory(output_dir: str | os.PathLike | None) -> Iterator[Path]:
    if output_dir is not None:
        path = Path(output_dir) / CHECKPOINT_FOLDER
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    # Without an output_dir nothing can be resumed later; the checkpoints only guard this process.
    temporary = Path(tempfile.mkdtemp(prefix="serac-train-"))
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _last_checkpoint(directory: Path, resume: bool) -> str | None:
    if not resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(directory)) if directory.is_dir() else None
    if last is not None:
        logger.info("Resuming from checkpoint %s", last)
    return last


def _hf_arguments(
    arguments: _LoopArguments, checkpoint_dir: Path, has_eval: bool, arguments_class: type
) -> Any:
    eval_every = arguments.eval_steps if has_eval and arguments.eval_steps > 0 else 0
    return arguments_class(
        output_dir=str(checkpoint_dir),
        max_steps=arguments.max_steps,
        num_train_epochs=arguments.num_epochs,
        per_device_train_batch_size=arguments.batch_size,
        per_device_eval_batch_size=arguments.batch_size,
        gradient_accumulation_steps=arguments.gradient_accumulation_steps,
        learning_rate=arguments.learning_rate,
        weight_decay=arguments.weight_decay,
        warmup_steps=arguments.warmup_ratio,  # a float below 1 is a share of the steps
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every or None,
        save_strategy="steps",
        save_steps=arguments.save_steps,
        save_total_limit=arguments.save_total_limit,
        logging_steps=arguments.logging_steps,
        logging_first_step=True,
        seed=arguments.seed,
        data_seed=arguments.seed,
        report_to="none",
        disable_tqdm=not arguments.show_progress,
        use_cpu=arguments.use_cpu,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available() and not arguments.use_cpu,
        prediction_loss_only=True,  # evaluation needs the loss only; gathering LM logits would cost memory
    )


def _loss_history(log_history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    history: dict[str, list[list[float]]] = {"loss": [], "eval_loss": []}
    for entry in log_history:
        for key in history:
            if key in entry and "step" in entry:
                history[key].append([int(entry["step"]), float(entry[key])])
    return history


def data_fingerprint(
    examples: Sequence[EditExample], eval_examples: Sequence[EditExample] | None = None
) -> str:
    """A SHA-256 of the training (and held-out) examples: tells whether a saved part saw the same data."""
    digest = hashlib.sha256()
    for group in (examples, eval_examples or ()):
        for example in group:
            digest.update(json.dumps(example.to_dict(), sort_keys=True).encode("utf-8"))
        digest.update(b"|")
    return digest.hexdigest()


def _model_reference(model_name_or_path: Any) -> str | None:
    # An in-memory model has no stable name: a part trained from one is never taken as already finished.
    return str(model_name_or_path) if isinstance(model_name_or_path, (str, os.PathLike)) else None


def _finished_part(
    directory: Path, arguments: _LoopArguments, fingerprint: str, starting_model: str | None
) -> bool:
    """Whether ``directory`` holds a part trained to the end with these arguments, data and starting model."""
    path = directory / TRAINING_REPORT_NAME
    if starting_model is None or not path.exists():
        return False
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        report.get("arguments") == json.loads(json.dumps(arguments.to_dict()))
        and report.get("data_fingerprint") == fingerprint
        and report.get("starting_model") == starting_model
    )


def _write_report(directory: Path, report: dict[str, Any]) -> None:
    (directory / TRAINING_REPORT_NAME).write_text(json.dumps(report, indent=2, sort_keys=True, default=str))


def _finish_checkpoints(checkpoint_dir: Path, keep: bool, persistent: bool) -> None:
    if persistent and not keep:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold chosen on held-out scores, with what it achieves there."""

    threshold: float
    strategy: str
    precision: float
    recall: float
    false_positive_rate: float
    accuracy: float
    f_beta: float


def _rates(scores: np.ndarray, labels: np.ndarray, threshold: float, beta: float) -> dict[str, float]:
    predicted = scores >= threshold
    positives, negatives = labels == 1, labels == 0
    true_positives = float(np.sum(predicted & positives))
    false_positives = float(np.sum(predicted & negatives))
    precision = true_positives / max(float(np.sum(predicted)), 1.0)
    recall = true_positives / max(float(np.sum(positives)), 1.0)
    b2 = beta * beta
    f_beta = (1 + b2) * precision * recall / max(b2 * precision + recall, 1e-12)
    return {
        "precision": precision,
        "recall": recall,
        "false_positive_rate": false_positives / max(float(np.sum(negatives)), 1.0),
        "accuracy": float(np.mean(predicted == positives)),
        "f_beta": f_beta,
    }


def choose_threshold(
    scores: Sequence[float],
    labels: Sequence[float],
    *,
    strategy: str = "f_beta",
    beta: float = 0.5,
    target_false_positive_rate: float = 0.02,
) -> ThresholdChoice:
    """Pick the in-scope threshold from held-out pair scores (labels 1: in scope, 0: out of scope).

    * ``"f_beta"``: the threshold that maximises F-beta (``beta < 1`` weighs precision more: a false positive
      changes an answer that should not change, a false negative only leaves an edit unapplied);
    * ``"false_positive_rate"``: the lowest threshold whose false-positive rate on the held-out negatives is
      at most ``target_false_positive_rate`` (the most recall at a bounded locality cost).

    The threshold is placed half-way between the deciding score and the next lower one, not on a held-out
    score itself, so it does not hinge on one example.

    Example:
        >>> choose_threshold([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]).threshold
        0.55
    """
    scores_array = np.asarray(scores, dtype=np.float64)
    labels_array = np.asarray(labels, dtype=np.float64)
    if scores_array.shape != labels_array.shape or scores_array.ndim != 1:
        raise ValueError("scores and labels must be 1-D sequences of the same length")
    if not np.all((labels_array == 0) | (labels_array == 1)):
        raise ValueError("labels must be 0 or 1")
    if not (labels_array == 1).any() or not (labels_array == 0).any():
        raise ValueError("choosing a threshold needs held-out positives and negatives")
    if strategy not in THRESHOLD_STRATEGIES:
        raise ValueError(f"strategy must be one of {THRESHOLD_STRATEGIES}, got {strategy!r}")
    distinct = np.unique(scores_array)[::-1]  # descending
    # Candidate thresholds: half-way between consecutive distinct scores, plus one above the top score.
    lower = np.append(distinct[1:], distinct[-1] - 1e-6)
    candidates = np.append(distinct[0] + 1e-6, (distinct + lower) / 2)
    if strategy == "f_beta":
        values = [_rates(scores_array, labels_array, t, beta)["f_beta"] for t in candidates]
        # Ties go to the higher threshold (fewer false positives for the same F-beta).
        threshold = float(candidates[int(np.argmax(values))])
    else:
        threshold = float(candidates[0])
        for candidate in candidates:  # descending: the last one meeting the target is the lowest
            if (
                _rates(scores_array, labels_array, candidate, beta)["false_positive_rate"]
                <= target_false_positive_rate
            ):
                threshold = float(candidate)
            else:
                break
    threshold = round(min(max(threshold, 0.0), 1.0), 6)
    return ThresholdChoice(threshold, strategy, **_rates(scores_array, labels_array, threshold, beta))


def choose_retrieval_threshold(
    similarities: Sequence[float], *, quantile: float = 0.01, margin: float = 0.05
) -> float:
    """The lowest cosine similarity an edit may have to a query and still reach the cross-encoder.

    ``similarities`` are held-out (edit text, in-scope query) cosine similarities; the filter keeps all but
    the lowest ``quantile`` of them, minus a ``margin`` for edits unlike any seen in training.

    Example:
        >>> choose_retrieval_threshold([0.9, 0.8, 0.5, 0.7], quantile=0.0, margin=0.1)
        0.4
    """
    values = np.asarray(similarities, dtype=np.float64)
    if values.size == 0:
        raise ValueError("choosing a retrieval threshold needs held-out in-scope similarities")
    return round(float(np.clip(np.quantile(values, quantile) - margin, -1.0, 1.0)), 6)


def evaluate_scope_classifier(
    classifier: CrossEncoderScopeClassifier,
    pairs: Any,
    threshold: float | None = None,
    *,
    embedder: Any | None = None,
    retrieval_threshold: float | None = None,
    scores: np.ndarray | None = None,
    similarities: np.ndarray | None = None,
) -> dict[str, Any]:
    """Held-out metrics of a scope classifier on ``scope_pairs`` rows: overall rates and accuracy per kind.

    With an ``embedder`` (or precomputed pair ``similarities``), pairs whose cosine similarity is below
    ``retrieval_threshold`` count as out of scope, as at inference, where the retrieval filter runs before the
    cross-encoder. ``scores`` may hold the classifier's precomputed pair scores.
    """
    threshold = classifier.config.threshold if threshold is None else threshold
    # The store embeds edits with their target (retrieval); the cross-encoder reads its configured view.
    edit_texts, queries = list(pairs["edit_text"]), list(pairs["query"])
    if scores is None:
        scores = classifier.score_pairs(list(pairs[_EDIT_COLUMNS[classifier.config.edit_input]]), queries)
    labels = np.asarray(pairs["label"], dtype=np.float64)
    if similarities is None and embedder is not None:
        similarities = _pair_similarities(embedder, edit_texts, queries)
    if similarities is not None:
        retrieval_threshold = (
            classifier.config.retrieval_threshold if retrieval_threshold is None else retrieval_threshold
        )
        scores = np.where(np.asarray(similarities) >= retrieval_threshold, scores, 0.0)
    metrics: dict[str, Any] = {"pairs": len(labels), **_rates(np.asarray(scores), labels, threshold, 1.0)}
    metrics["f1"] = metrics.pop("f_beta")
    predicted = np.asarray(scores) >= threshold
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for kind, prediction, label in zip(pairs["kind"], predicted, labels, strict=True):
        by_kind[kind].append(bool(prediction) == bool(label))
    metrics["accuracy_by_kind"] = {kind: float(np.mean(values)) for kind, values in sorted(by_kind.items())}
    return metrics


def _pair_similarities(embedder: Any, edit_texts: Sequence[str], queries: Sequence[str]) -> np.ndarray:
    def encode(texts: Sequence[str]) -> np.ndarray:
        vectors = embedder.encode(
            list(texts),
            batch_size=128,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    return np.sum(encode(edit_texts) * encode(queries), axis=1)


# -------------------------------------------------------------------------------------- scope classifier


def train_scope_classifier(
    examples: Sequence[EditExample],
    arguments: ScopeTrainingArguments | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    eval_examples: Sequence[EditExample] | None = None,
    embedder: Any | None = None,
) -> CrossEncoderScopeClassifier:
    """Fine-tune a cross-encoder scope classifier and choose its thresholds on held-out edits.

    The cross-encoder (``num_labels=1``, binary cross-entropy) reads (edit text, query) pairs built by
    :func:`serac.data.scope_pairs`: every in-scope query of an edit against as many out-of-scope queries,
    half of them hard (same subject, same relation, near-duplicate name, nearest neighbours mined with the
    embedder, as in the SERAC paper). After training, on held-out edits:

    * ``threshold`` is chosen by :func:`choose_threshold` (``arguments.threshold_strategy``);
    * ``retrieval_threshold`` is chosen by :func:`choose_retrieval_threshold` from the embedder's cosine
      similarities of held-out in-scope pairs.

    Args:
        examples: training edits (a share is held out unless ``eval_examples`` is given).
        arguments: training settings (defaults: :class:`ScopeTrainingArguments`).
        output_dir: where the classifier is saved (``save_pretrained`` layout, plus a training report) and
            where checkpoints are kept while training; ``None`` saves nothing.
        eval_examples: held-out edits; by default ``arguments.validation_fraction`` of ``examples``.
        embedder: the edit store's sentence embedder (default: ``arguments.embedder_name_or_path``).

    Returns:
        The trained :class:`~serac.scope.CrossEncoderScopeClassifier`.
    """
    arguments = arguments if arguments is not None else ScopeTrainingArguments()
    if not isinstance(arguments, ScopeTrainingArguments):
        raise TypeError(f"arguments must be ScopeTrainingArguments, got {type(arguments).__name__}")
    examples = _check_examples(examples)
    if eval_examples is None:
        train_examples, held_out = split_examples(examples, arguments.validation_fraction, arguments.seed)
    else:
        train_examples, held_out = examples, _check_examples(eval_examples, "eval_examples")
    if not train_examples or not held_out:
        raise ValueError("training a scope classifier needs training and held-out examples")

    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import set_seed

    from serac.defaults import load_embedder, resolve_embedder

    set_seed(arguments.seed)
    if embedder is None:
        embedder = load_embedder(arguments.embedder_name_or_path)
    if arguments.mined_negatives_per_edit:
        mining = {
            "num_negatives": arguments.mined_negatives_per_edit,
            "candidates_per_example": arguments.mining_candidates_per_edit,
            "seed": arguments.seed,
        }
        train_examples = mine_hard_negatives(train_examples, embedder, **mining)
        held_out = mine_hard_negatives(held_out, embedder, **mining)
    pair_options = {
        "negatives_per_positive": arguments.negatives_per_positive,
        "hard_negative_fraction": arguments.hard_negative_fraction,
        "max_positives_per_edit": arguments.max_positives_per_edit,
        "statement_fraction": arguments.statement_fraction,
    }
    train_pairs = scope_pairs(train_examples, seed=arguments.seed, **pair_options)
    eval_pairs = scope_pairs(held_out, seed=arguments.seed + 1, **pair_options)
    if len(set(train_pairs["label"])) < 2 or len(set(eval_pairs["label"])) < 2:
        raise ValueError("the examples give no in-scope or no out-of-scope pairs; check their queries")
    logger.info(
        "Scope classifier: %d training pairs from %d edits, %d held-out pairs from %d edits",
        len(train_pairs), len(train_examples), len(eval_pairs), len(held_out),
    )  # fmt: skip

    start = arguments.cross_encoder_name_or_path or resolve_embedder()
    cross_encoder = CrossEncoder(start, num_labels=1, max_length=arguments.max_length)
    edit_column = _EDIT_COLUMNS[arguments.edit_input]
    columns = [edit_column, "query", "label"]  # the trainer reads inputs first, then the label
    with _checkpoint_directory(output_dir) as checkpoint_dir:
        trainer = CrossEncoderTrainer(
            model=cross_encoder,
            args=_hf_arguments(arguments, checkpoint_dir, True, CrossEncoderTrainingArguments),
            train_dataset=train_pairs.select_columns(columns),
            eval_dataset=eval_pairs.select_columns(columns),
            loss=BinaryCrossEntropyLoss(cross_encoder),
        )
        trainer.train(resume_from_checkpoint=_last_checkpoint(checkpoint_dir, arguments.resume))
        history = _loss_history(trainer.state.log_history)

        config = ScopeClassifierConfig(
            kind="cross_encoder",
            top_k=arguments.top_k,
            cross_encoder_name_or_path=str(start),
            max_length=arguments.max_length,
            batch_size=arguments.eval_batch_size,
            edit_input=arguments.edit_input,
        )
        cross_encoder.eval()
        classifier = CrossEncoderScopeClassifier(cross_encoder, config)
        # Columns are materialized once: indexing a datasets column inside a loop re-reads it every time.
        edit_texts, queries = list(eval_pairs["edit_text"]), list(eval_pairs["query"])
        labels = np.asarray(eval_pairs["label"])
        scores = classifier.score_pairs(list(eval_pairs[edit_column]), queries)
        choice = choose_threshold(
            scores,
            labels,
            strategy=arguments.threshold_strategy,
            beta=arguments.beta,
            target_false_positive_rate=arguments.target_false_positive_rate,
        )
        similarities = _pair_similarities(embedder, edit_texts, queries)
        in_scope_similarities = similarities[labels == 1]
        config.threshold = choice.threshold
        config.retrieval_threshold = choose_retrieval_threshold(
            in_scope_similarities, quantile=arguments.retrieval_quantile, margin=arguments.retrieval_margin
        )
        metrics = evaluate_scope_classifier(classifier, eval_pairs, scores=scores)
        metrics_with_retrieval = evaluate_scope_classifier(
            classifier, eval_pairs, scores=scores, similarities=similarities
        )
        logger.info(
            "Scope classifier held-out: accuracy %.3f, precision %.3f, recall %.3f, false-positive rate %.3f "
            "(threshold %.4f, retrieval threshold %.3f)",
            metrics["accuracy"], metrics["precision"], metrics["recall"], metrics["false_positive_rate"],
            config.threshold, config.retrieval_threshold,
        )  # fmt: skip
        if output_dir is not None:
            directory = Path(output_dir)
            classifier.save_pretrained(directory)
            _write_report(
                directory,
                {
                    "part": "scope_classifier",
                    "arguments": arguments.to_dict(),
                    "data_fingerprint": data_fingerprint(examples, eval_examples),
                    "starting_model": str(start),
                    "train_edits": len(train_examples),
                    "held_out_edits": len(held_out),
                    "train_pairs": len(train_pairs),
                    "held_out_pairs": len(eval_pairs),
                    "threshold_choice": asdict(choice),
                    "retrieval_threshold": config.retrieval_threshold,
                    "held_out_in_scope_similarity": {
                        "min": float(np.min(in_scope_similarities)),
                        "median": float(np.median(in_scope_similarities)),
                    },
                    "held_out_out_of_scope_pairs_below_retrieval_threshold": float(
                        np.mean(similarities[labels == 0] < config.retrieval_threshold)
                    ),
                    "held_out_metrics": metrics,
                    "held_out_metrics_with_retrieval_filter": metrics_with_retrieval,
                    "global_step": trainer.state.global_step,
                    "loss_history": history,
                },
            )
            logger.info("Saved the scope classifier to %s", directory)
        _finish_checkpoints(checkpoint_dir, arguments.keep_checkpoints, output_dir is not None)
    return classifier


# ------------------------------------------------------------------------------------ counterfactual model


class _CounterfactualCollator:
    """Turns dataset rows into teacher-forcing tensors with the model's own input format."""

    def __init__(self, counterfactual: CounterfactualModel) -> None:
        self.counterfactual = counterfactual

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        edits = edits_from_column([row["edit"] for row in rows])
        # The response is the answer written in the base model's voice; older pair sets have only the answer.
        return self.counterfactual.training_features(
            edits, [row["query"] for row in rows], [row.get("response", row["answer"]) for row in rows]
        )


def _load_counterfactual(
    model_name_or_path: str | os.PathLike | CounterfactualModel | None,
    arguments: CounterfactualTrainingArguments,
) -> CounterfactualModel:
    from serac.defaults import resolve_base_model

    if isinstance(model_name_or_path, CounterfactualModel):
        counterfactual = model_name_or_path
    elif model_name_or_path is None or isinstance(model_name_or_path, (str, os.PathLike)):
        counterfactual = CounterfactualModel.from_pretrained(resolve_base_model(model_name_or_path))
    else:
        raise TypeError(
            "model_name_or_path must be a model name or path or a CounterfactualModel, "
            f"got {type(model_name_or_path).__name__}"
        )
    if arguments.input_template is not None:
        counterfactual.config.input_template = arguments.input_template
    if arguments.max_input_length is not None:
        counterfactual.config.max_input_length = arguments.max_input_length
    return counterfactual


def evaluate_counterfactual_model(
    counterfactual: CounterfactualModel, pairs: Any, *, batch_size: int = 16, limit: int | None = None
) -> dict[str, Any]:
    """Greedy answers to ``counterfactual_pairs`` rows: the share that match their answer, overall and per kind.

    A generation matches when the answer's words occur in it (:func:`serac.metrics.answer_matches`); it is
    *exact* when the normalized generation equals the normalized response it was trained to write.
    """
    from serac.metrics import answer_matches, normalize_answer

    rows = len(pairs) if limit is None else min(limit, len(pairs))
    if rows == 0:
        return {"pairs": 0}
    matches, exact = [], []
    kinds = pairs[:rows]["kind"]
    for start in range(0, rows, batch_size):
        stop = min(rows, start + batch_size)
        batch = pairs[start:stop]  # a slice reads only these rows; pairs["edit"] would read the whole column
        edits = edits_from_column(batch["edit"])
        answers = batch["answer"]
        # Exact match is against the whole response the model was trained to write, not the bare answer.
        responses = batch.get("response", answers)
        generations = counterfactual.generate(edits, batch["query"])
        for generation, answer, response in zip(generations, answers, responses, strict=True):
            matches.append(answer_matches(generation, [answer]))
            exact.append(normalize_answer(generation) == normalize_answer(response))
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for kind, match in zip(kinds, matches, strict=True):
        by_kind[kind].append(match)
    return {
        "pairs": rows,
        "answer_match": float(np.mean(matches)),
        "exact_match": float(np.mean(exact)),
        "answer_match_by_kind": {kind: float(np.mean(values)) for kind, values in sorted(by_kind.items())},
    }


def train_counterfactual_model(
    examples: Sequence[EditExample],
    arguments: CounterfactualTrainingArguments | None = None,
    model_name_or_path: str | os.PathLike | CounterfactualModel | None = None,
    output_dir: str | os.PathLike | None = None,
    *,
    eval_examples: Sequence[EditExample] | None = None,
) -> CounterfactualModel:
    """Teacher-force a counterfactual model to answer in-scope queries given their edit.

    Rows come from :func:`serac.data.counterfactual_pairs`: the edit (in prompt or statement form) with each
    in-scope query and its answer: paraphrases, yes/no questions about the edit ("yes"/"no"), and
    multi-hop questions of single-edit cases. The loss is the negative log-likelihood of the answer tokens
    only (:meth:`CounterfactualModel.training_features`), for seq2seq and causal LMs alike.

    Args:
        examples: training edits (a share is held out unless ``eval_examples`` is given).
        arguments: training settings (defaults: :class:`CounterfactualTrainingArguments`).
        model_name_or_path: the starting model: a name or path of any seq2seq or causal checkpoint (``None``:
            the default base model), or a :class:`~serac.counterfactual.CounterfactualModel` trained in place.
        output_dir: where the trained model is saved (``save_pretrained`` layout, plus a training report)
            and checkpoints are kept while training; ``None`` saves nothing.
        eval_examples: held-out edits; by default ``arguments.validation_fraction`` of ``examples``.

    Returns:
        The trained :class:`~serac.counterfactual.CounterfactualModel`, in eval mode.
    """
    arguments = arguments if arguments is not None else CounterfactualTrainingArguments()
    if not isinstance(arguments, CounterfactualTrainingArguments):
        raise TypeError(f"arguments must be CounterfactualTrainingArguments, got {type(arguments).__name__}")
    examples = _check_examples(examples)
    if eval_examples is None:
        train_examples, held_out = split_examples(examples, arguments.validation_fraction, arguments.seed)
    else:
        train_examples, held_out = examples, _check_examples(eval_examples, "eval_examples")

    from transformers import Trainer, TrainingArguments, set_seed

    pair_options = {
        "kinds": arguments.kinds,
        "statement_fraction": arguments.statement_fraction,
        "include_portability": arguments.include_portability,
    }
    train_pairs = counterfactual_pairs(train_examples, seed=arguments.seed, **pair_options)
    eval_pairs = counterfactual_pairs(held_out, seed=arguments.seed + 1, **pair_options)
    if len(train_pairs) == 0:
        raise ValueError(f"the examples give no in-scope queries of kinds {arguments.kinds}")
    set_seed(arguments.seed)
    counterfactual = _load_counterfactual(model_name_or_path, arguments)
    model = counterfactual.model
    model.requires_grad_(True)
    logger.info(
        "Counterfactual model (%s): %d training rows from %d edits, %d held-out rows",
        type(model).__name__, len(train_pairs), len(train_examples), len(eval_pairs),
    )  # fmt: skip
    # Shuffle the held-out rows once so the generation check sees every kind, not only the first edits'.
    eval_pairs = eval_pairs.shuffle(seed=arguments.seed)
    with _checkpoint_directory(output_dir) as checkpoint_dir:
        hf_arguments = _hf_arguments(arguments, checkpoint_dir, len(eval_pairs) > 0, TrainingArguments)
        hf_arguments.remove_unused_columns = False  # the collator needs the text columns
        trainer = Trainer(
            model=model,
            args=hf_arguments,
            train_dataset=train_pairs,
            eval_dataset=eval_pairs if len(eval_pairs) else None,
            data_collator=_CounterfactualCollator(counterfactual),
        )
        trainer.train(resume_from_checkpoint=_last_checkpoint(checkpoint_dir, arguments.resume))
        history = _loss_history(trainer.state.log_history)
        model.eval()
        model.requires_grad_(False)
        metrics = evaluate_counterfactual_model(counterfactual, eval_pairs, limit=arguments.eval_generations)
        if metrics.get("pairs"):
            logger.info(
                "Counterfactual model held-out: answer match %.3f, exact match %.3f on %d pairs",
                metrics["answer_match"], metrics["exact_match"], metrics["pairs"],
            )  # fmt: skip
        if output_dir is not None:
            directory = Path(output_dir)
            counterfactual.save_pretrained(directory)
            _write_report(
                directory,
                {
                    "part": "counterfactual_model",
                    "model": type(model).__name__,
                    "arguments": arguments.to_dict(),
                    "data_fingerprint": data_fingerprint(examples, eval_examples),
                    "starting_model": _model_reference(model_name_or_path),
                    "train_edits": len(train_examples),
                    "held_out_edits": len(held_out),
                    "train_rows": len(train_pairs),
                    "held_out_rows": len(eval_pairs),
                    "held_out_metrics": metrics,
                    "global_step": trainer.state.global_step,
                    "loss_history": history,
                },
            )
            logger.info("Saved the counterfactual model to %s", directory)
        _finish_checkpoints(checkpoint_dir, arguments.keep_checkpoints, output_dir is not None)
    return counterfactual


# -------------------------------------------------------------------------------------------- editor


def write_editor_config(
    output_dir: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    embedder_name_or_path: str | None = None,
) -> Path | None:
    """Write ``serac_config.json`` once both trained parts are in ``output_dir``.

    Returns the config's path, or ``None`` (with a warning) while a part is missing, since
    ``EditableModel.from_pretrained`` could not load the directory yet.
    """
    from serac.counterfactual import COUNTERFACTUAL_CONFIG_NAME
    from serac.modeling import CONFIG_NAME, COUNTERFACTUAL_FOLDER, SCOPE_FOLDER, SeracConfig
    from serac.scope import SCOPE_CONFIG_NAME
    from serac.store import EditStoreConfig

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
    # Through a temporary file and a rename: an interrupted run never leaves half a config behind.
    handle, temporary = tempfile.mkstemp(prefix=".serac_config.", dir=directory)
    with os.fdopen(handle, "w") as stream:
        stream.write(config.to_json())
    os.replace(temporary, directory / CONFIG_NAME)
    return directory / CONFIG_NAME


def train_editor(
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
    """Train the requested parts into an editor directory that ``EditableModel.from_pretrained`` loads.

    The scope classifier goes to ``output_dir/scope_classifier``, the counterfactual model to
    ``output_dir/counterfactual_model``, and ``serac_config.json`` is written once both are there (a part
    trained by an earlier run is kept). A part whose training report shows the same arguments, data and
    starting model is not trained again, so re-running an interrupted pipeline only redoes what is missing
    (and a part stopped part-way resumes from its checkpoint). ``base_model_name_or_path`` is recorded as the base model the editor
    is for (default: the default base model, or the one an earlier run recorded); the counterfactual model
    starts from ``counterfactual_model_name_or_path`` (default: the base model).

    Returns:
        The path of ``serac_config.json``, or ``None`` while a part is still missing.

    Example:
        >>> from serac.data import generate_synthetic_examples
        >>> train_editor("my-editor", generate_synthetic_examples(2000))  # doctest: +SKIP
        >>> EditableModel.from_pretrained(base_model, "my-editor")  # doctest: +SKIP
    """
    from serac.defaults import DEFAULT_BASE_MODEL, resolve_base_model, resolve_embedder
    from serac.modeling import CONFIG_NAME, COUNTERFACTUAL_FOLDER, SCOPE_FOLDER, SeracConfig

    parts = [parts] if isinstance(parts, str) else list(parts)
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise ValueError(f"parts must be some of {PARTS}, got {parts}")
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    scope_arguments = scope_arguments if scope_arguments is not None else ScopeTrainingArguments()
    base = base_model_name_or_path
    if base is None and (directory / CONFIG_NAME).exists():
        base = SeracConfig.from_json((directory / CONFIG_NAME).read_text()).base_model_name_or_path
    counterfactual_arguments = (
        counterfactual_arguments
        if counterfactual_arguments is not None
        else CounterfactualTrainingArguments()
    )
    fingerprint = data_fingerprint(examples, eval_examples)
    if "scope" in parts:
        start = scope_arguments.cross_encoder_name_or_path or resolve_embedder()
        if _finished_part(directory / SCOPE_FOLDER, scope_arguments, fingerprint, str(start)):
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
            start = resolve_base_model(base_model_name_or_path)
            if base_model_name_or_path in (None, DEFAULT_BASE_MODEL):
                base = start
        part_dir = directory / COUNTERFACTUAL_FOLDER
        if _finished_part(part_dir, counterfactual_arguments, fingerprint, _model_reference(start)):
            logger.info("%s already holds this counterfactual model; not training it again", part_dir)
        else:
            train_counterfactual_model(
                examples, counterfactual_arguments, start, part_dir, eval_examples=eval_examples
            )
    return write_editor_config(directory, base or DEFAULT_BASE_MODEL, scope_arguments.embedder_name_or_path)
