"""Compare SERAC with weight editors on the same base model, the same edits and the same queries.

For every method and every number of edits, the runner applies the edits (all at once, or one after
another in ``--mode sequential``), generates an answer to each evaluation query (batch size 1, greedy, the
same ``--max-new-tokens`` for every method), scores the answers with :mod:`serac.metrics`, and undoes the
edits before the next setting (weight editors restore their weights; SERAC starts from an empty edit
store), so every setting is independent. Outputs: a JSON file, a Markdown table and one PNG plot per metric.

Usage::

    python -m benchmarks.run                         # default comparison on synthetic data (offline)
    python -m benchmarks.run --dataset mquake --data-path ../shared/data/mquake-cf-dev.json \\
        --methods base,serac,rome,memit --num-edits 1,10,100 --output results/mquake.json
    python -m benchmarks.run --methods base,serac --num-edits 10,100,1000,10000 --limit-queries 100

Settings are checked before any model is loaded: an unknown method, a missing data file or a malformed
option fails at once.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from abc import ABC, abstractmethod  # noqa: E402
from collections.abc import Callable, Iterable, Mapping, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.report import markdown_table, plot_metrics, write_json_atomic, write_text_atomic  # noqa: E402
from serac.data.schema import EditExample, OutOfScopeQuery  # noqa: E402
from serac.offline import load_base_model  # noqa: E402
from serac.edits import Edit, normalize_text  # noqa: E402
from serac.metrics import answer_matches, answers_agree, latency_summary, percentile, rate, target_logprob  # noqa: E402

logger = logging.getLogger(__name__)

__all__ = [
    "BenchmarkConfig",
    "BenchmarkError",
    "available_methods",
    "load_benchmark_examples",
    "main",
    "parse_args",
    "run_benchmark",
]

BASE_METHOD = "base"
SERAC_METHOD = "serac"
DATASETS: tuple[str, ...] = ("mquake", "zsre", "counterfact", "synthetic", "jsonl")
MODES: tuple[str, ...] = ("batch", "sequential")
EDIT_FORMS: tuple[str, ...] = ("prompt", "statement")
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
#: Cap of a method not listed above (a later editor from the registry).
DEFAULT_EDITOR_MAX_EDITS = 100
#: In-scope query kinds that count as paraphrases: other wordings whose answer is the new target. ``yes_no``
#: (answer "yes"/"no") and ``generation`` (open prompts with no exact answer) are not paraphrases.
PARAPHRASE_KINDS = frozenset({"question", "cloze", "paraphrase"})
#: Query kinds whose probability comparison (ROME's scores) is reported as a paraphrase.
_EFFICACY_KIND = "edit"


class BenchmarkError(ValueError):
    """Bad benchmark settings or data, detected before any model is loaded."""


# ----------------------------------------------------------------------------------------------- config


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
    output: str = DEFAULT_OUTPUT
    max_new_tokens: int = 16
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
    save_generations: bool = False
    plots: bool = True
    progress: bool = True

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
        *(name for name in _editor_names() if name not in (BASE_METHOD, SERAC_METHOD)),
    ]


def _editor_names() -> list[str]:
    try:
        import serac.editors as editors
    except ImportError as error:
        logger.warning("The weight editors are not available (%s)", error)
        return []
    for attribute in ("available_editors", "list_editors"):
        if callable(getattr(editors, attribute, None)):
            return list(getattr(editors, attribute)())
    for attribute in ("EDITORS", "REGISTRY", "EDITOR_REGISTRY"):
        if isinstance(getattr(editors, attribute, None), Mapping):
            return list(getattr(editors, attribute))
    return []


def _get_editor(name: str, **hyperparameters: Any) -> Any:
    from serac.editors import get_editor

    return get_editor(name, **hyperparameters)


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
    if config.latency_pairs < 0:
        raise BenchmarkError(f"--latency-pairs must be >= 0, got {config.latency_pairs}")
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


# ----------------------------------------------------------------------------------------------- data


def load_benchmark_examples(config: BenchmarkConfig) -> list[EditExample]:
    """The dataset's examples in the internal schema, with edits in the requested form.

    ``--edit-form prompt`` keeps examples whose edit is a prompt with a target (what weight editors need);
    ``statement`` turns every edit into its one-sentence statement (the edit prompt stays an in-scope query).
    """
    from serac.data import loaders

    if config.dataset == "synthetic":
        from serac.data.synthetic import SyntheticDataConfig, generate_synthetic_examples

        size = config.synthetic_size or _default_synthetic_size(config.num_edits)
        # Weight editors need prompt edits: generate no statement-form edits rather than dropping them.
        synthetic = SyntheticDataConfig(statement_fraction=0.0) if config.edit_form == "prompt" else None
        examples = generate_synthetic_examples(
            size, seed=SYNTHETIC_SEED_OFFSET + config.seed, config=synthetic
        )
        if SERAC_METHOD in config.methods and config.serac_path is None:
            examples = _held_out_from_default_training(examples)
    elif config.dataset == "mquake":
        examples = loaders.load_mquake(config.data_path, seed=config.seed)
    elif config.dataset == "zsre":
        examples = loaders.load_zsre(config.data_path)
    elif config.dataset == "counterfact":
        examples = loaders.load_counterfact(config.data_path)
    else:
        examples = loaders.load_examples_jsonl(config.data_path)
    if config.edit_form == "statement":
        converted = []
        for example in examples:
            try:
                converted.append(example.as_statement_edit())
            except ValueError:
                logger.debug("example %s has no statement form; skipped", example.case_id)
        dropped = len(examples) - len(converted)
        examples = converted
    else:
        kept = [example for example in examples if not example.edit.is_statement]
        dropped = len(examples) - len(kept)
        examples = kept
    if dropped:
        logger.warning("Dropped %d examples without a %s form of their edit", dropped, config.edit_form)
    if not examples:
        raise BenchmarkError(f"no usable edit examples in the {config.dataset} data")
    return examples


def _held_out_from_default_training(examples: list[EditExample]) -> list[EditExample]:
    """Drop examples whose edit the default SERAC parts were trained on (same prompt and subject).

    The default parts are trained on synthetic data of another seed; the generator can still draw the same
    invented (subject, relation) pair twice, and such an edit would not measure generalization.
    """
    from serac.training import recipe as defaults
    from serac.data.synthetic import generate_synthetic_examples

    size = getattr(defaults, "DEFAULT_SYNTHETIC_EDITS", None)
    if size is None:
        return examples
    seed = getattr(defaults, "DEFAULT_TRAINING_SEED", 0)
    trained = {example.edit.key for example in generate_synthetic_examples(size, seed=seed)}
    kept = [example for example in examples if example.edit.key not in trained]
    if len(kept) < len(examples):
        logger.info(
            "Left out %d synthetic edits the default SERAC parts were trained on", len(examples) - len(kept)
        )
    return kept


def _default_synthetic_size(settings: Sequence[int | None]) -> int:
    # A small margin covers the few examples dropped as seen in training or as conflicting.
    numbers = [value for value in settings if value is not None]
    largest = max(numbers) if numbers else 1000
    return largest + largest // 20 + 5


@dataclass(frozen=True)
class EvalQuery:
    """One evaluation query: its text, the answers that count (none for locality), and what it belongs to.

    ``target_new``/``target_true`` feed the probability comparison; ``group`` ties portability questions of
    one multi-hop case together; ``hard`` marks out-of-scope queries that share words with the edit.
    """

    text: str
    answers: tuple[str, ...] = ()
    group: str | None = None
    target_new: str | None = None
    target_true: str | None = None
    hard: bool = False


@dataclass
class Setting:
    """The edits of one number-of-edits setting and the queries evaluated on them."""

    num_edits: int
    edits: list[Edit]
    efficacy: list[EvalQuery]
    paraphrase: list[EvalQuery]
    locality: list[EvalQuery]
    portability: list[EvalQuery]

    def all_queries(self) -> list[tuple[str, EvalQuery]]:
        return [
            (metric, query)
            for metric in ("efficacy", "paraphrase", "locality", "portability")
            for query in getattr(self, metric)
        ]


def _round_robin(lists: Sequence[Sequence[Any]], limit: int | None) -> list[Any]:
    """One item of each list in turn: a limited sample spreads over all examples instead of the first few."""
    picked: list[Any] = []
    depth = 0
    while any(depth < len(items) for items in lists):
        for items in lists:
            if depth < len(items):
                picked.append(items[depth])
                if limit is not None and len(picked) >= limit:
                    return picked
        depth += 1
    return picked


def order_examples(examples: Sequence[EditExample], seed: int) -> tuple[list[EditExample], int]:
    """Shuffle examples by case (a case's examples stay together) and drop conflicting edits.

    A later example whose edit has the key of an earlier one with another target would contradict it; it is
    dropped. Returns the ordered examples and how many were dropped. Every setting takes a prefix of this
    order, so the edits of a smaller setting are part of every larger one.
    """
    groups: dict[str, list[EditExample]] = {}
    for index, example in enumerate(examples):
        key = f"{example.source}:{example.case_id}" if example.case_id is not None else f"#{index}"
        groups.setdefault(key, []).append(example)
    order = list(groups)
    random.Random(seed).shuffle(order)
    targets: dict[str, str | None] = {}
    ordered, dropped = [], 0
    for key in order:
        for example in groups[key]:
            edit_key = example.edit.key
            if edit_key in targets and targets[edit_key] != example.edit.target:
                dropped += 1
                continue
            targets[edit_key] = example.edit.target
            ordered.append(example)
    return ordered, dropped


def _efficacy_query(example: EditExample) -> EvalQuery | None:
    edit = example.edit
    own = [query for query in example.in_scope if query.kind == _EFFICACY_KIND]
    if not edit.is_statement:
        matching = [query for query in example.in_scope if normalize_text(query.text) == edit.key]
        aliases = tuple(alias for query in matching for alias in query.aliases)
        answers = tuple(dict.fromkeys((edit.target, *aliases)))
        return EvalQuery(edit.query, answers, target_new=edit.target, target_true=example.true_answer)
    if own:
        query = own[0]
        return EvalQuery(query.text, query.answers, target_new=query.answer, target_true=example.true_answer)
    return None


def _evenly_spaced(items: Sequence[Any], limit: int | None) -> list[Any]:
    """``limit`` items spread evenly over ``items`` (all of them if there are not more), first one included."""
    if limit is None or len(items) <= limit:
        return list(items)
    return [items[(index * len(items)) // limit] for index in range(limit)]


def build_setting(
    ordered: Sequence[EditExample], num_edits: int, limit: int | None, *, probabilities: bool
) -> Setting:
    """The first ``num_edits`` examples' edits and a sample of at most ``limit`` queries per metric.

    The sample comes from ``limit`` edited examples spread evenly over the order the edits are applied in,
    so sequential runs measure early edits as well as late ones. Out-of-scope queries that are in the scope
    of any applied edit (the same text as an applied edit's prompt or in-scope query) are left out: their
    answer is supposed to change. Portability questions are asked only when all edits of their case
    (the example's ``companion_edits``) are applied.
    """
    # Examples of one case may share an edit (MQuAKE reuses rewrites): count and apply distinct edits.
    chosen: list[EditExample] = []
    edits: list[Edit] = []
    seen: set[Edit] = set()
    for example in ordered:
        if example.edit not in seen:
            if len(edits) == num_edits:
                break
            seen.add(example.edit)
            edits.append(example.edit)
        chosen.append(example)
    evaluated = _evenly_spaced(chosen, limit)
    applied = set(edits)
    in_scope_keys = {example.edit.key for example in chosen}
    for example in chosen:
        in_scope_keys.update(normalize_text(query.text) for query in example.in_scope)

    efficacy = [query for query in map(_efficacy_query, evaluated) if query is not None][:limit]
    paraphrase_lists = []
    locality_lists = []
    portability_lists = []
    seen_portability: set[str] = set()
    for example in evaluated:
        true_answer = example.true_answer if probabilities else None
        paraphrase_lists.append(
            [
                EvalQuery(query.text, query.answers, target_new=query.answer, target_true=true_answer)
                for query in example.in_scope
                if query.kind in PARAPHRASE_KINDS and normalize_text(query.text) != example.edit.key
            ]
        )
        locality_lists.append(
            [
                _locality_query(query, example, probabilities)
                for query in example.out_of_scope
                if normalize_text(query.text) not in in_scope_keys
            ]
        )
        if example.portability and all(edit in applied for edit in example.companion_edits):
            group = f"{example.source}:{example.case_id}"
            questions = []
            for question in example.portability:
                key = normalize_text(question.text)
                if key not in seen_portability:
                    seen_portability.add(key)
                    questions.append(EvalQuery(question.text, question.answers, group=group))
            portability_lists.append(questions)
    return Setting(
        num_edits=len(edits),
        edits=edits,
        efficacy=efficacy,
        paraphrase=_round_robin(paraphrase_lists, limit),
        locality=_round_robin(locality_lists, limit),
        portability=_round_robin(portability_lists, limit),
    )


def _locality_query(query: OutOfScopeQuery, example: EditExample, probabilities: bool) -> EvalQuery:
    # ROME's neighborhood score compares the query's own (true) answer with the edit's new target; an
    # out-of-scope query whose answer *is* the new target (CounterFact's attribute prompts) has no contrast.
    contrast = probabilities and query.answer is not None and query.answer != example.edit.target
    return EvalQuery(
        query.text,
        answers=(query.answer, *query.aliases) if query.answer is not None else (),
        target_new=example.edit.target if contrast else None,
        target_true=query.answer if contrast else None,
        hard=query.is_hard,
    )


# ----------------------------------------------------------------------------------------------- methods


class Method(ABC):
    """How the runner applies edits with one method and undoes them between settings."""

    name: str
    supports_batch: bool = True
    supports_sequential: bool = True

    @abstractmethod
    def apply(self, edits: Sequence[Edit], mode: str, progress: bool) -> tuple[Any, dict[str, Any]]:
        """Apply the edits; return an object with ``generate()`` and facts about the application."""

    @abstractmethod
    def reset(self) -> None:
        """Undo every edit applied since the last reset."""

    def scorer(self, generator: Any) -> Callable[[str, str], float] | None:
        """Mean target log-probability after a prompt through the edited model, if the method exposes it."""
        return None

    def diagnostics(self, generator: Any) -> dict[str, Any] | None:
        """Per-query facts worth recording after each ``generate()`` (SERAC: the routing)."""
        return None

    def skip_reason(self, num_edits: int, mode: str) -> str | None:
        """Why this method cannot run a setting, or ``None``."""
        if mode == "sequential" and not self.supports_sequential and num_edits > 1:
            return f"{self.name} cannot apply edits one after another without restoring"
        if mode == "batch" and not self.supports_batch and not self.supports_sequential and num_edits > 1:
            return f"{self.name} applies neither several edits at once nor one after another"
        return None


class BaseMethod(Method):
    """The unedited base model: the reference for locality and latency."""

    name = BASE_METHOD

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def apply(self, edits: Sequence[Edit], mode: str, progress: bool) -> tuple[Any, dict[str, Any]]:
        return self.model, {}

    def reset(self) -> None:
        pass

    def scorer(self, generator: Any) -> Callable[[str, str], float]:
        return lambda prompt, target: target_logprob(self.model, self.tokenizer, prompt, target)


class SeracMethod(Method):
    """SERAC: edits go to the edit store; the base model's weights are never touched."""

    name = SERAC_METHOD

    def __init__(self, editable: Any) -> None:
        self.editable = editable

    def apply(self, edits: Sequence[Edit], mode: str, progress: bool) -> tuple[Any, dict[str, Any]]:
        if mode == "batch":
            self.editable.edit(list(edits))
        else:
            for edit in _progress(edits, progress, "serac: edits", leave=False):
                self.editable.edit([edit])
        return self.editable, {"stored_edits": len(self.editable.store)}

    def reset(self) -> None:
        # A fresh, empty store for the next setting; the trained parts stay loaded.
        self.editable.store.clear()

    def scorer(self, generator: Any) -> Callable[[str, str], float]:
        decisions: dict[str, Any] = {}

        def score(prompt: str, target: str) -> float:
            # Both targets of a prompt are scored under one routing decision (and one retrieval).
            if prompt not in decisions:
                decisions[prompt] = self.editable.route([prompt])[0]
            return routed_target_logprob(self.editable, prompt, target, decision=decisions[prompt])

        return score

    def diagnostics(self, generator: Any) -> dict[str, Any]:
        routing = self.editable.last_routing
        return {"in_scope": bool(routing and routing[0].in_scope)}


class EditorMethod(Method):
    """A weight editor (or the cache baseline) from the :mod:`serac.editors` registry."""

    def __init__(self, name: str, editor: Any, model: Any, tokenizer: Any) -> None:
        self.name = name
        self.editor, self.model, self.tokenizer = editor, model, tokenizer
        self.supports_batch = bool(getattr(editor, "supports_batch", True))
        self.supports_sequential = bool(getattr(editor, "supports_sequential", True))

    def apply(self, edits: Sequence[Edit], mode: str, progress: bool) -> tuple[Any, dict[str, Any]]:
        info: dict[str, Any] = {}
        if mode == "batch" and (self.supports_batch or len(edits) == 1):
            generator = self.editor.apply(self.model, self.tokenizer, list(edits))
            info["editor_stats"] = _jsonable(getattr(self.editor, "last_stats", {}))
            return generator, info
        if mode == "batch":
            # An editor without batch editing (ROME) meets a batch the way its papers do: one edit after
            # another. The run records it.
            info["applied_as"] = "sequential"
        generator = self.model
        stats: list[dict[str, Any]] = []
        for edit in _progress(edits, progress, f"{self.name}: edits", leave=False):
            generator = self.editor.apply(self.model, self.tokenizer, [edit])
            stats.append(_jsonable(getattr(self.editor, "last_stats", {})))
        info["editor_stats"] = _sum_stats(stats)
        return generator, info

    def reset(self) -> None:
        self.editor.restore()

    def scorer(self, generator: Any) -> Callable[[str, str], float] | None:
        # Weight editors return the edited model itself, whose forward pass gives log-probabilities; a
        # wrapper without a forward pass (the cache) has none to give.
        if isinstance(generator, torch.nn.Module) and hasattr(generator, "config"):
            return lambda prompt, target: target_logprob(generator, self.tokenizer, prompt, target)
        return None


def routed_target_logprob(editable: Any, prompt: str, target: str, *, decision: Any = None) -> float:
    """Mean log-probability of ``target`` after ``prompt`` as SERAC would answer it.

    The scope classifier routes the prompt (unless its ``decision`` is given): in scope of an edit, the
    counterfactual model scores the target given that edit (teacher-forced, its own input format);
    otherwise the base model scores it.
    """
    if decision is None:
        decision = editable.route([prompt])[0]
    if not decision.in_scope or decision.edit is None:
        return target_logprob(editable.base_model, editable.tokenizer, prompt, target)
    counterfactual = editable.counterfactual_model
    features = counterfactual.training_features([decision.edit], [prompt], [target])
    labels = features.pop("labels")
    with torch.no_grad():
        logits = counterfactual.model(
            **features, **({"labels": labels} if counterfactual.is_encoder_decoder else {})
        )
    logits = logits.logits[0]
    labels = labels[0]
    if not counterfactual.is_encoder_decoder:
        # Position i predicts token i + 1.
        logits, labels = logits[:-1], labels[1:]
    keep = labels != -100
    logprobs = torch.log_softmax(logits[keep].float(), dim=-1)
    return float(logprobs.gather(-1, labels[keep].unsqueeze(-1)).mean())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _sum_stats(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Numbers summed over the editor's calls (seconds add up); anything else from the last call."""
    total: dict[str, Any] = {}
    for entry in stats:
        for key, value in entry.items():
            if (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and isinstance(total.get(key, 0), (int, float))
            ):
                total[key] = total.get(key, 0) + value
            else:
                total[key] = value
    return total


def _progress(items: Iterable[Any], enabled: bool, description: str, **kwargs: Any) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, file=sys.stderr, **kwargs)


# ----------------------------------------------------------------------------------------------- generation


@dataclass
class QueryFormatter:
    """Turns a query text into model inputs the same way for every method.

    ``raw``: the text itself. ``chat``: the text as the user turn of the tokenizer's chat template.
    ``auto``: questions (text ending in "?") in the chat template, when the tokenizer has one, since an
    instruction-tuned model answers questions there and often stops at once on a bare question; cloze
    prompts as raw text, which such a model continues.
    """

    tokenizer: Any
    prompt_format: str = "auto"

    def uses_chat(self, text: str) -> bool:
        if self.prompt_format == "chat":
            return True
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        return self.prompt_format == "auto" and has_template and text.rstrip().endswith("?")

    def __call__(self, text: str, device: torch.device) -> dict[str, torch.Tensor]:
        if self.uses_chat(text):
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            encoded = self.tokenizer(rendered, return_tensors="pt", add_special_tokens=False)
        else:
            encoded = self.tokenizer(text, return_tensors="pt")
        return {key: encoded[key].to(device) for key in ("input_ids", "attention_mask") if key in encoded}


def generate_answer(
    generator: Any,
    tokenizer: Any,
    inputs: Mapping[str, torch.Tensor],
    max_new_tokens: int,
    *,
    encoder_decoder: bool,
) -> tuple[str, float]:
    """Greedy generation for one query (batch size 1); returns the new text and the seconds it took."""
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        # Greedy decoding: a checkpoint's sampling settings would only trigger warnings.
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    start = time.perf_counter()
    output = generator.generate(**inputs, **kwargs)
    seconds = time.perf_counter() - start
    sequence = (output.sequences if hasattr(output, "sequences") else output)[0]
    prompt = inputs["input_ids"][0]
    if not encoder_decoder and len(sequence) >= len(prompt) and torch.equal(sequence[: len(prompt)], prompt):
        sequence = sequence[len(prompt) :]
    return tokenizer.decode(sequence, skip_special_tokens=True), seconds


# ----------------------------------------------------------------------------------------------- checks


def weights_fingerprint(model: Any) -> list[tuple[str, float, float]]:
    """Per-parameter sum and sum of squares (float64): any edit a restore missed changes them."""
    with torch.no_grad():
        return [
            (name, float(parameter.double().sum()), float(parameter.double().square().sum()))
            for name, parameter in model.named_parameters()
        ]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy ships with torch
        pass


# ----------------------------------------------------------------------------------------------- runner


def load_editable_model(model: Any, tokenizer: Any, serac_path: str | None) -> Any:
    """SERAC around the already loaded base model: parts from ``serac_path`` or the default trained ones."""
    from serac.modeling import EditableModel

    if serac_path is not None:
        editable = EditableModel.from_pretrained(model, serac_path, tokenizer=tokenizer)
    else:
        editable = EditableModel.from_defaults(model, tokenizer=tokenizer)
    if len(editable.store):
        logger.info(
            "Starting SERAC from an empty edit store (the saved one holds %d edits)", len(editable.store)
        )
        editable.store.clear()
    return editable


def _build_method(
    name: str,
    config: BenchmarkConfig,
    model: Any,
    tokenizer: Any,
    editable_factory: Callable[[Any, Any, str | None], Any],
) -> Method:
    if name == BASE_METHOD:
        return BaseMethod(model, tokenizer)
    if name == SERAC_METHOD:
        editable = editable_factory(model, tokenizer, config.serac_path)
        if config.device is not None:
            counterfactual = getattr(editable, "counterfactual_model", None)
            if counterfactual is not None:
                counterfactual.model.to(config.device)
        return SeracMethod(editable)
    editor = _get_editor(name, **config.editor_hparams.get(name, {}))
    return EditorMethod(name, editor, model, tokenizer)


def _environment(model: Any, device: torch.device) -> dict[str, Any]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype),
        "model_parameters": sum(parameter.numel() for parameter in model.parameters()),
    }


def run_benchmark(
    config: BenchmarkConfig,
    *,
    examples: Sequence[EditExample] | None = None,
    model_loader: Callable[[str | None], tuple[Any, Any]] | None = None,
    editable_factory: Callable[[Any, Any, str | None], Any] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every (method, number of edits) setting and return the result dictionary.

    Args:
        config: the settings; validated first.
        examples: the examples to use instead of loading ``config.dataset``.
        model_loader: ``name_or_path -> (model, tokenizer)``; default :func:`serac.defaults.load_base_model`.
        editable_factory: ``(model, tokenizer, serac_path) -> EditableModel``; default
            :func:`load_editable_model`.
        on_update: called with the partial result after every run (the CLI saves it, so a long benchmark
            that is interrupted keeps what it measured).

    Raises:
        BenchmarkError: on bad settings or unusable data, before any model is loaded.
        RuntimeError: if a method left the base model's weights changed after undoing its edits.
    """
    validate_config(config)
    if examples is None:
        examples = load_benchmark_examples(config)
    ordered, conflicts = order_examples(examples, config.seed)
    distinct = len({example.edit for example in ordered})
    settings_requested = list(config.num_edits)
    numbers = sorted({distinct if value is None else min(value, distinct) for value in settings_requested})
    if any(value is not None and value > distinct for value in settings_requested):
        logger.warning(
            "The data has %d distinct usable edits; larger --num-edits settings are cut to it", distinct
        )
    probabilities = (
        config.probabilities if config.probabilities is not None else config.dataset == "counterfact"
    )
    settings = {
        n: build_setting(ordered, n, config.limit_queries, probabilities=probabilities) for n in numbers
    }
    caps = config.caps()

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    loader = model_loader or load_base_model
    model, tokenizer = loader(config.model)
    if config.device is not None:
        model.to(config.device)
    model.eval()
    device = next(model.parameters()).device
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    formatter = QueryFormatter(tokenizer, config.prompt_format)

    result: dict[str, Any] = {
        "config": {
            **{key: value for key, value in asdict(config).items() if key not in ("progress",)},
            "num_edits": settings_requested,
            "num_edits_run": numbers,
            "max_edits": caps,
            "probabilities": probabilities,
            "model_name_or_path": getattr(model, "name_or_path", None) or config.model,
            "usable_examples": len(ordered),
            "usable_edits": distinct,
            "conflicting_examples_dropped": conflicts,
            "environment": _environment(model, device),
        },
        "runs": [],
        "skipped": [],
        "notes": [],
        "complete": False,
    }

    # Locality compares with what the unedited model answers: computed once, before any edit.
    reference_texts = sorted({query.text for setting in settings.values() for query in setting.locality})
    reference: dict[str, str] = {}
    for text in _progress(reference_texts, config.progress, "unedited answers (locality reference)"):
        reference[text], _ = generate_answer(
            model, tokenizer, formatter(text, device), config.max_new_tokens, encoder_decoder=encoder_decoder
        )
    pristine = weights_fingerprint(model)

    factory = editable_factory or load_editable_model
    for method_name in config.methods:
        method: Method | None = None
        # Sequential settings are points along one stream of edits (the literature's sequential-editing
        # curves): the run at 100 edits continues from the state after the first 10 instead of starting over.
        stream = _EditStream() if config.mode == "sequential" else None
        for n in numbers:
            cap = caps[method_name]
            if cap is not None and n > cap:
                result["skipped"].append(
                    {
                        "method": method_name,
                        "num_edits": n,
                        "reason": f"above the cap --max-edits {method_name}={cap}",
                    }
                )
                continue
            if method is None:
                method = _build_method(method_name, config, model, tokenizer, factory)
            reason = method.skip_reason(n, config.mode)
            if reason is not None:
                result["skipped"].append({"method": method_name, "num_edits": n, "reason": reason})
                continue
            run = _run_setting(
                method, settings[n], config, tokenizer, formatter, reference, device, encoder_decoder, model,
                stream=stream,
            )  # fmt: skip
            result["runs"].append(run)
            if stream is not None and "error" in run:
                stream = _EditStream()  # _run_setting undid the edits; the next setting starts over
            if stream is None or "error" in run:
                _check_restored(model, pristine, method_name, n, result, on_update)
            if on_update is not None:
                on_update(result)
        if method is not None and stream is not None and stream.applied:
            method.reset()
            _check_restored(model, pristine, method_name, stream.applied, result, on_update)
    _add_latency_ratios(result["runs"])
    if probabilities:
        unavailable = sorted(
            {
                run["method"]
                for run in result["runs"]
                if (run.get("metrics") or {}).pop("probabilities_unavailable", False)
            }
        )
        if unavailable:
            result["notes"].append(
                f"{', '.join(unavailable)} expose(s) no log-probabilities: P(new)>P(true) is null there"
            )
        if SERAC_METHOD in config.methods:
            result["notes"].append(
                "SERAC's probabilities are routed: in-scope prompts are scored by the counterfactual model "
                "given the edit, others by the base model"
            )
    result["complete"] = True
    return result


def _check_restored(
    model: Any,
    pristine: list[tuple[str, float, float]],
    method_name: str,
    num_edits: int,
    result: dict[str, Any],
    on_update: Callable[[dict[str, Any]], None] | None,
) -> None:
    if weights_fingerprint(model) != pristine:
        if on_update is not None:
            on_update(result)
        raise RuntimeError(
            f"{method_name} left the base model's weights changed after restoring them "
            f"({num_edits} edits); the remaining results would be invalid"
        )


def _run_setting(
    method: Method,
    setting: Setting,
    config: BenchmarkConfig,
    tokenizer: Any,
    formatter: QueryFormatter,
    reference: Mapping[str, str],
    device: torch.device,
    encoder_decoder: bool,
    base_model: Any,
    *,
    stream: _EditStream | None = None,
) -> dict[str, Any]:
    """Apply the setting's edits with ``method``, evaluate, and undo them (unless ``stream`` goes on).

    With a ``stream`` (sequential mode), only the edits beyond those the stream already applied are applied,
    the edit time and editor statistics accumulate over the stream, and the edits stay in for the next,
    larger setting; the caller undoes them at the end. On an error the edits are undone at once.
    """
    n = setting.num_edits
    run: dict[str, Any] = {"method": method.name, "num_edits": n, "mode": config.mode}
    keep = False
    try:
        if stream is None or stream.applied == 0:
            _seed_everything(config.seed)
        start = time.perf_counter()
        new_edits = setting.edits if stream is None else setting.edits[stream.applied :]
        if stream is not None and setting.edits[: stream.applied] != stream.edits:
            raise RuntimeError("a sequential setting does not extend the previous one's edits")
        generator, info = method.apply(new_edits, config.mode, config.progress)
        edit_seconds = time.perf_counter() - start
        if stream is not None:
            stream.extend(new_edits, edit_seconds, info)
            edit_seconds, info = stream.seconds, stream.info()
            run["continued_from"] = n - len(new_edits)
        run.update(info)
        run["metrics"] = _evaluate(method, generator, setting, config, tokenizer, formatter, reference, device,
                                   encoder_decoder, run, base_model)  # fmt: skip
        if method.name == BASE_METHOD:
            timing = {"edit_seconds_total": None, "edit_setup_seconds": None, "edit_seconds_per_edit": None}
        else:
            # One-time precomputation (the key statistics of ROME and MEMIT, cached on disk afterwards) is
            # reported apart, as in the MEMIT paper: it would otherwise dominate whichever setting runs first.
            setup = float((info.get("editor_stats") or {}).get("stats_seconds") or 0.0)
            setup = min(max(setup, 0.0), edit_seconds)
            timing = {
                "edit_seconds_total": edit_seconds,
                "edit_setup_seconds": setup,
                "edit_seconds_per_edit": (edit_seconds - setup) / max(n, 1),
            }
        run["metrics"].update(timing)
        keep = stream is not None
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
        # One failing editor must not cost the other methods' results; the error is reported in the run.
        logger.exception("%s failed at %d edits", method.name, n)
        run["error"] = f"{type(error).__name__}: {error}"
        run.setdefault("metrics", None)
    finally:
        if not keep:
            method.reset()
    return run


@dataclass
class _EditStream:
    """The edits a sequential run has applied so far, with their accumulated cost."""

    edits: list[Edit] = field(default_factory=list)
    seconds: float = 0.0
    stats: list[dict[str, Any]] = field(default_factory=list)
    last_info: dict[str, Any] = field(default_factory=dict)

    @property
    def applied(self) -> int:
        return len(self.edits)

    def extend(self, edits: Sequence[Edit], seconds: float, info: Mapping[str, Any]) -> None:
        self.edits.extend(edits)
        self.seconds += seconds
        if "editor_stats" in info:
            self.stats.append(dict(info["editor_stats"]))
        self.last_info = dict(info)

    def info(self) -> dict[str, Any]:
        info = dict(self.last_info)
        if self.stats:
            info["editor_stats"] = _sum_stats(self.stats)
        return info


def _evaluate(
    method: Method,
    generator: Any,
    setting: Setting,
    config: BenchmarkConfig,
    tokenizer: Any,
    formatter: QueryFormatter,
    reference: Mapping[str, str],
    device: torch.device,
    encoder_decoder: bool,
    run: dict[str, Any],
    base_model: Any,
) -> dict[str, Any]:
    window = config.match_window
    # A method that wraps the base model (SERAC, the cache) is timed against the base model on the same
    # query right before it: both measurements see the same machine load, so their ratio is its overhead.
    pairs = config.latency_pairs if generator is not base_model else 0
    paired: list[tuple[str, float, float]] = []
    outcomes: dict[str, list[bool]] = {
        name: [] for name in ("efficacy", "paraphrase", "locality", "portability")
    }
    hard_outcomes: list[bool] = []
    known_answer_outcomes: list[bool] = []
    case_outcomes: dict[str, bool] = {}
    in_scope_routing: dict[str, list[bool]] = {"in": [], "out": []}
    seconds: list[float] = []
    generations = []
    queries = setting.all_queries()
    # The timed pairs are spread over all queries, in scope and out of scope, not the first few (which are
    # all edit prompts, where a wrapper's overhead looks nothing like its overhead elsewhere).
    paired_indices = set(_evenly_spaced(range(len(queries)), pairs)) if pairs else set()
    label = f"{method.name} n={setting.num_edits}"
    for index, (metric, query) in enumerate(_progress(queries, config.progress, label)):
        inputs = formatter(query.text, device)
        if index in paired_indices:
            _, base_elapsed = generate_answer(
                base_model, tokenizer, inputs, config.max_new_tokens, encoder_decoder=encoder_decoder
            )
        answer, elapsed = generate_answer(
            generator, tokenizer, inputs, config.max_new_tokens, encoder_decoder=encoder_decoder
        )
        seconds.append(elapsed)
        if index in paired_indices:
            paired.append((metric, elapsed, base_elapsed))
        if metric == "locality":
            ok = answers_agree(answer, reference[query.text], window=window)
            if query.hard:
                hard_outcomes.append(ok)
            if query.answers:
                known_answer_outcomes.append(answer_matches(answer, query.answers, window=window))
        else:
            ok = answer_matches(answer, query.answers, window=window)
        outcomes[metric].append(ok)
        if metric == "portability" and query.group is not None:
            case_outcomes[query.group] = case_outcomes.get(query.group, False) or ok
        diagnostics = method.diagnostics(generator)
        if diagnostics is not None and "in_scope" in diagnostics and metric != "portability":
            in_scope_routing["out" if metric == "locality" else "in"].append(diagnostics["in_scope"])
        if config.save_generations:
            generations.append({"metric": metric, "query": query.text, "generation": answer, "correct": ok})

    metrics: dict[str, Any] = {}
    for name, values in outcomes.items():
        value = rate(values)
        metrics[name], metrics[f"{name}_count"] = value.value, value.count
    hard = rate(hard_outcomes)
    metrics["locality_hard"], metrics["locality_hard_count"] = hard.value, hard.count
    known = rate(known_answer_outcomes)
    metrics["out_of_scope_accuracy"], metrics["out_of_scope_accuracy_count"] = known.value, known.count
    cases = rate(case_outcomes.values())
    metrics["portability_case"], metrics["portability_case_count"] = cases.value, cases.count
    metrics.update(latency_summary(seconds))
    metrics["latency_pairs"] = len(paired)
    if paired:
        metrics["query_ms_p50_ratio_to_base"] = _paired_ratio(paired)
        out_of_scope = [pair for pair in paired if pair[0] == "locality"]
        metrics["query_ms_p50_ratio_to_base_out_of_scope"] = _paired_ratio(out_of_scope)
        metrics["latency_pairs_out_of_scope"] = len(out_of_scope)
    if in_scope_routing["in"] or in_scope_routing["out"]:
        metrics["scope_recall"] = rate(in_scope_routing["in"]).value
        metrics["scope_false_positive_rate"] = rate(in_scope_routing["out"]).value
    else:
        metrics["scope_recall"] = metrics["scope_false_positive_rate"] = None
    metrics.update(_probability_metrics(method, generator, setting, config))
    if config.save_generations:
        run["generations"] = generations
    return metrics


def _probability_metrics(
    method: Method, generator: Any, setting: Setting, config: BenchmarkConfig
) -> dict[str, Any]:
    names = ("efficacy_prob", "paraphrase_prob", "locality_prob")
    probabilities = (
        config.probabilities if config.probabilities is not None else config.dataset == "counterfact"
    )
    empty: dict[str, Any] = {}
    for name in names:
        empty[name], empty[f"{name}_count"] = None, 0
    if not probabilities:
        return empty
    scorer = method.scorer(generator)
    if scorer is None:
        return {**empty, "probabilities_unavailable": True}
    metrics = {}
    for name, queries, new_wins in (
        ("efficacy_prob", setting.efficacy, True),
        ("paraphrase_prob", setting.paraphrase, True),
        ("locality_prob", setting.locality, False),
    ):
        outcomes = []
        for query in queries:
            if query.target_new is None or query.target_true is None:
                continue
            new, true = scorer(query.text, query.target_new), scorer(query.text, query.target_true)
            outcomes.append(new > true if new_wins else true > new)
        value = rate(outcomes)
        metrics[name], metrics[f"{name}_count"] = value.value, value.count
    return metrics


def _paired_ratio(paired: Sequence[tuple[str, float, float]]) -> float | None:
    """Median method time over median base time of the same queries (None without pairs)."""
    if not paired:
        return None
    base_p50 = percentile([base_seconds for _, _, base_seconds in paired], 50)
    return percentile([seconds for _, seconds, _ in paired], 50) / base_p50 if base_p50 else None


def _add_latency_ratios(runs: list[dict[str, Any]]) -> None:
    """Each method's latency over the base model's on the same queries, measured in the same invocation.

    Methods timed in pairs with the base model keep their paired p50 ratio; the others are compared with the
    base run of the same setting.
    """
    base = {
        (run["num_edits"], run["mode"]): run["metrics"]
        for run in runs
        if run["method"] == BASE_METHOD and run.get("metrics")
    }
    for run in runs:
        metrics = run.get("metrics")
        if not metrics:
            continue
        reference = base.get((run["num_edits"], run["mode"]))
        for name in ("p50", "p95"):
            key = f"query_ms_{name}"
            if metrics.get(f"{key}_ratio_to_base") is not None:
                continue  # measured in pairs, the better estimate
            ratio = None
            if reference and reference.get(key) and metrics.get(key) is not None:
                ratio = metrics[key] / reference[key]
            metrics[f"{key}_ratio_to_base"] = ratio


# ----------------------------------------------------------------------------------------------- CLI


def _parse_num_edits(text: str) -> tuple[int | None, ...]:
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


def _parse_max_edits(text: str | None) -> dict[str, int | None]:
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


def build_parser() -> argparse.ArgumentParser:
    """The ``serac-bench`` command line."""
    parser = argparse.ArgumentParser(
        prog="serac-bench",
        description="Compare SERAC with weight editors (ROME, MEMIT, fine-tuning, a cache) on the same edits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset", choices=DATASETS, default="synthetic", help="which benchmark format to read"
    )
    data.add_argument("--data-path", default=None, help="the dataset file (not for synthetic)")
    data.add_argument(
        "--synthetic-size",
        type=int,
        default=None,
        help="synthetic examples to generate (default: the largest --num-edits, or 1000)",
    )
    data.add_argument(
        "--edit-form",
        choices=EDIT_FORMS,
        default="prompt",
        help="edits as prompts with targets (all methods) or as statements (SERAC and cache)",
    )
    runs = parser.add_argument_group("runs")
    runs.add_argument(
        "--methods",
        default=None,
        help=f"comma list of base, serac and registered editors (default: {','.join(DEFAULT_METHODS)}, "
        "those installed)",
    )
    runs.add_argument("--num-edits", default=DEFAULT_NUM_EDITS, help="comma list of edit counts, or 'all'")
    runs.add_argument(
        "--mode",
        choices=MODES,
        default="batch",
        help="batch: all edits at once; sequential: one after another, metrics after the last",
    )
    runs.add_argument(
        "--max-edits",
        default=None,
        help="per-method caps as METHOD=N pairs overriding "
        + ",".join(f"{k}={v}" for k, v in DEFAULT_MAX_EDITS.items() if v is not None),
    )
    runs.add_argument("--seed", type=int, default=0, help="seeds the edit order, data sampling and editors")
    runs.add_argument("--editor-hparams", default=None, help="JSON file {method: {hyperparameter: value}}")
    models = parser.add_argument_group("models")
    models.add_argument(
        "--model", default=None, help="base model name or path (default: offline SmolLM2-135M)"
    )
    models.add_argument(
        "--serac-path",
        default=None,
        help="a saved SERAC editor directory (default: the default trained parts)",
    )
    models.add_argument(
        "--device", default=None, help="torch device for the base model (default: where it loads)"
    )
    models.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--max-new-tokens", type=int, default=16, help="tokens generated per query")
    evaluation.add_argument(
        "--match-window",
        type=int,
        default=None,
        help="the answer must start within this many words (default: anywhere)",
    )
    evaluation.add_argument(
        "--limit-queries",
        type=int,
        default=DEFAULT_LIMIT_QUERIES,
        help="queries per metric and setting (0: all)",
    )
    evaluation.add_argument(
        "--latency-pairs",
        type=int,
        default=10,
        help="queries per run on which a wrapping method (serac, cache) is timed right after the base model",
    )
    evaluation.add_argument(
        "--prompt-format",
        choices=PROMPT_FORMATS,
        default="auto",
        help="raw text, the tokenizer's chat template around each query, or auto: the chat template for "
        "questions (ending in '?') and raw text for cloze prompts",
    )
    evaluation.add_argument(
        "--probabilities",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ROME's P(new) > P(true) comparisons (default: on for counterfact)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output", default=DEFAULT_OUTPUT, help="results JSON; the .md table and plots go beside it"
    )
    output.add_argument(
        "--save-generations", action="store_true", help="keep every query's generation in the JSON"
    )
    output.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    output.add_argument("--no-progress", action="store_true", help="no progress bars")
    output.add_argument("--verbose", action="store_true", help="debug logging")
    return parser  # fmt: skip


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    """A validated :class:`BenchmarkConfig` from parsed arguments (raises :class:`BenchmarkError`)."""
    config = BenchmarkConfig(
        dataset=args.dataset,
        data_path=args.data_path,
        methods=_methods_from_arg(args.methods),
        num_edits=_parse_num_edits(args.num_edits),
        mode=args.mode,
        seed=args.seed,
        model=args.model,
        serac_path=args.serac_path,
        output=args.output,
        max_new_tokens=args.max_new_tokens,
        match_window=args.match_window,
        limit_queries=None if args.limit_queries == 0 else args.limit_queries,
        max_edits=_parse_max_edits(args.max_edits),
        synthetic_size=args.synthetic_size,
        edit_form=args.edit_form,
        prompt_format=args.prompt_format,
        probabilities=args.probabilities,
        editor_hparams=_read_editor_hparams(args.editor_hparams),
        device=args.device,
        threads=args.threads,
        latency_pairs=args.latency_pairs,
        save_generations=args.save_generations,
        plots=not args.no_plots,
        progress=not args.no_progress,
    )
    validate_config(config)
    return config


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``serac-bench`` arguments."""
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


def main(argv: Sequence[str] | None = None) -> int:
    """``serac-bench`` / ``python -m benchmarks.run``: run the comparison, write and print the results."""
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
