"""Settings of a benchmark invocation, checked before any model is loaded."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serac.editors import available_editors

logger = logging.getLogger(__name__)

__all__ = [
    "BASE_METHOD",
    "DEFAULT_MAX_EDITS",
    "SERAC_METHOD",
    "BenchmarkConfig",
    "BenchmarkError",
    "available_methods",
    "editor_names",
    "progress",
    "validate_config",
]

BASE_METHOD = "base"
SERAC_METHOD = "serac"
DATASETS: tuple[str, ...] = ("mquake", "zsre", "counterfact", "synthetic", "jsonl")
MODES: tuple[str, ...] = ("batch", "sequential")
EDIT_FORMS: tuple[str, ...] = ("prompt", "statement", "question")
PROMPT_FORMATS: tuple[str, ...] = ("auto", "raw", "chat")
DEFAULT_METHODS: tuple[str, ...] = ("base", "serac", "cache", "ft", "rome", "memit")
DEFAULT_NUM_EDITS = "1,10"
DEFAULT_LIMIT_QUERIES = 10
DEFAULT_OUTPUT = "benchmark-results/results.json"
#: How many edits each method is run with at most, unless ``--max-edits`` says otherwise. Weight editors
#: on CPU take seconds per edit; SERAC and the cache only store the edits.
DEFAULT_MAX_EDITS: dict[str, int | None] = {
    "base": None,
    "serac": 10_000,
    "cache": 10_000,
    "ft": 100,
    "rome": 100,
    "memit": 1_000,
}
#: The benchmark's synthetic data is generated with seed ``SYNTHETIC_SEED_OFFSET + --seed``, away from the
#: seeds training uses (the default SERAC parts are trained on seed 0), so it is held-out data.
SYNTHETIC_SEED_OFFSET = 10_000
#: Kinds of ``--background`` data: ``synthetic:N`` or ``KIND:PATH`` of a dataset file.
BACKGROUND_KINDS: tuple[str, ...] = ("synthetic", "mquake", "zsre", "counterfact", "jsonl")
#: Seed offset of synthetic background edits, apart from the evaluated synthetic data and from training.
BACKGROUND_SEED_OFFSET = 20_000
#: Cap of a method not listed above (a later editor from the registry).
DEFAULT_EDITOR_MAX_EDITS = 100


class BenchmarkError(ValueError):
    """Bad benchmark settings or data, detected before any model is loaded."""


@dataclass
class BenchmarkConfig:
    """Settings of one benchmark invocation (the CLI options; see ``--help``).

    ``num_edits`` holds positive integers and ``None`` for "all examples of the dataset"; ``max_edits`` maps
    a method to its cap (``None``: no cap); methods not in it get :data:`DEFAULT_MAX_EDITS`.
    """

    dataset: str = "synthetic"
    data_path: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    num_edits: tuple[int | None, ...] = (1, 10)
    mode: str = "batch"
    seed: int = 0
    model: str | None = None
    serac_path: str | None = None
    counterfactual: str | None = None
    output: str = DEFAULT_OUTPUT
    max_new_tokens: int = 32
    match_window: int | None = None
    limit_queries: int | None = DEFAULT_LIMIT_QUERIES
    max_edits: dict[str, int | None] = field(default_factory=dict)
    synthetic_size: int | None = None
    edit_form: str = "prompt"
    prompt_format: str = "auto"
    probabilities: bool | None = None
    editor_hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str | None = None
    threads: int | None = None
    latency_pairs: int = 10
    generation_batch_size: int = 1
    save_generations: bool = False
    plots: bool = True
    progress: bool = True
    background: tuple[str, ...] = ()
    held_out_subjects: float | None = None

    def caps(self) -> dict[str, int | None]:
        """The edit cap of every requested method."""
        caps = {}
        for method in self.methods:
            if method in self.max_edits:
                caps[method] = self.max_edits[method]
            else:
                caps[method] = DEFAULT_MAX_EDITS.get(method, DEFAULT_EDITOR_MAX_EDITS)
        return caps


def available_methods() -> list[str]:
    """``base``, ``serac`` and every editor in the :mod:`serac.editors` registry."""
    return [
        BASE_METHOD,
        SERAC_METHOD,
        *(name for name in editor_names() if name not in (BASE_METHOD, SERAC_METHOD)),
    ]


def editor_names() -> list[str]:
    """The registry names of :mod:`serac.editors`."""
    return available_editors()


def validate_config(config: BenchmarkConfig, known_methods: Sequence[str] | None = None) -> None:
    """Raise :class:`BenchmarkError` on any bad setting; nothing is loaded here but small files."""
    if config.dataset not in DATASETS:
        raise BenchmarkError(f"unknown dataset {config.dataset!r}; choose one of {', '.join(DATASETS)}")
    if config.dataset == "synthetic":
        if config.data_path is not None:
            raise BenchmarkError("--data-path is not used with --dataset synthetic (the data is generated)")
    else:
        if config.data_path is None:
            raise BenchmarkError(f"--dataset {config.dataset} needs --data-path")
        path = Path(config.data_path)
        if not path.is_file():
            raise BenchmarkError(f"data file not found: {path}")
    if not config.methods:
        raise BenchmarkError("--methods is empty")
    known = list(known_methods) if known_methods is not None else available_methods()
    unknown = [method for method in config.methods if method not in known]
    if unknown:
        raise BenchmarkError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(known)}")
    if len(set(config.methods)) != len(config.methods):
        raise BenchmarkError(f"--methods lists a method twice: {','.join(config.methods)}")
    if not config.num_edits:
        raise BenchmarkError("--num-edits is empty")
    for value in config.num_edits:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BenchmarkError(f"--num-edits takes positive integers or 'all', got {value!r}")
    if config.mode not in MODES:
        raise BenchmarkError(f"--mode must be one of {MODES}, got {config.mode!r}")
    if config.edit_form not in EDIT_FORMS:
        raise BenchmarkError(f"--edit-form must be one of {EDIT_FORMS}, got {config.edit_form!r}")
    if config.counterfactual not in (None, "trained", "in-context"):
        raise BenchmarkError(
            f"--counterfactual must be 'trained' or 'in-context', got {config.counterfactual!r}"
        )
    if config.prompt_format not in PROMPT_FORMATS:
        raise BenchmarkError(f"--prompt-format must be one of {PROMPT_FORMATS}, got {config.prompt_format!r}")
    if config.max_new_tokens < 1:
        raise BenchmarkError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}")
    if config.match_window is not None and config.match_window < 1:
        raise BenchmarkError(f"--match-window must be >= 1, got {config.match_window}")
    if config.limit_queries is not None and config.limit_queries < 1:
        raise BenchmarkError(f"--limit-queries must be >= 1 (or 0 for no limit), got {config.limit_queries}")
    if config.synthetic_size is not None and config.synthetic_size < 1:
        raise BenchmarkError(f"--synthetic-size must be >= 1, got {config.synthetic_size}")
    if config.generation_batch_size < 1:
        raise BenchmarkError(f"--generation-batch-size must be >= 1, got {config.generation_batch_size}")
    if config.latency_pairs < 0:
        raise BenchmarkError(f"--latency-pairs must be >= 0, got {config.latency_pairs}")
    for spec in config.background:
        kind, _, argument = spec.partition(":")
        if kind not in BACKGROUND_KINDS:
            raise BenchmarkError(
                f"--background {spec!r}: the kind must be one of {', '.join(BACKGROUND_KINDS)}"
            )
        if kind == "synthetic":
            if not argument.isdigit() or int(argument) < 1:
                raise BenchmarkError(f"--background {spec!r}: synthetic takes a number of edits")
        elif not Path(argument).is_file():
            raise BenchmarkError(f"--background {spec!r}: data file not found")
    if config.held_out_subjects is not None and not 0.0 < config.held_out_subjects <= 1.0:
        raise BenchmarkError(f"--held-out-subjects must be in (0, 1], got {config.held_out_subjects}")
    if config.threads is not None and config.threads < 1:
        raise BenchmarkError(f"--threads must be >= 1, got {config.threads}")
    for method, cap in config.max_edits.items():
        if method not in known:
            raise BenchmarkError(f"--max-edits names an unknown method {method!r}")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise BenchmarkError(f"--max-edits {method} must be a positive integer or 'none', got {cap!r}")
    for method, hyperparameters in config.editor_hparams.items():
        if method not in known or method in (BASE_METHOD, SERAC_METHOD):
            raise BenchmarkError(
                f"--editor-hparams has settings for {method!r}, which is not a weight editor"
            )
        if not isinstance(hyperparameters, Mapping):
            raise BenchmarkError(f"--editor-hparams: the settings of {method!r} must be a JSON object")
    if (
        config.serac_path is not None
        and SERAC_METHOD in config.methods
        and not Path(config.serac_path).is_dir()
    ):
        raise BenchmarkError(f"--serac-path is not a directory: {config.serac_path}")
    if config.device is not None:
        try:
            torch.device(config.device)
        except (RuntimeError, TypeError) as error:
            raise BenchmarkError(f"--device {config.device!r} is not a torch device: {error}") from error


def progress(items: Iterable[Any], enabled: bool, description: str, **kwargs: Any) -> Iterable[Any]:
    """``items`` with a progress bar on stderr when ``enabled`` (``BenchmarkConfig.progress``)."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, file=sys.stderr, **kwargs)
