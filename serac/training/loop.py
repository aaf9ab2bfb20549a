"""The run plumbing both trainings share: splitting edits, checkpoints, Hugging Face arguments, reports."""

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
from pathlib import Path
from typing import Any, TypeVar

import torch

from serac.data.schema import EditExample
from serac.files import write_text_atomic
from serac.training.arguments import LoopArguments

logger = logging.getLogger(__name__)

ArgumentsT = TypeVar("ArgumentsT", bound=LoopArguments)

__all__ = [
    "add_low_rank_updates",
    "merge_low_rank_updates",
    "CHECKPOINT_FOLDER",
    "TRAINING_REPORT_NAME",
    "check_examples",
    "checkpoint_directory",
    "data_fingerprint",
    "quiet_progress",
    "finish_checkpoints",
    "finished_part",
    "freeze_below_top_blocks",
    "hf_arguments",
    "last_checkpoint",
    "loss_history",
    "model_reference",
    "prepare_run",
    "run_summary",
    "split_examples",
    "transformer_blocks",
    "write_report",
]

#: Where checkpoints go, inside a training ``output_dir``.
CHECKPOINT_FOLDER = "checkpoints"
#: The JSON file (arguments, held-out metrics, loss history) written next to a trained part.
TRAINING_REPORT_NAME = "training_report.json"


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer blocks of ``model``: its largest ``ModuleList`` of same-class modules (for an
    encoder-decoder, the decoder's when the two are the same size)."""
    best, best_size = None, -1
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 1:
            if len({type(block) for block in module}) != 1:
                continue
            size = sum(parameter.numel() for parameter in module.parameters())
            if size >= best_size:
                best, best_size = module, size
    if best is None:
        raise ValueError(f"{type(model).__name__} has no stack of transformer blocks to train the top of")
    return best


def freeze_below_top_blocks(model: torch.nn.Module, count: int, *, head: bool = False) -> int:
    """Leave only the last ``count`` transformer blocks trainable; returns the trainable parameter count.

    Everything below them (embeddings included, and with them a tied output layer) is frozen, so autograd
    records no backward pass through the lower blocks: a step costs about a forward pass plus the top
    blocks' backward. With ``head``, the parameters the model registers after its blocks (a classifier's
    pooler and output layer) are trained too; without, everything but the blocks is frozen.
    """
    blocks = transformer_blocks(model)
    if not 1 <= count <= len(blocks):
        raise ValueError(f"trainable_blocks must be between 1 and {len(blocks)} for this model, got {count}")
    model.requires_grad_(False)
    for block in list(blocks)[-count:]:
        block.requires_grad_(True)
    if head:
        top = {id(parameter) for parameter in blocks[-1].parameters()}
        after_top = False
        # Registration order: a pooler and a classifier come after the blocks; a tied output layer is listed
        # once, where its embedding first appears, and stays frozen.
        for parameter in model.parameters():
            if id(parameter) in top:
                after_top = True
            elif after_top:
                parameter.requires_grad_(True)
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


class _LowRankUpdate:
    """The forward hook of a linear layer trained through a low-rank update: adds ``x @ down.T @ up.T``."""

    def __call__(self, module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + (inputs[0] @ module.low_rank_down.T) @ module.low_rank_up.T


def add_low_rank_updates(blocks: Sequence[torch.nn.Module], rank: int) -> int:
    """Make the linear layers of ``blocks`` train through updates of rank ``rank`` (their weights frozen, two
    thin matrices trained: ``up`` starts at zero, so the model starts as it was); the blocks' other parameters
    (norm gains) train as they are. Returns the trainable parameter count. :func:`merge_low_rank_updates`
    folds the updates into the weights.

    A counterfactual model trained so differs from its base model by a small rank per layer, which lets its
    rows go through the base model's own layers when both serve one batch (:class:`serac.serve.towers.TwoTowers`).
    """
    if rank < 1:
        raise ValueError(f"low_rank must be >= 1, got {rank}")
    trainable = 0
    for block in blocks:
        for module in list(block.modules()):
            if isinstance(module, torch.nn.Linear):
                module.weight.requires_grad_(False)
                if module.bias is not None:
                    module.bias.requires_grad_(False)
                columns, rows = module.in_features, module.out_features
                down = torch.empty(rank, columns, dtype=module.weight.dtype, device=module.weight.device)
                torch.nn.init.kaiming_uniform_(down, a=5**0.5)
                module.low_rank_down = torch.nn.Parameter(down)
                module.low_rank_up = torch.nn.Parameter(module.weight.new_zeros(rows, rank))
                module.low_rank_hook = module.register_forward_hook(_LowRankUpdate())
        trainable += sum(parameter.numel() for parameter in block.parameters() if parameter.requires_grad)
    return trainable


def merge_low_rank_updates(model: torch.nn.Module) -> None:
    """Fold the updates :func:`add_low_rank_updates` added into their layers' weights and remove them."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and hasattr(module, "low_rank_hook"):
            with torch.no_grad():
                module.weight.add_(module.low_rank_up @ module.low_rank_down)
            module.low_rank_hook.remove()
            del module.low_rank_hook, module.low_rank_down, module.low_rank_up


def check_examples(examples: Sequence[EditExample], name: str = "examples") -> list[EditExample]:
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
    examples = check_examples(examples)
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
def checkpoint_directory(output_dir: str | os.PathLike | None) -> Iterator[Path]:
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


def last_checkpoint(directory: Path, resume: bool) -> str | None:
    if not resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(directory)) if directory.is_dir() else None
    if last is not None:
        logger.info("Resuming from checkpoint %s", last)
    return last


def hf_arguments(
    arguments: LoopArguments, checkpoint_dir: Path, has_eval: bool, arguments_class: type
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


def quiet_progress(trainer: Any, description: str | None = None) -> Any:
    """Swap the Trainer's progress bar for one that shows the loss on the bar rather than printing a dict
    per logging step (the bar goes to standard error, named ``description``; the logs stay in
    ``trainer.state.log_history``)."""
    from tqdm.auto import tqdm
    from transformers.trainer_callback import ProgressCallback

    class _LossOnTheBar(ProgressCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.training_bar = tqdm(total=state.max_steps, desc=description, dynamic_ncols=True)
            self.current_step = 0

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
        ) -> None:
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {key: f"{value:.4g}" for key, value in logs.items() if key in ("loss", "eval_loss")}
                if shown:
                    self.training_bar.set_postfix(shown, refresh=False)
            logger.debug("training log: %s", logs)

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(_LossOnTheBar)
    return trainer


def loss_history(log_history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
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


def model_reference(model_name_or_path: Any) -> str | None:
    # An in-memory model has no stable name: a part trained from one is never taken as already finished.
    return str(model_name_or_path) if isinstance(model_name_or_path, (str, os.PathLike)) else None


def finished_part(
    directory: Path, arguments: LoopArguments, fingerprint: str, starting_model: str | None
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


def run_summary(
    arguments: LoopArguments,
    examples: Sequence[EditExample],
    eval_examples: Sequence[EditExample] | None,
    train_examples: Sequence[EditExample],
    held_out: Sequence[EditExample],
) -> dict[str, Any]:
    """What every training report records: the arguments, the data's fingerprint and the split's sizes.

    :func:`finished_part` compares the first two to tell whether a saved part can be kept.
    """
    return {
        "arguments": arguments.to_dict(),
        "data_fingerprint": data_fingerprint(examples, eval_examples),
        "train_edits": len(train_examples),
        "held_out_edits": len(held_out),
    }


def write_report(directory: Path, report: dict[str, Any]) -> None:
    """Write ``report`` as the part's ``training_report.json``, atomically."""
    write_text_atomic(
        directory / TRAINING_REPORT_NAME, json.dumps(report, indent=2, sort_keys=True, default=str)
    )


def finish_checkpoints(checkpoint_dir: Path, keep: bool, persistent: bool) -> None:
    if persistent and not keep:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def prepare_run(
    arguments: ArgumentsT | None,
    arguments_class: type[ArgumentsT],
    examples: Sequence[EditExample],
    eval_examples: Sequence[EditExample] | None,
) -> tuple[ArgumentsT, list[EditExample], list[EditExample]]:
    """The arguments (default: ``arguments_class()``), the training edits and the held-out edits.

    Held-out edits are ``eval_examples`` if given, else ``arguments.validation_fraction`` of ``examples``.
    """
    arguments = arguments if arguments is not None else arguments_class()
    if not isinstance(arguments, arguments_class):
        raise TypeError(f"arguments must be {arguments_class.__name__}, got {type(arguments).__name__}")
    examples = check_examples(examples)
    if eval_examples is None:
        train_examples, held_out = split_examples(examples, arguments.validation_fraction, arguments.seed)
    else:
        train_examples, held_out = examples, check_examples(eval_examples, "eval_examples")
    return arguments, train_examples, held_out
