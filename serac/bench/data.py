"""The benchmark's views of the data: examples loaded and ordered, and per setting the edits and queries."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from serac.bench.config import (
    BACKGROUND_SEED_OFFSET,
    SERAC_METHOD,
    SYNTHETIC_SEED_OFFSET,
    BenchmarkConfig,
    BenchmarkError,
)
from serac.data import held_out_subject, loaders
from serac.data.schema import EditExample, OutOfScopeQuery
from serac.data.synthetic import SyntheticDataConfig, generate_synthetic_examples
from serac.edits import Edit, normalize_text
from serac.training import recipe

logger = logging.getLogger(__name__)

__all__ = [
    "PARAPHRASE_KINDS",
    "EvalQuery",
    "Setting",
    "build_setting",
    "evenly_spaced",
    "load_background_edits",
    "load_benchmark_examples",
    "order_examples",
]

#: In-scope query kinds that count as paraphrases: other wordings whose answer is the new target. ``yes_no``
#: (answer "yes"/"no") and ``generation`` (open prompts with no exact answer) are not paraphrases.
PARAPHRASE_KINDS = frozenset({"question", "cloze", "paraphrase"})
#: The in-scope query kind that is the edit's own prompt (efficacy).
_EFFICACY_KIND = "edit"


def load_benchmark_examples(config: BenchmarkConfig) -> list[EditExample]:
    """The dataset's examples in the internal schema, with edits in the requested form.

    ``--edit-form prompt`` keeps examples whose edit is a prompt with a target (what weight editors need);
    ``statement`` turns every edit into its one-sentence statement (the edit prompt stays an in-scope query);
    ``question`` gives every edit as its own question without a subject (:meth:`EditExample.as_question_edit`).
    """
    if config.dataset == "synthetic":
        size = config.synthetic_size or _default_synthetic_size(config.num_edits)
        # Weight editors need prompt edits: generate no statement-form edits rather than dropping them.
        synthetic = SyntheticDataConfig(statement_fraction=0.0) if config.edit_form != "statement" else None
        examples = generate_synthetic_examples(
            size, seed=SYNTHETIC_SEED_OFFSET + config.seed, config=synthetic
        )
        if SERAC_METHOD in config.methods and config.serac_path is None:
            examples = _held_out_from_default_training(examples)
    elif config.dataset == "mquake":
        examples = loaders.load_mquake(config.data_path, seed=config.seed)
    elif config.dataset == "zsre":
        # The public zsRE files hold a few records without a new answer: skipped with a warning.
        examples = loaders.load_zsre(config.data_path, skip_invalid=True)
    elif config.dataset == "counterfact":
        examples = loaders.load_counterfact(config.data_path, skip_invalid=True)
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
    elif config.edit_form == "question":
        kept = [example.as_question_edit() for example in examples if not example.edit.is_statement]
        dropped = len(examples) - len(kept)
        examples = kept
    else:
        kept = [example for example in examples if not example.edit.is_statement]
        dropped = len(examples) - len(kept)
        examples = kept
    if dropped:
        logger.warning("Dropped %d examples without a %s form of their edit", dropped, config.edit_form)
    if not examples:
        raise BenchmarkError(f"no usable edit examples in the {config.dataset} data")
    return examples


def load_background_edits(config: BenchmarkConfig, evaluated: Sequence[EditExample]) -> list[Edit]:
    """The ``--background`` edits: stored with the evaluated ones, never evaluated themselves.

    Synthetic background is generated with its own seed, away from the evaluated data and from training.
    A background edit of the same prompt or of the same subject and relation as an evaluated edit is left
    out: it would change the answer of an evaluated query, or be replaced by it.
    """
    taken = {example.edit.key for example in evaluated}
    facts = {_fact(example) for example in evaluated} - {None}
    edits: list[Edit] = []
    for spec in config.background:
        kind, _, argument = spec.partition(":")
        if kind == "synthetic":
            examples = generate_synthetic_examples(
                int(argument),
                seed=BACKGROUND_SEED_OFFSET + config.seed,
                config=SyntheticDataConfig(statement_fraction=0.0),
            )
        else:
            examples = loaders.load_examples(spec)
        for example in examples:
            if example.edit.key in taken or _fact(example) in facts:
                continue
            taken.add(example.edit.key)
            edits.append(example.edit)
    return edits


def _fact(example: EditExample) -> tuple[str, str] | None:
    if example.edit.subject is None or example.relation is None:
        return None
    return normalize_text(example.edit.subject), example.relation


def _held_out_from_default_training(examples: list[EditExample]) -> list[EditExample]:
    """Drop examples whose edit the default SERAC parts were trained on (same prompt and subject).

    The default parts are trained on synthetic data of another seed; the generator can still draw the same
    invented (subject, relation) pair twice, and such an edit would not measure generalization.
    """
    trained = {example.edit.key for example in recipe.default_training_examples()}
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
    kind: str | None = None


@dataclass
class Setting:
    """The edits of one number-of-edits setting and the queries evaluated on them."""

    num_edits: int
    edits: list[Edit]
    efficacy: list[EvalQuery]
    paraphrase: list[EvalQuery]
    locality: list[EvalQuery]
    portability: list[EvalQuery]
    #: Every in-scope query of the evaluated edits as (text, key of its edit, kind), and every out-of-scope
    #: query as (text, kind): the routing rates are measured on all of them, not on a sample.
    routing_in_scope: list[tuple[str, str, str]] = field(default_factory=list)
    routing_out_of_scope: list[tuple[str, str]] = field(default_factory=list)

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


def evenly_spaced(items: Sequence[Any], limit: int | None) -> list[Any]:
    """``limit`` items spread evenly over ``items`` (all of them if there are not more), first one included."""
    if limit is None or len(items) <= limit:
        return list(items)
    return [items[(index * len(items)) // limit] for index in range(limit)]


def build_setting(
    ordered: Sequence[EditExample],
    num_edits: int,
    limit: int | None,
    *,
    probabilities: bool,
    evaluated_fraction: float | None = None,
) -> Setting:
    """The first ``num_edits`` examples' edits and a sample of at most ``limit`` queries per metric.

    The sample comes from ``limit`` edited examples spread evenly over the order the edits are applied in,
    so sequential runs measure early edits as well as late ones. Out-of-scope queries that are in the scope
    of any applied edit (the same text as an applied edit's prompt or in-scope query) are left out: their
    answer is supposed to change. With ``evaluated_fraction``, only the examples of that share of subjects
    (:func:`serac.data.held_out_subject`) are evaluated; all edits are applied. Portability questions are asked only when all edits of their case
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
    candidates = chosen
    if evaluated_fraction is not None:
        candidates = [example for example in chosen if held_out_subject(example, evaluated_fraction)]
    evaluated = evenly_spaced(candidates, limit)
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
    routing_in_scope = [
        (query.text, example.edit.key, query.kind)
        for example in candidates
        for query in example.in_scope
        if query.kind != "generation"
    ]
    routing_out_of_scope = list(
        {
            (query.text, query.kind): None
            for example in candidates
            for query in example.out_of_scope
            if normalize_text(query.text) not in in_scope_keys
        }
    )
    return Setting(
        num_edits=len(edits),
        edits=edits,
        efficacy=efficacy,
        paraphrase=_round_robin(paraphrase_lists, limit),
        locality=_round_robin(locality_lists, limit),
        portability=_round_robin(portability_lists, limit),
        routing_in_scope=routing_in_scope,
        routing_out_of_scope=routing_out_of_scope,
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
        kind=query.kind,
    )
