"""Quality of SERAC's two trained parts, each on its own, on a public edit dataset.

Run: ``python benchmarks/parts_quality.py --data-path ../shared/data/mquake-cf-dev.json [--parts DIR]``
(``--dataset zsre|counterfact`` for the other files; ``--question-edits`` gives every edit as its own question
without a subject)

* scope classifier: every edit of the dataset is in the edit store at once; for each in-scope query (the
  edit's cloze form and its question form) a hit is a routing to *its own* edit (recall); for each
  out-of-scope query (other facts of the same subject, the same relation with another subject, other hops,
  unrelated questions) a false positive is a routing to any edit that does not list the query as in scope;
* counterfactual model: given the right edit, does its answer to each in-scope query match the new target
  (or an alias)? Matching is :func:`serac.metrics.answer_matches`, as in the benchmark runner. Also given
  on the in-scope queries the scope classifier routed to their own edit (what a user gets).

CounterFact's neighbourhood prompts come from a pool shared across records, so one record's out-of-scope
prompt may ask another stored edit's own fact ("The twin city of Cairo is" beside an edit of Cairo's twin
city). Such a routing still counts as a false positive; ``false_positives_on_a_stored_edits_fact`` says how many
of them went to an edit whose subject the query names and whose true answer is the query's answer.

The whole (efficacy, paraphrase, locality against the base model) is measured by ``serac bench``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

import torch

from serac.counterfactual import CounterfactualModel
from serac.data import load_examples
from serac.edits import mentions_subject
from serac.folder import CONFIG_NAME, SeracConfig
from serac.metrics import answer_matches
from serac.scope import load_scope_classifier
from serac.store import EditStore

logger = logging.getLogger(__name__)


def rate(values: list[bool]) -> dict:
    return {"rate": (sum(values) / len(values)) if values else None, "count": len(values)}


def scope_quality(examples, scope, store: EditStore) -> dict:
    store.add([example.edit for example in examples])
    # Datasets repeat edits across cases (MQuAKE does): the store keeps one edit per prompt, so a query is
    # judged by the prompt (edit key) it is routed to, and an edit's scope is the union of its cases' queries.
    in_scope_texts: dict[str, set[str]] = defaultdict(set)
    true_answers: dict[str, set[str]] = defaultdict(set)
    for example in examples:
        in_scope_texts[example.edit.key].update(query.text for query in example.in_scope)
        if example.true_answer:
            true_answers[example.edit.key].add(example.true_answer)
    hits: dict[str, list[bool]] = defaultdict(list)
    false_positives: dict[str, list[bool]] = defaultdict(list)
    queries, expected, kinds, answers = [], [], [], []
    for example in examples:
        for query in example.in_scope:
            queries.append(query.text)
            expected.append(example.edit.key)
            kinds.append(("in", query.kind))
            answers.append(None)
        for query in example.out_of_scope:
            queries.append(query.text)
            expected.append(None)
            kinds.append(("out", query.kind))
            answers.append(query.answer)
    start = time.perf_counter()
    decisions = []
    for begin in range(0, len(queries), 64):
        decisions += scope.classify(queries[begin : begin + 64], store)
    seconds = time.perf_counter() - start
    routed_home: list[bool] = []  # per in-scope query, in example order: routed to its own edit
    stored_facts = 0
    rows = zip(queries, expected, kinds, answers, decisions, strict=True)
    for query, key, (side, kind), answer, decision in rows:
        routed_key = decision.edit.key if decision.in_scope else None
        if side == "in":
            hits[kind].append(routed_key == key)
            routed_home.append(routed_key == key)
            continue
        wrong = routed_key is not None and query not in in_scope_texts[routed_key]
        false_positives[kind].append(wrong)
        subject = decision.edit.subject if wrong else None
        if subject and answer in true_answers[routed_key] and mentions_subject(subject, query):
            stored_facts += 1
    all_hits = [value for values in hits.values() for value in values]
    all_false = [value for values in false_positives.values() for value in values]
    return {
        "edits_in_store": len(store),
        "threshold": scope.config.threshold,
        "retrieval_threshold": getattr(scope.config, "retrieval_threshold", None),
        "recall": rate(all_hits),
        "recall_by_kind": {kind: rate(values) for kind, values in sorted(hits.items())},
        "false_positive_rate": rate(all_false),
        "_routed_home": routed_home,
        "false_positive_rate_by_kind": {
            kind: rate(values) for kind, values in sorted(false_positives.items())
        },
        "false_positives_on_a_stored_edits_fact": stored_facts,
        "classify_ms_per_query": 1000 * seconds / max(1, len(queries)),
    }


def counterfactual_quality(
    examples, counterfactual: CounterfactualModel, routed_home: list[bool] | None = None, batch_size: int = 16
) -> dict:
    rows = [(ex.edit, q) for ex in examples for q in ex.in_scope]
    matches: dict[str, list[bool]] = defaultdict(list)
    # What a user gets: the answers to the in-scope queries the scope classifier routed to their own edit.
    routed_matches: dict[str, list[bool]] = defaultdict(list)
    flat: list[bool] = []
    samples = []
    for begin in range(0, len(rows), batch_size):
        chunk = rows[begin : begin + batch_size]
        answers = counterfactual.generate([edit for edit, _ in chunk], [q.text for _, q in chunk])
        for (edit, query), answer in zip(chunk, answers, strict=True):
            matches[query.kind].append(answer_matches(answer, [query.answer, *query.aliases]))
            flat.append(matches[query.kind][-1])
            if routed_home is not None and routed_home[len(flat) - 1]:
                routed_matches[query.kind].append(matches[query.kind][-1])
            if len(samples) < 8:
                samples.append(
                    {"edit": edit.text, "query": query.text, "answer": answer, "target": query.answer}
                )
    all_matches = [value for values in matches.values() for value in values]
    return {
        "accuracy": rate(all_matches),
        "accuracy_by_kind": {k: rate(v) for k, v in sorted(matches.items())},
        "accuracy_routed_to_their_edit_by_kind": {k: rate(v) for k, v in sorted(routed_matches.items())},
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", required=True, help="dataset file")
    parser.add_argument("--dataset", default="mquake", choices=["mquake", "zsre", "counterfact", "jsonl"])
    parser.add_argument(
        "--parts", default=None, help="an EditableModel directory (default: the default parts)"
    )
    parser.add_argument(
        "--question-edits",
        action="store_true",
        help="give each edit as its own question without a subject (EditExample.as_question_edit)",
    )
    parser.add_argument("--skip-counterfactual", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N edits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if not Path(args.data_path).exists():
        parser.error(f"no dataset at {args.data_path}")

    if args.parts is None:
        from serac.training.recipe import default_parts_dir

        parts = default_parts_dir()
    else:
        parts = Path(args.parts)
    config = SeracConfig.from_json((parts / CONFIG_NAME).read_text())
    if args.dataset in ("zsre", "counterfact"):
        # These files hold a few records without a new answer: skipped (logged), as the benchmark does.
        from serac.data import load_counterfact, load_zsre

        loader = load_zsre if args.dataset == "zsre" else load_counterfact
        examples = loader(args.data_path, skip_invalid=True)[: args.limit]
    else:
        examples = load_examples(f"{args.dataset}:{args.data_path}")[: args.limit]
    if args.question_edits:
        examples = [example.as_question_edit() for example in examples if not example.edit.is_statement]
    scope = load_scope_classifier(parts / config.scope_classifier_path)
    results = {"parts": str(parts), "dataset": args.dataset, "edits": len(examples)}
    results["scope_classifier"] = scope_quality(examples, scope, EditStore())
    routed_home = results["scope_classifier"].pop("_routed_home")
    print(json.dumps(results["scope_classifier"], indent=2))
    if not args.skip_counterfactual:
        counterfactual = CounterfactualModel.from_pretrained(parts / config.counterfactual_model_path)
        results["counterfactual_model"] = counterfactual_quality(examples, counterfactual, routed_home)
        print(json.dumps(results["counterfactual_model"], indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
