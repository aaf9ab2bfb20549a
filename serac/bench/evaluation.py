"""Scoring a method on one setting: answers against the expected ones, routing, target probabilities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from serac.bench.config import BenchmarkConfig, progress
from serac.bench.data import Setting, evenly_spaced
from serac.bench.generation import QueryFormatter, generate_answer, generate_answers
from serac.bench.latency import paired_ratio
from serac.bench.methods import Method, SeracEditor
from serac.metrics import answer_matches, answers_agree, latency_summary, rate, top1_correct, top1_hits

__all__ = ["Harness", "evaluate", "reference_top1", "teacher_forced_metrics"]


@dataclass(frozen=True)
class Harness:
    """What every run of one benchmark invocation shares: the base model and how queries are asked."""

    base_model: Any
    tokenizer: Any
    formatter: QueryFormatter
    #: The unedited model's answer to every locality query, the reference locality is measured against.
    reference: Mapping[str, str]
    device: torch.device
    encoder_decoder: bool
    #: The unedited model's :func:`~serac.metrics.top1_hits` (top-1 tokens, tokens) on each out-of-scope
    #: query's known answer (teacher-forced), the reference both drawdowns are measured against.
    reference_top1: Mapping[str, tuple[int, int]] = field(default_factory=dict)


def evaluate(
    method: Method,
    generator: Any,
    setting: Setting,
    config: BenchmarkConfig,
    harness: Harness,
    run: dict[str, Any],
) -> dict[str, Any]:
    """Answer every query of ``setting`` with ``generator`` and score the answers.

    Returns the run's metrics: a rate and a count per metric (efficacy, paraphrase, locality against the
    unedited answers in ``reference``, portability), latency, routing rates for SERAC, and the probability
    comparisons when the setting asks for them. With ``config.save_generations`` the answers go to ``run``.
    """
    window = config.match_window
    base_model, tokenizer, formatter = harness.base_model, harness.tokenizer, harness.formatter
    reference, device, encoder_decoder = harness.reference, harness.device, harness.encoder_decoder
    # A method that wraps the base model (SERAC, the cache) is timed against the base model on the same
    # query right before it: both measurements see the same machine load, so their ratio is its overhead.
    batch_size = config.generation_batch_size
    # Several queries per generate() call time the batch, not a query: no paired timing then.
    pairs = config.latency_pairs if generator is not base_model and batch_size == 1 else 0
    paired: list[tuple[str, float, float]] = []
    outcomes: dict[str, list[bool]] = {
        name: [] for name in ("efficacy", "paraphrase", "locality", "portability")
    }
    hard_outcomes: list[bool] = []
    locality_by_kind: dict[str, list[bool]] = {}
    known_answer_outcomes: list[bool] = []
    case_outcomes: dict[str, bool] = {}
    in_scope_routing: dict[str, list[bool]] = {"in": [], "out": []}
    seconds: list[float] = []
    generations = []
    queries = setting.all_queries()
    # The timed pairs are spread over all queries, in scope and out of scope, not the first few (which are
    # all edit prompts, where a wrapper's overhead looks nothing like its overhead elsewhere).
    paired_indices = set(evenly_spaced(range(len(queries)), pairs)) if pairs else set()
    label = f"{method.name} n={setting.num_edits}"
    batches = [
        range(start, min(start + batch_size, len(queries))) for start in range(0, len(queries), batch_size)
    ]
    bar = progress(None, config.progress, label, total=len(queries)) if config.progress else None
    for batch in batches:
        encoded = [formatter(queries[index][1].text, device) for index in batch]
        if batch_size == 1:
            index, inputs = batch[0], encoded[0]
            if index in paired_indices:
                _, base_elapsed = generate_answer(
                    base_model, tokenizer, inputs, config.max_new_tokens, encoder_decoder=encoder_decoder
                )
            answer, elapsed = generate_answer(
                generator, tokenizer, inputs, config.max_new_tokens, encoder_decoder=encoder_decoder
            )
            answers, per_row = [answer], [elapsed]
            if index in paired_indices:
                paired.append((queries[index][0], elapsed, base_elapsed))
        else:
            answers, elapsed = generate_answers(
                generator, tokenizer, encoded, config.max_new_tokens, encoder_decoder=encoder_decoder
            )
            per_row = [elapsed / len(batch)] * len(batch)
        routed = method.routed_rows(generator)
        for row, index in enumerate(batch):
            metric, query = queries[index]
            answer = answers[row]
            seconds.append(per_row[row])
            if metric == "locality":
                ok = answers_agree(answer, reference[query.text], window=window)
                if query.hard:
                    hard_outcomes.append(ok)
                if query.kind is not None:
                    locality_by_kind.setdefault(query.kind, []).append(ok)
                if query.answers:
                    known_answer_outcomes.append(answer_matches(answer, query.answers, window=window))
            else:
                ok = answer_matches(answer, query.answers, window=window)
            outcomes[metric].append(ok)
            if metric == "portability" and query.group is not None:
                case_outcomes[query.group] = case_outcomes.get(query.group, False) or ok
            if routed is not None and metric != "portability":
                in_scope_routing["out" if metric == "locality" else "in"].append(routed[row])
            if config.save_generations:
                generations.append(
                    {"metric": metric, "query": query.text, "generation": answer, "correct": ok}
                )
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()

    metrics: dict[str, Any] = {}
    for name, values in outcomes.items():
        value = rate(values)
        metrics[name], metrics[f"{name}_count"] = value.value, value.count
    hard = rate(hard_outcomes)
    metrics["locality_hard"], metrics["locality_hard_count"] = hard.value, hard.count
    metrics["locality_by_kind"] = {
        kind: {"rate": rate(values).value, "count": len(values)}
        for kind, values in sorted(locality_by_kind.items())
    }
    known = rate(known_answer_outcomes)
    metrics["out_of_scope_accuracy"], metrics["out_of_scope_accuracy_count"] = known.value, known.count
    cases = rate(case_outcomes.values())
    metrics["portability_case"], metrics["portability_case_count"] = cases.value, cases.count
    metrics.update(latency_summary(seconds))
    metrics["latency_pairs"] = len(paired)
    if paired:
        metrics["query_ms_p50_ratio_to_base"] = paired_ratio(paired)
        out_of_scope = [pair for pair in paired if pair[0] == "locality"]
        metrics["query_ms_p50_ratio_to_base_out_of_scope"] = paired_ratio(out_of_scope)
        metrics["latency_pairs_out_of_scope"] = len(out_of_scope)
    if in_scope_routing["in"] or in_scope_routing["out"]:
        metrics["scope_recall"] = rate(in_scope_routing["in"]).value
        metrics["scope_false_positive_rate"] = rate(in_scope_routing["out"]).value
    else:
        metrics["scope_recall"] = metrics["scope_false_positive_rate"] = None
    if isinstance(method.editor, SeracEditor):
        # Routing alone is cheap: measured on every query of the evaluated edits, not on the sample.
        metrics.update(method.editor.routing_rates(setting.routing_in_scope, setting.routing_out_of_scope))
    metrics.update(_probability_metrics(method, generator, setting, config))
    metrics.update(teacher_forced_metrics(method, generator, setting, harness))
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


def reference_top1(model: Any, tokenizer: Any, queries: Any) -> dict[str, tuple[int, int]]:
    """:func:`~serac.metrics.top1_hits` of the unedited model on each out-of-scope query with a known answer."""
    return {
        query.text: top1_hits(model, tokenizer, query.text, query.answers[0])
        for query in queries
        if query.answers
    }


def teacher_forced_metrics(
    method: Method, generator: Any, setting: Setting, harness: Harness
) -> dict[str, Any]:
    """Edit success (ES), drawdown (DD) and token drawdown (DD tok) as MEND and SaLEM define them (see
    :mod:`serac.metrics`).

    Only for methods whose edited model has a forward pass (the weight editors and the unedited model);
    ``None`` for the others. The drawdowns compare with ``harness.reference_top1``, measured before any edit.
    """
    empty = {
        "edit_success": None,
        "edit_success_count": 0,
        "drawdown": None,
        "drawdown_count": 0,
        "drawdown_tokens": None,
        "drawdown_tokens_count": 0,
    }
    if isinstance(method.editor, SeracEditor) or not (
        isinstance(generator, torch.nn.Module) and hasattr(generator, "config")
    ):
        return empty
    tokenizer = harness.tokenizer
    success = rate(
        top1_correct(generator, tokenizer, query.text, query.answers[0])
        for query in setting.efficacy
        if query.answers
    )
    known = [query for query in setting.locality if query.answers and query.text in harness.reference_top1]
    metrics = empty | {"edit_success": success.value, "edit_success_count": success.count}
    if known:
        before = [harness.reference_top1[query.text] for query in known]
        after = [top1_hits(generator, tokenizer, query.text, query.answers[0]) for query in known]
        answers_before = rate(hits == tokens for hits, tokens in before).value
        answers_after = rate(hits == tokens for hits, tokens in after).value
        tokens = sum(tokens for _, tokens in before)
        tokens_before = sum(hits for hits, _ in before) / tokens
        tokens_after = sum(hits for hits, _ in after) / tokens
        # The accuracies are kept too: a drawdown of 0 says little where the unedited model knew nothing.
        metrics |= {
            "drawdown": answers_before - answers_after,
            "drawdown_count": len(known),
            "out_of_scope_top1_unedited": answers_before,
            "out_of_scope_top1": answers_after,
            "drawdown_tokens": tokens_before - tokens_after,
            "drawdown_tokens_count": tokens,
            "out_of_scope_token_top1_unedited": tokens_before,
            "out_of_scope_token_top1": tokens_after,
        }
    return metrics
