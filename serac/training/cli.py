"""Command line: train SERAC's scope classifier and counterfactual model into a SERAC folder.

    serac train --output-dir DIR [--data synthetic|synthetic:N|mquake:PATH|zsre:PATH|counterfact:PATH ...]
                [--parts scope,counterfactual] [--max-steps N] [--seed S]
                [--base-model NAME] [--counterfactual-model NAME] [--cross-encoder NAME] [--embedder NAME]
                [--scope-FIELD VALUE ...] [--counterfactual-FIELD VALUE ...]

The folder gets ``scope_classifier/``, ``counterfactual_model/`` and ``serac_config.json``, the layout
``EditableModel.from_pretrained(base_model, DIR)`` reads. Every field of :class:`ScopeTrainingArguments`
and :class:`CounterfactualTrainingArguments` is an option (``--scope-learning-rate``,
``--counterfactual-batch-size``, ...; ``--help`` lists them; a boolean needs no value, ``--no-...`` turns
it off). A run that stops part-way resumes from its last checkpoint when started again with the same command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import HfArgumentParser

from serac.training import (
    PARTS,
    TRAINING_REPORT_NAME,
    CounterfactualTrainingArguments,
    ScopeTrainingArguments,
    train_parts,
)

logger = logging.getLogger(__name__)

#: What each group of part options is called, by prefix.
_PART_OPTIONS = {
    "scope": (ScopeTrainingArguments, "scope classifier training"),
    "counterfactual": (CounterfactualTrainingArguments, "counterfactual model training"),
}


@dataclass
class TrainCommandArguments:
    """The options of ``serac train`` beside the per-part ``--scope-*`` and ``--counterfactual-*`` ones."""

    output_dir: str = field(metadata={"help": "SERAC folder to write (resumes if it has checkpoints)"})
    data: list[str] | None = field(
        default=None,
        metadata={
            "help": "training data, repeatable or comma-separated: synthetic, synthetic:N, mquake:PATH, "
            "zsre:PATH, counterfact:PATH, jsonl:PATH (default: synthetic)",
            "action": "append",
        },
    )
    eval_data: list[str] | None = field(
        default=None, metadata={"help": "held-out data (default: a share of --data)", "action": "append"}
    )
    parts: str = field(
        default=",".join(PARTS),
        metadata={"help": f"parts to train, comma-separated (default: {','.join(PARTS)})"},
    )
    max_steps: int | None = field(default=None, metadata={"help": "optimizer steps of each part"})
    seed: int | None = field(default=None, metadata={"help": "seed of the data and of both trainings"})
    base_model: str | None = field(
        default=None, metadata={"help": "base model the folder is for (default: SmolLM2-135M)"}
    )
    counterfactual_model: str | None = field(
        default=None, metadata={"help": "starting counterfactual model (default: the base model)"}
    )
    cross_encoder: str | None = field(
        default=None, metadata={"help": "starting cross-encoder (default: all-MiniLM-L6-v2)"}
    )
    embedder: str | None = field(
        default=None, metadata={"help": "edit-store sentence embedder (default: all-MiniLM-L6-v2)"}
    )
    no_progress: bool = field(default=False, metadata={"help": "hide progress bars"})
    log_level: str = field(default="INFO", metadata={"help": "logging level (default: INFO)"})


def _part_options(prefix: str) -> type:
    """A dataclass of ``arguments_class``'s fields renamed ``{prefix}_{name}``, for the parser.

    Each option's help states the part's default; the parser's own default is ``None`` (see
    :func:`build_parser`) so that an option left out is told apart from one given.
    """
    arguments_class, title = _PART_OPTIONS[prefix]
    hints = typing.get_type_hints(arguments_class)
    defaults = arguments_class()
    specs = []
    for item in fields(arguments_class):
        kind = hints[item.name]
        default = getattr(defaults, item.name)
        if typing.get_origin(kind) is tuple:
            # Tuples are written comma-separated on the command line; the arguments class splits them.
            kind, default = str, ",".join(default)
        help_text = f"{item.metadata.get('help', '')} (default: {default!r})"
        specs.append((f"{prefix}_{item.name}", kind, field(default=default, metadata={"help": help_text})))
    return dataclasses.make_dataclass(
        f"{prefix.title()}Options", specs, namespace={"_argument_group_name": title}
    )


def build_parser() -> HfArgumentParser:
    """The ``serac train`` argument parser."""
    part_classes = [_part_options(prefix) for prefix in _PART_OPTIONS]
    parser = HfArgumentParser(
        [TrainCommandArguments, *part_classes],
        prog="serac train",
        description="Train the scope classifier and the counterfactual model of a SERAC folder.",
        # Every help text states its default; the default formatter would print it a second time.
        formatter_class=argparse.HelpFormatter,
    )
    parser.set_defaults(**{item.name: None for part_class in part_classes for item in fields(part_class)})
    return parser


def _arguments(namespace: argparse.Namespace, prefix: str, shared: dict[str, Any]) -> Any:
    arguments_class, _ = _PART_OPTIONS[prefix]
    values = {key: value for key, value in shared.items() if value is not None}
    for item in fields(arguments_class):
        value = getattr(namespace, f"{prefix}_{item.name}")
        if value is not None:
            values[item.name] = value
    return arguments_class(**values)


def _data_specs(values: list[list[str]] | None, default: list[str]) -> list[str]:
    if not values:
        return default
    return [part.strip() for group in values for value in group for part in value.split(",") if part.strip()]


def _load(specs: list[str], seed: int) -> list:
    from serac.data import load_examples

    examples = []
    for spec in specs:
        loaded = load_examples(spec, seed=seed)
        logger.info("%s: %d edit examples", spec, len(loaded))
        examples.extend(loaded)
    return examples


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``serac train``; returns the exit status."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(namespace.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    parts = [part.strip() for part in namespace.parts.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        parser.error(f"--parts must be some of {','.join(PARTS)}, got {namespace.parts!r}")
    shared: dict[str, Any] = {"max_steps": namespace.max_steps, "seed": namespace.seed}
    if namespace.no_progress:
        shared["show_progress"] = False
    try:
        scope_arguments = _arguments(namespace, "scope", shared)
        if namespace.cross_encoder is not None:
            scope_arguments.cross_encoder_name_or_path = namespace.cross_encoder
        if namespace.embedder is not None:
            scope_arguments.embedder_name_or_path = namespace.embedder
        counterfactual_arguments = _arguments(namespace, "counterfactual", shared)
    except (TypeError, ValueError) as error:
        parser.error(str(error))

    from serac.folder import COUNTERFACTUAL_FOLDER, SCOPE_FOLDER

    seed = namespace.seed if namespace.seed is not None else 0
    try:
        examples = _load(_data_specs(namespace.data, ["synthetic"]), seed)
        eval_examples = _load(_data_specs(namespace.eval_data, []), seed) if namespace.eval_data else None
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if not examples:
        parser.error("the training data holds no edit examples")

    output_dir = Path(namespace.output_dir)
    config_path = train_parts(
        output_dir,
        examples,
        parts=parts,
        scope_arguments=scope_arguments,
        counterfactual_arguments=counterfactual_arguments,
        base_model_name_or_path=namespace.base_model,
        counterfactual_model_name_or_path=namespace.counterfactual_model,
        eval_examples=eval_examples,
    )

    summary: dict[str, Any] = {}
    for folder in (SCOPE_FOLDER, COUNTERFACTUAL_FOLDER):
        report = output_dir / folder / TRAINING_REPORT_NAME
        if report.exists():
            data = json.loads(report.read_text())
            summary[folder] = {
                key: data[key]
                for key in ("held_out_metrics", "threshold_choice", "retrieval_threshold")
                if key in data
            }
    print(json.dumps(summary, indent=2, sort_keys=True))
    if config_path is None:
        print(f"\n{output_dir} lacks a trained part; train it with --parts before loading the folder.")
    else:
        print(f"\nSERAC folder written to {output_dir}. Load it with:\n"
              f"    EditableModel.from_pretrained(base_model, {str(output_dir)!r})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
