"""Multi-hop questions over edited facts (MQuAKE's portability), by who answers the in-scope ones.

Run: ``python benchmarks/multi_hop.py --data-path ../shared/data/mquake-cf-dev.json [--model gemma3-270m]
[--parts DIR] [--linked 0,3] [--output FILE]``

Every edit of the file is stored at once. Each case's multi-hop questions ("Who is the head of state of the
country Ellie Kemper is a citizen of?") are asked of the wrapped model, greedy, and a question counts when its
answer holds the case's new answer (or an alias); a case counts when one of its questions does (MQuAKE's
multi-hop accuracy). Configurations: the trained counterfactual model, and the in-context kind reading the routed
edit alone (``--linked 0``) or with the stored edits its new answer leads to (``--linked N``:
:attr:`serac.in_context.InContextConfig.linked_edits`), plus the unedited base model.

A case's unedited hops (the facts on its chain that no edit changes, "the head of state of Croatia") must come
from the base model's own knowledge, which a 135M model mostly lacks: each unedited hop's question is asked
of the unedited model, and the figures are also given on the cases whose unedited hops it answers correctly,
so what is measured there is the reading of the edits, not the base model's knowledge.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from serac.bench.generation import QueryFormatter, generate_answers
from serac.data import load_examples
from serac.edits import normalize_text
from serac.metrics import answer_matches
from serac.modeling import EditableModel
from serac.offline import load_base_model

logger = logging.getLogger(__name__)


def rate(values: list[bool]) -> dict:
    return {"rate": round(sum(values) / len(values), 4) if values else None, "count": len(values)}


def answers(model, tokenizer, texts: list[str], batch_size: int, max_new_tokens: int) -> list[str]:
    formatter = QueryFormatter(tokenizer)
    device = next(model.parameters()).device
    found = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        inputs = [formatter(text, device) for text in chunk]
        found += generate_answers(model, tokenizer, inputs, max_new_tokens, encoder_decoder=False)[0]
    return found


def unedited_hops(case: dict) -> list[dict]:
    """The hops of a case's edited chain that no edit of the case states (``new_single_hops`` whose question is
    not a rewrite's): real-world facts about the entities the edits lead to."""
    rewrites = {normalize_text(rewrite["question"]) for rewrite in case["requested_rewrite"]}
    return [hop for hop in case["new_single_hops"] if normalize_text(hop["question"]) not in rewrites]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-path", required=True, help="MQuAKE JSON file")
    parser.add_argument("--model", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--parts", default=None, help="a SERAC folder (default: the default trained parts)")
    parser.add_argument(
        "--linked", default="0,3", help="in-context runs: linked edits per run, comma-separated"
    )
    parser.add_argument("--skip-trained", action="store_true", help="no run with the trained counterfactual")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="only the first N cases")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    if not Path(args.data_path).exists():
        parser.error(f"no dataset at {args.data_path}")
    cases = json.loads(Path(args.data_path).read_text())[: args.limit]
    edits = {}
    for example in load_examples(f"mquake:{args.data_path}"):
        for edit in (example.edit, *example.companion_edits):
            edits.setdefault(edit.key, edit)

    base, tokenizer = load_base_model(args.model)
    generate = lambda model, texts: answers(model, tokenizer, texts, args.batch_size, args.max_new_tokens)  # noqa: E731

    # Which cases' unedited hops the base model knows.
    hop_questions = sorted({hop["question"] for case in cases for hop in unedited_hops(case)})
    hop_answers = dict(zip(hop_questions, generate(base, hop_questions), strict=True))

    def knows(hop: dict) -> bool:
        return answer_matches(hop_answers[hop["question"]], [hop["answer"], *hop.get("answer_alias", [])])

    known = [all(knows(hop) for hop in unedited_hops(case)) for case in cases]
    questions = [(index, text) for index, case in enumerate(cases) for text in case["questions"]]
    texts = [text for _, text in questions]

    def score(generated: list[str], routed: list[bool] | None) -> dict:
        hits = [
            answer_matches(answer, [cases[index]["new_answer"], *cases[index].get("new_answer_alias", [])])
            for (index, _), answer in zip(questions, generated, strict=True)
        ]
        by_case: dict[int, bool] = {}
        for (index, _), hit in zip(questions, hits, strict=True):
            by_case[index] = by_case.get(index, False) or hit
        result = {
            "questions": rate(hits),
            "cases": rate(list(by_case.values())),
            "cases_known_hops": rate([hit for index, hit in by_case.items() if known[index]]),
            "questions_known_hops": rate([hit for (index, _), hit in zip(questions, hits, strict=True)
                                          if known[index]]),
        }  # fmt: skip
        if routed is not None:
            result["routed_to_an_edit"] = rate(routed)
        return result

    results: dict = {
        "data": args.data_path,
        "model": args.model or "smollm2-135m-instruct",
        "cases": len(cases),
        "edits_stored": len(edits),
        "unedited_hops_known": rate([knows(hop) for case in cases for hop in unedited_hops(case)]),
        "cases_with_known_hops": sum(known),
        "runs": {},
    }  # fmt: skip
    start = time.perf_counter()
    results["runs"]["base"] = score(generate(base, texts), None)
    logger.info("base: %s (%.0f s)", results["runs"]["base"], time.perf_counter() - start)
    runs = [] if args.skip_trained else [("trained", "trained", 0)]
    runs += [(f"in-context, {n} linked", "in-context", n) for n in map(int, args.linked.split(","))]
    for name, kind, linked in runs:
        start = time.perf_counter()
        if args.parts is None:
            model = EditableModel.from_defaults(base, tokenizer=tokenizer, counterfactual=kind)
        else:
            model = EditableModel.from_pretrained(base, args.parts, tokenizer=tokenizer, counterfactual=kind)
        if kind == "in-context":
            model.counterfactual_model.config.linked_edits = linked
        model.edit(list(edits.values()))
        generated, routed = [], []
        for begin in range(0, len(texts), args.batch_size):
            chunk = texts[begin : begin + args.batch_size]
            generated += answers(model, tokenizer, chunk, args.batch_size, args.max_new_tokens)
            routed += [decision.in_scope for decision in model.last_routing]
        results["runs"][name] = score(generated, routed)
        results["runs"][name]["seconds"] = round(time.perf_counter() - start, 1)
        logger.info("%s: %s", name, results["runs"][name])
    print(json.dumps(results, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
