"""Command line: train SERAC's scope classifier and counterfactual model into an editor directory.

    python -m serac.train --output-dir DIR [--data synthetic|synthetic:N|mquake:PATH|zsre:PATH|counterfact:PATH ...]
                          [--parts scope,counterfactual] [--max-steps N] [--seed S]
                          [--base-model NAME] [--counterfactual-model NAME] [--cross-encoder NAME] [--embedder NAME]
                          [--scope-FIELD VALUE ...] [--counterfactual-FIELD VALUE ...]

The directory gets ``scope_classifier/``, ``counterfactual_model/`` and ``serac_config.json``, the layout
``EditableModel.from_pretrained(base_model, DIR)`` reads. Every field of :class:`ScopeTrainingArguments`
and :class:`CounterfactualTrainingArguments` is an option (``--scope-learning-rate``,
``--counterfactual-batch-size``, ...; ``--help`` lists them). A run that stops part-way resumes from its
last checkpoint when started again with the same command.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from serac.training import (
    PARTS,
    TRAINING_REPORT_NAME,
    CounterfactualTrainingArguments,
    ScopeTrainingArguments,
    train_editor,
)

logger = logging.getLogger("serac.train")


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _converter(type_text: str):
    """argparse ``type`` for a dataclass field annotation (annotations are strings here)."""
    base = type_text.replace(" | None", "").replace("None | ", "").strip()
    if base == "bool":
        return _parse_bool
    if base == "int":
        return int
    if base == "float":
        return float
    if base.startswith("tuple"):
        return lambda text: tuple(part.strip() for part in text.split(",") if part.strip())
    return str


def _add_dataclass_options(
    parser: argparse.ArgumentParser, prefix: str, arguments_class: type, title: str
) -> None:
    group = parser.add_argument_group(title)
    for item in fields(arguments_class):
        option = f"--{prefix}-{item.name.replace('_', '-')}"
        group.add_argument(
            option,
            dest=f"{prefix}__{item.name}",
            type=_converter(str(item.type)),
            default=None,
            metavar=item.name.upper(),
            help=f"{item.metadata.get('help', '')} (default: {getattr(arguments_class(), item.name)!r})",
        )


def build_parser() -> argparse.ArgumentParser:
    """The ``serac-train`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="serac-train",
        description="Train the scope classifier and the counterfactual model of a SERAC editor.",
    )
    parser.add_argument(
        "--output-dir", required=True, help="editor directory to write (resumes if it has checkpoints)"
    )
    parser.add_argument(
        "--data",
        action="append",
        default=None,
        help="training data, repeatable or comma-separated: synthetic, synthetic:N, mquake:PATH, zsre:PATH, "
        "counterfact:PATH, jsonl:PATH (default: synthetic)",
    )
    parser.add_argument(
        "--eval-data", action="append", default=None, help="held-out data (default: a share of --data)"
    )
    parser.add_argument(
        "--parts",
        default="scope,counterfactual",
        help="parts to train, comma-separated (default: scope,counterfactual)",
    )
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps of each part")
    parser.add_argument("--seed", type=int, default=None, help="seed of the data and of both trainings")
    parser.add_argument(
        "--base-model", default=None, help="base model the editor is for (default: SmolLM2-135M)"
    )
    parser.add_argument(
        "--counterfactual-model", default=None, help="starting counterfactual model (default: the base model)"
    )
    parser.add_argument(
        "--cross-encoder", default=None, help="starting cross-encoder (default: all-MiniLM-L6-v2)"
    )
    parser.add_argument(
        "--embedder", default=None, help="edit-store sentence embedder (default: all-MiniLM-L6-v2)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    _add_dataclass_options(parser, "scope", ScopeTrainingArguments, "scope classifier training")
    _add_dataclass_options(
        parser, "counterfactual", CounterfactualTrainingArguments, "counterfactual model training"
    )
    return parser


def _arguments(
    namespace: argparse.Namespace, prefix: str, arguments_class: type, shared: dict[str, Any]
) -> Any:
    values = {key: value for key, value in shared.items() if value is not None}
    for item in fields(arguments_class):
        value = getattr(namespace, f"{prefix}__{item.name}")
        if value is not None:
            values[item.name] = value
    return arguments_class(**values)


def _data_specs(values: list[str] | None, default: list[str]) -> list[str]:
    if not values:
        return default
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _load(specs: list[str], seed: int) -> list:
    from serac.data import load_examples

    examples = []
    for spec in specs:
        loaded = load_examples(spec, seed=seed)
        logger.info("%s: %d edit examples", spec, len(loaded))
        examples.extend(loaded)
    return examples


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m serac.train`` and ``serac-train``; returns the exit status."""
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
        scope_arguments = _arguments(namespace, "scope", ScopeTrainingArguments, shared)
        if namespace.cross_encoder is not None:
            scope_arguments.cross_encoder_name_or_path = namespace.cross_encoder
        if namespace.embedder is not None:
            scope_arguments.embedder_name_or_path = namespace.embedder
        counterfactual_arguments = _arguments(
            namespace, "counterfactual", CounterfactualTrainingArguments, shared
        )
    except (TypeError, ValueError) as error:
        parser.error(str(error))

    from serac.modeling import COUNTERFACTUAL_FOLDER, SCOPE_FOLDER

    seed = namespace.seed if namespace.seed is not None else 0
    try:
        examples = _load(_data_specs(namespace.data, ["synthetic"]), seed)
        eval_examples = _load(_data_specs(namespace.eval_data, []), seed) if namespace.eval_data else None
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if not examples:
        parser.error("the training data holds no edit examples")

    output_dir = Path(namespace.output_dir)
    config_path = train_editor(
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
        print(f"\n{output_dir} lacks a trained part; train it with --parts before loading the directory.")
    else:
        print(f"\nEditor written to {output_dir}. Load it with:\n"
              f"    EditableModel.from_pretrained(base_model, {str(output_dir)!r})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
