"""Training of the scope classifier, and the choice of its thresholds on held-out edits.

:func:`train_scope_classifier` fine-tunes a cross-encoder (all-MiniLM-L6-v2 by default) on (edit text, query)
pairs, in scope against easy and hard out-of-scope pairs, then picks the classifier's ``threshold`` and the
embedding ``retrieval_threshold`` on held-out edits.

Example:
    >>> from serac.data import generate_synthetic_examples
    >>> examples = generate_synthetic_examples(2000, seed=0)
    >>> scope = train_scope_classifier(examples, ScopeTrainingArguments(max_steps=500), "out/scope_classifier")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serac import offline
from serac.data import EditExample, mine_hard_negatives, scope_pairs
from serac.edits import mentions_subject
from serac.scope import CrossEncoderScopeClassifier, ScopeClassifierConfig
from serac.training.arguments import THRESHOLD_STRATEGIES, ScopeTrainingArguments
from serac.training.loop import (
    checkpoint_directory,
    finish_checkpoints,
    freeze_below_top_blocks,
    hf_arguments,
    last_checkpoint,
    loss_history,
    prepare_run,
    quiet_progress,
    run_summary,
    write_report,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ThresholdChoice",
    "choose_retrieval_threshold",
    "choose_threshold",
    "evaluate_scope_classifier",
    "length_bucketed_loss",
    "train_scope_classifier",
]

#: The ``scope_pairs`` column holding each ``ScopeClassifierConfig.edit_input`` view of the edit.
_EDIT_COLUMNS = {"query": "edit_query", "text": "edit_text"}


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
        texts = _pair_texts(classifier.config, pairs)
        scores = classifier.score_pairs(texts["pair_edit"], texts["pair_query"])
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


def _pair_texts(config: ScopeClassifierConfig, rows: Any) -> dict[str, list[str]]:
    """What a cross-encoder classifier with ``config`` reads for ``scope_pairs`` rows (a dataset or a batch of
    its columns), as the saved classifier builds it at inference: ``pair_edit`` and ``pair_query`` columns."""
    views = list(rows[_EDIT_COLUMNS[config.edit_input]])
    columns = rows.column_names if hasattr(rows, "column_names") else rows
    subjects = list(rows["edit_subject"]) if "edit_subject" in columns else [None] * len(views)
    texts = [
        config.pair(view, subject or None, query)
        for view, subject, query in zip(views, subjects, rows["query"], strict=True)
    ]
    return {"pair_edit": [edit for edit, _ in texts], "pair_query": [query for _, query in texts]}


def _pair_similarities(embedder: Any, edit_texts: Sequence[str], queries: Sequence[str]) -> np.ndarray:
    return np.sum(offline.embed(embedder, edit_texts) * offline.embed(embedder, queries), axis=1)


def length_bucketed_loss(cross_encoder: Any, buckets: int) -> Any:
    """Binary cross-entropy of a batch of (edit text, query) pairs, run as ``buckets`` forward passes over pairs
    of similar token length, each padded to its own longest pair rather than the batch's. The batch is the
    same and so is its loss (the mean over all its pairs); the padding left out was computed for nothing."""
    import torch
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from sentence_transformers.util import batch_to_device

    class LengthBucketedLoss(BinaryCrossEntropyLoss):
        def forward(self, inputs: list[list[str]], labels: Any, prompt: Any = None, task: Any = None) -> Any:
            if buckets == 1 or len(inputs) != 2:
                return super().forward(inputs, labels, prompt=prompt, task=task)
            features = self.model.preprocess(list(zip(*inputs, strict=True)), prompt=prompt, task=task)
            mask = features["attention_mask"]
            order = torch.argsort(mask.sum(dim=1), stable=True)
            logits = []
            for rows in torch.tensor_split(order, min(buckets, len(order))):
                keep = mask[rows].any(dim=0)  # the bucket's own columns, whichever side pads
                bucket = {
                    name: value[rows][:, keep] if isinstance(value, torch.Tensor) and value.shape == mask.shape
                    else value  # what is not per token (the modality) is the batch's
                    for name, value in features.items()
                }  # fmt: skip
                scores = self.model(batch_to_device(bucket, self.model.device))["scores"]
                logits.append(self.activation_fn(scores.view(-1)))
            targets = labels.view(-1)[order.to(labels.device)].float()
            return self.bce_with_logits_loss(torch.cat(logits), targets)

    return LengthBucketedLoss(cross_encoder)


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
    arguments, train_examples, held_out = prepare_run(
        arguments, ScopeTrainingArguments, examples, eval_examples
    )
    if not train_examples or not held_out:
        raise ValueError("training a scope classifier needs training and held-out examples")

    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from transformers import set_seed

    set_seed(arguments.seed)
    if embedder is None:
        embedder = offline.load_embedder(arguments.embedder_name_or_path)
    # Mining and the retrieval threshold embed many of the same texts (each held-out edit's text, its queries).
    embedder = offline.MemoizedEmbedder(embedder)
    if arguments.mined_negatives_per_edit:
        mining = {
            "num_negatives": arguments.mined_negatives_per_edit,
            "candidates_per_example": arguments.mining_candidates_per_edit,
            "seed": arguments.seed,
            "subject_match": arguments.subject_match,
        }
        train_examples = mine_hard_negatives(train_examples, embedder, **mining)
        held_out = mine_hard_negatives(held_out, embedder, **mining)
    pair_options = arguments.pair_options()
    train_pairs = scope_pairs(train_examples, seed=arguments.seed, **pair_options)
    eval_pairs = scope_pairs(held_out, seed=arguments.seed + 1, **pair_options)
    if arguments.subject_match:
        # Held-out pairs the subject match keeps from the classifier say nothing about its threshold.
        eval_pairs = eval_pairs.filter(
            lambda row: not row["edit_subject"] or mentions_subject(row["edit_subject"], row["query"])
        )
    if len(set(train_pairs["label"])) < 2 or len(set(eval_pairs["label"])) < 2:
        raise ValueError("the examples give no in-scope or no out-of-scope pairs; check their queries")
    logger.info(
        "Scope classifier: %d training pairs from %d edits, %d held-out pairs from %d edits",
        len(train_pairs), len(train_examples), len(eval_pairs), len(held_out),
    )  # fmt: skip

    start = arguments.cross_encoder_name_or_path or offline.resolve_embedder()
    cross_encoder = CrossEncoder(start, num_labels=1, max_length=arguments.max_length)
    if arguments.trainable_blocks is not None:
        trainable = freeze_below_top_blocks(cross_encoder.model, arguments.trainable_blocks, head=True)
        logger.info(
            "Training the last %d blocks and the head (%d parameters)", arguments.trainable_blocks, trainable
        )
    config = arguments.classifier_config(cross_encoder_name_or_path=str(start))
    # In batches: mapping row by row costs four times the work of building the texts.
    train_pairs = train_pairs.map(functools.partial(_pair_texts, config), batched=True)
    eval_pairs = eval_pairs.map(functools.partial(_pair_texts, config), batched=True)
    columns = ["pair_edit", "pair_query", "label"]  # the trainer reads inputs first, then the label
    with checkpoint_directory(output_dir) as checkpoint_dir:
        trainer = CrossEncoderTrainer(
            model=cross_encoder,
            args=hf_arguments(arguments, checkpoint_dir, True, CrossEncoderTrainingArguments),
            train_dataset=train_pairs.select_columns(columns),
            eval_dataset=eval_pairs.select_columns(columns),
            loss=length_bucketed_loss(cross_encoder, arguments.length_buckets),
        )
        quiet_progress(trainer, "scope classifier")
        trainer.train(resume_from_checkpoint=last_checkpoint(checkpoint_dir, arguments.resume))
        history = loss_history(trainer.state.log_history)

        cross_encoder.eval()
        classifier = CrossEncoderScopeClassifier(cross_encoder, config)
        # Columns are materialized once: indexing a datasets column inside a loop re-reads it every time.
        edit_texts, queries = list(eval_pairs["edit_text"]), list(eval_pairs["query"])
        labels = np.asarray(eval_pairs["label"])
        scores = classifier.score_pairs(list(eval_pairs["pair_edit"]), list(eval_pairs["pair_query"]))
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
            write_report(
                directory,
                {
                    "part": "scope_classifier",
                    "starting_model": str(start),
                    **run_summary(arguments, examples, eval_examples, train_examples, held_out),
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
        finish_checkpoints(checkpoint_dir, arguments.keep_checkpoints, output_dir is not None)
    return classifier
