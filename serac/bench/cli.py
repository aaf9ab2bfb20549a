"""Command line of the benchmark runner: ``serac bench`` (or ``python -m serac.bench``).

Usage::

    serac bench                         # default comparison on synthetic data (offline)
    serac bench --dataset mquake --data-path ../shared/data/mquake-cf-dev.json \\
        --methods base,serac,rome,memit --num-edits 1,10,100 --output results/mquake.json
    serac bench --methods base,serac --num-edits 10,100,1000,10000 --limit-queries 100

Settings are checked before any model is loaded: an unknown method, a missing data file or a malformed
option fails at once. Outputs: a JSON file, a Markdown table and one PNG plot per metric.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from transformers import HfArgumentParser

from serac.bench.config import (
    DATASETS,
    DEFAULT_LIMIT_QUERIES,
    DEFAULT_MAX_EDITS,
    DEFAULT_METHODS,
    DEFAULT_NUM_EDITS,
    DEFAULT_OUTPUT,
    EDIT_FORMS,
    MODES,
    PROMPT_FORMATS,
    BenchmarkConfig,
    BenchmarkError,
    available_methods,
    validate_config,
)
from serac.bench.data import load_benchmark_examples
from serac.bench.report import markdown_table, plot_metrics
from serac.bench.runner import run_benchmark
from serac.files import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

__all__ = ["build_parser", "config_from_args", "main", "parse_args", "parse_max_edits", "parse_num_edits"]


def parse_num_edits(text: str) -> tuple[int | None, ...]:
    settings: list[int | None] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.lower() == "all":
            value: int | None = None
        elif item.isdigit() and int(item) >= 1:
            value = int(item)
        else:
            raise BenchmarkError(f"--num-edits takes positive integers or 'all', got {item!r}")
        if value not in settings:
            settings.append(value)
    if not settings:
        raise BenchmarkError("--num-edits is empty")
    return tuple(sorted(settings, key=lambda value: math.inf if value is None else value))


def parse_max_edits(text: str | None) -> dict[str, int | None]:
    caps: dict[str, int | None] = {}
    if not text:
        return caps
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        method, separator, value = item.partition("=")
        if not separator:
            raise BenchmarkError(f"--max-edits takes METHOD=N pairs, got {item!r}")
        value = value.strip().lower()
        if value in ("none", "all", "inf"):
            caps[method.strip()] = None
        elif value.isdigit() and int(value) >= 1:
            caps[method.strip()] = int(value)
        else:
            raise BenchmarkError(
                f"--max-edits {method.strip()} must be a positive integer or 'none', got {value!r}"
            )
    return caps


def _methods_from_arg(text: str | None) -> tuple[str, ...]:
    """The ``--methods`` list; without the option, the default methods that are installed."""
    if text is not None:
        return tuple(method.strip() for method in text.split(",") if method.strip())
    known = set(available_methods())
    missing = [method for method in DEFAULT_METHODS if method not in known]
    if missing:
        logger.warning("Default methods not available here and left out: %s", ", ".join(missing))
    return tuple(method for method in DEFAULT_METHODS if method in known)


def _read_editor_hparams(path: str | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise BenchmarkError(f"--editor-hparams file not found: {file}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BenchmarkError(f"--editor-hparams is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise BenchmarkError("--editor-hparams must hold a JSON object: {method: {name: value}}")
    return data


class _DefaultsOnceFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help unless the help already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _option(help_text: str, default: Any = None, **argparse_options: Any) -> Any:
    factory = argparse_options.pop("default_factory", None)
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help_text, **argparse_options})
    return field(default=default, metadata={"help": help_text, **argparse_options})


@dataclass
class DataArguments:
    _argument_group_name: ClassVar[str] = "data"

    dataset: str = _option("which benchmark format to read", "synthetic", choices=DATASETS)
    data_path: str | None = _option("the dataset file (not for synthetic)")
    synthetic_size: int | None = _option(
        "synthetic examples to generate (default: the largest --num-edits, or 1000)"
    )
    edit_form: str = _option(
        "edits as prompts with targets (all methods), as statements, or as their own question without a "
        "subject (SERAC and cache)",
        "prompt",
        choices=EDIT_FORMS,
    )
    background: list[str] = _option(
        "extra edits stored but not evaluated, so the evaluated edits live in a large edit store: "
        "synthetic:N or mquake|zsre|counterfact|jsonl:PATH; repeatable (SERAC only)",
        default_factory=list,
        action="append",
    )
    held_out_subjects: float | None = _option(
        "evaluate only the edits of this share of subjects (serac.data.split_by_subject, seed 0; the "
        "share a SERAC folder trained with the same split never saw); all edits are still stored"
    )


@dataclass
class RunArguments:
    _argument_group_name: ClassVar[str] = "runs"

    methods: str | None = _option(
        f"comma list of base, serac and registered editors (default: {','.join(DEFAULT_METHODS)}, "
        "those installed)"
    )
    num_edits: str = _option("comma list of edit counts, or 'all'", DEFAULT_NUM_EDITS)
    mode: str = _option(
        "batch: all edits at once; sequential: one after another, metrics after the last",
        "batch",
        choices=MODES,
    )
    max_edits: str | None = _option(
        "per-method caps as METHOD=N pairs (default: "
        + ",".join(f"{k}={v}" for k, v in DEFAULT_MAX_EDITS.items() if v is not None)
        + ")"
    )
    seed: int = _option("seeds the edit order, data sampling and editors", 0)
    editor_hparams: str | None = _option("JSON file {method: {hyperparameter: value}}")


@dataclass
class ModelArguments:
    _argument_group_name: ClassVar[str] = "models"

    model: str | None = _option(
        "base model name or path, or a packaged model's name: gemma3-270m (default: offline SmolLM2-135M)"
    )
    serac_path: str | None = _option("a saved SERAC folder (default: the default trained parts)")
    counterfactual: str | None = _option(
        "who answers in-scope queries: the folder's trained counterfactual model ('trained') or the base "
        "model reading the edit ('in-context'); default: what the folder says",
        choices=["trained", "in-context"],
    )
    device: str | None = _option("torch device for the base model (default: where it loads)")
    threads: int | None = _option("torch CPU threads")


@dataclass
class EvaluationArguments:
    _argument_group_name: ClassVar[str] = "evaluation"

    max_new_tokens: int = _option("tokens generated per query", 32)
    match_window: int | None = _option("the answer must start within this many words (default: anywhere)")
    limit_queries: int = _option("queries per metric and setting (0: all)", DEFAULT_LIMIT_QUERIES)
    latency_pairs: int = _option(
        "queries per run on which a wrapping method (serac, cache) is timed right after the base model", 10
    )
    generation_batch_size: int = _option(
        "queries answered per generate() call; above 1, whole datasets run several times faster, no query "
        "is timed on its own (no latency pairs) and latency is per batch row",
        1,
    )
    prompt_format: str = _option(
        "raw text, the tokenizer's chat template around each query, or auto: the chat template for "
        "questions (ending in '?') and raw text for cloze prompts",
        "auto",
        choices=PROMPT_FORMATS,
    )
    probabilities: bool | None = _option(
        "ROME's P(new) > P(true) comparisons; '--probabilities false' turns them off (default: on for "
        "counterfact)",
        nargs="?",
        const=True,
    )


@dataclass
class OutputArguments:
    _argument_group_name: ClassVar[str] = "output"

    output: str = _option("results JSON; the .md table and plots go beside it", DEFAULT_OUTPUT)
    save_generations: bool = _option("keep every query's generation in the JSON", False)
    no_plots: bool = _option("skip the PNG plots", False)
    no_progress: bool = _option("no progress bars", False)
    verbose: bool = _option("debug logging", False)


def build_parser() -> HfArgumentParser:
    """The ``serac bench`` command line."""
    return HfArgumentParser(
        [DataArguments, RunArguments, ModelArguments, EvaluationArguments, OutputArguments],
        prog="serac bench",
        description="Compare SERAC with weight editors (ROME, MEMIT, fine-tuning, a cache) on the same edits.",
        formatter_class=_DefaultsOnceFormatter,
    )


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """A validated :class:`BenchmarkConfig` from parsed arguments (raises :class:`BenchmarkError`)."""
    config = BenchmarkConfig(
        dataset=args.dataset,
        data_path=args.data_path,
        methods=_methods_from_arg(args.methods),
        num_edits=parse_num_edits(args.num_edits),
        mode=args.mode,
        seed=args.seed,
        model=args.model,
        serac_path=args.serac_path,
        counterfactual=args.counterfactual,
        output=args.output,
        max_new_tokens=args.max_new_tokens,
        match_window=args.match_window,
        limit_queries=None if args.limit_queries == 0 else args.limit_queries,
        max_edits=parse_max_edits(args.max_edits),
        synthetic_size=args.synthetic_size,
        edit_form=args.edit_form,
        prompt_format=args.prompt_format,
        probabilities=args.probabilities,
        editor_hparams=_read_editor_hparams(args.editor_hparams),
        device=args.device,
        threads=args.threads,
        latency_pairs=args.latency_pairs,
        generation_batch_size=args.generation_batch_size,
        save_generations=args.save_generations,
        plots=not args.no_plots,
        progress=not args.no_progress,
        # Repeated options come as a list per use (append of nargs="+"): flatten them.
        background=tuple(
            spec for use in args.background or () for spec in ([use] if isinstance(use, str) else use)
        ),
        held_out_subjects=args.held_out_subjects,
    )
    validate_config(config)
    return config


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``serac bench`` arguments."""
    return build_parser().parse_args(argv)


def write_outputs(
    result: Mapping[str, Any], output: str | os.PathLike, *, plots: bool = True
) -> dict[str, Any]:
    """Write the JSON, the Markdown table (``.md`` beside it) and the plots; returns their paths."""
    json_path = Path(output)
    written: dict[str, Any] = {"json": write_json_atomic(json_path, result)}
    written["markdown"] = write_text_atomic(json_path.with_suffix(".md"), markdown_table(result))
    if plots:
        written["plots"] = plot_metrics(result, json_path.parent, json_path.stem)
    return written


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """``serac bench`` / ``python -m serac.bench``: run the comparison, write and print the results."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
        examples = load_benchmark_examples(config)
    except (BenchmarkError, FileNotFoundError) as error:
        parser.error(str(error))
    except ValueError as error:  # malformed data file
        parser.error(f"cannot read the {args.dataset} data: {error}")

    if config.plots and not _can_plot():
        # Found out now, not after a run of hours: the results are written, the plots left out.
        logger.warning("matplotlib is not installed: no plots (pip install 'serac-memory[bench]')")
        config.plots = False
    output = Path(config.output)

    def save_partial(partial: dict[str, Any]) -> None:
        write_json_atomic(output, partial)

    started = time.perf_counter()
    result = run_benchmark(config, examples=examples, on_update=save_partial)
    result["config"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    written = write_outputs(result, output, plots=config.plots)
    print(markdown_table(result))
    print(f"Results: {written['json']}")
    print(f"Table:   {written['markdown']}")
    for path in written.get("plots", []):
        print(f"Plot:    {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
