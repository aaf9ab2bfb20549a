"""Training of the counterfactual model.

:func:`train_counterfactual_model` teacher-forces any seq2seq or causal LM to answer in-scope queries given
the edit: paraphrases, statement-form edits, yes/no questions and single-edit multi-hop questions.

Example:
    >>> from serac.data import generate_synthetic_examples
    >>> counterfactual = train_counterfactual_model(
    ...     generate_synthetic_examples(2000), CounterfactualTrainingArguments(max_steps=500),
    ...     "google/flan-t5-small", "out/counterfactual_model",
    ... )  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serac import offline
from serac.counterfactual import CounterfactualModel
from serac.data import EditExample, counterfactual_pairs, edits_from_column
from serac.training.arguments import CounterfactualTrainingArguments
from serac.training.loop import (
    add_low_rank_updates,
    checkpoint_directory,
    finish_checkpoints,
    freeze_below_top_blocks,
    hf_arguments,
    last_checkpoint,
    loss_history,
    merge_low_rank_updates,
    model_reference,
    prepare_run,
    quiet_progress,
    run_summary,
    transformer_blocks,
    write_report,
)

logger = logging.getLogger(__name__)

__all__ = ["answer_token_loss", "evaluate_counterfactual_model", "train_counterfactual_model"]


def answer_token_loss(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: Any = None
) -> torch.Tensor:
    """A causal LM's loss on ``inputs`` (with ``labels``), its head run only where a label is set.

    The loss is ``model(**inputs).loss`` (the mean over the labelled tokens, or their sum over
    ``num_items_in_batch``), without the head's product over the whole vocabulary at positions no label reads.
    A counterfactual model's rows label their answer only, about a fifth of their tokens, and that product
    was about a third of a training step of the default recipe. The head is the model's own, so whatever
    the model does to its logits (a soft cap, a scale) it still does.
    """
    targets = inputs["labels"][:, 1:]
    kept = targets != -100

    def labelled_positions(module: torch.nn.Module, args: tuple) -> tuple | None:
        hidden, *rest = args
        if hidden.shape[:2] != inputs["labels"].shape:
            return None
        return (hidden[:, :-1][kept], *rest)

    handle = model.get_output_embeddings().register_forward_pre_hook(labelled_positions)
    try:
        logits = model(**{key: value for key, value in inputs.items() if key != "labels"}).logits
    finally:
        handle.remove()
    if logits.dim() == 3:  # a model that gave its head other hidden states: read the labelled ones now
        logits = logits[:, :-1][kept]
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[kept], reduction=reduction)
    return loss if num_items_in_batch is None else loss / num_items_in_batch


def _answer_loss_trainer(trainer_class: type) -> type:
    """``trainer_class`` computing a causal LM's training loss with :func:`answer_token_loss`."""

    class AnswerLossTrainer(trainer_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if (
                return_outputs
                or model.config.is_encoder_decoder
                or self.label_smoother is not None
                or self.compute_loss_func is not None
                or self.args.n_gpu > 1
                or self.accelerator.num_processes > 1
            ):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # As the trainer's own loss: the labelled tokens' sum over their count in the batch where the model
            # takes that count, else their mean.
            count = num_items_in_batch if self.model_accepts_loss_kwargs else None
            return answer_token_loss(model, inputs, count)

    return AnswerLossTrainer


class _CounterfactualCollator:
    """Turns dataset rows into teacher-forcing tensors with the model's own input format."""

    def __init__(self, counterfactual: CounterfactualModel) -> None:
        self.counterfactual = counterfactual

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        edits = edits_from_column([row["edit"] for row in rows])
        return self.counterfactual.training_features(
            # The response is the answer written in the base model's voice; older pair sets have only the answer.
            edits,
            [row["query"] for row in rows],
            [row.get("response", row["answer"]) for row in rows],
        )


def _load_counterfactual(
    model_name_or_path: str | os.PathLike | CounterfactualModel | None,
    arguments: CounterfactualTrainingArguments,
) -> CounterfactualModel:
    if isinstance(model_name_or_path, CounterfactualModel):
        counterfactual = model_name_or_path
    elif model_name_or_path is None or isinstance(model_name_or_path, (str, os.PathLike)):
        counterfactual = CounterfactualModel.from_pretrained(offline.resolve_base_model(model_name_or_path))
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
    arguments, train_examples, held_out = prepare_run(
        arguments, CounterfactualTrainingArguments, examples, eval_examples
    )

    from transformers import Trainer, TrainingArguments, set_seed

    pair_options = arguments.pair_options()
    train_pairs = counterfactual_pairs(train_examples, seed=arguments.seed, **pair_options)
    eval_pairs = counterfactual_pairs(held_out, seed=arguments.seed + 1, **pair_options)
    if len(train_pairs) == 0:
        raise ValueError(f"the examples give no in-scope queries of kinds {arguments.kinds}")
    set_seed(arguments.seed)
    counterfactual = _load_counterfactual(model_name_or_path, arguments)
    model = counterfactual.model
    model.requires_grad_(True)
    if arguments.trainable_blocks is not None:
        trainable = freeze_below_top_blocks(model, arguments.trainable_blocks)
        logger.info(
            "Training the last %d transformer blocks (%d parameters)", arguments.trainable_blocks, trainable
        )
    if arguments.low_rank is not None:
        blocks = transformer_blocks(model)
        if arguments.trainable_blocks is not None:
            blocks = blocks[-arguments.trainable_blocks :]
        else:
            model.requires_grad_(False)  # the blocks' own parameters are set by add_low_rank_updates
            blocks.requires_grad_(True)
        trainable = add_low_rank_updates(blocks, arguments.low_rank)
        logger.info(
            "Training rank-%d updates of %d blocks (%d parameters)",
            arguments.low_rank,
            len(blocks),
            trainable,
        )
    logger.info(
        "Counterfactual model (%s): %d training rows from %d edits, %d held-out rows",
        type(model).__name__, len(train_pairs), len(train_examples), len(eval_pairs),
    )  # fmt: skip
    # Shuffle the held-out rows once so the generation check sees every kind, not only the first edits'.
    eval_pairs = eval_pairs.shuffle(seed=arguments.seed)
    with checkpoint_directory(output_dir) as checkpoint_dir:
        trainer_arguments = hf_arguments(arguments, checkpoint_dir, len(eval_pairs) > 0, TrainingArguments)
        trainer_arguments.remove_unused_columns = False  # the collator needs the text columns
        trainer = _answer_loss_trainer(Trainer)(
            model=model,
            args=trainer_arguments,
            train_dataset=train_pairs,
            eval_dataset=eval_pairs if len(eval_pairs) else None,
            data_collator=_CounterfactualCollator(counterfactual),
        )
        quiet_progress(trainer, "counterfactual model")
        trainer.train(resume_from_checkpoint=last_checkpoint(checkpoint_dir, arguments.resume))
        history = loss_history(trainer.state.log_history)
        merge_low_rank_updates(model)
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
            write_report(
                directory,
                {
                    "part": "counterfactual_model",
                    "model": type(model).__name__,
                    "starting_model": model_reference(model_name_or_path),
                    **run_summary(arguments, examples, eval_examples, train_examples, held_out),
                    "train_rows": len(train_pairs),
                    "held_out_rows": len(eval_pairs),
                    "held_out_metrics": metrics,
                    "global_step": trainer.state.global_step,
                    "loss_history": history,
                },
            )
            logger.info("Saved the counterfactual model to %s", directory)
        finish_checkpoints(checkpoint_dir, arguments.keep_checkpoints, output_dir is not None)
    return counterfactual
