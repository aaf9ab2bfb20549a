"""Train the scope classifier and the counterfactual model on your own edits, then use the SERAC folder.

Each training example is an edit with queries it must change (in scope) and queries it must not (out of
scope); a few of your own are mixed here with synthetic ones. The command line does the same from a file:
`serac train --output-dir my-serac --data jsonl:my-edits.jsonl synthetic:300 --max-steps 40`.

    python examples/train_parts.py                                    # SmolLM2 + all-MiniLM-L6-v2
    python examples/train_parts.py --base-model PATH --cross-encoder PATH --max-steps 4

A few dozen steps show the workflow in minutes; good parts need more (the default parts: 800 and 120 steps).
"""

from __future__ import annotations

import argparse
import logging

from serac import Edit, EditableModel
from serac.data import EditExample, InScopeQuery, OutOfScopeQuery, generate_synthetic_examples
from serac.training import CounterfactualTrainingArguments, ScopeTrainingArguments, train_parts

# (cloze prompt, subject, new answer, an in-scope question, an out-of-scope question about the subject)
MY_EDITS = [
    (
        "{} works as a",
        "Ada Rell",
        "lighthouse keeper",
        "What is Ada Rell's job?",
        "Where does Ada Rell live?",
    ),
    ("{} was born in", "Bo Venn", "Tallinn", "Where was Bo Venn born?", "When did Bo Venn retire?"),
    ("{} is written in", "Quillpad", "Rust", "Which language is Quillpad written in?", "Who made Quillpad?"),
    (
        "{} is the capital of",
        "Marrow",
        "Estland",
        "Which country has Marrow as capital?",
        "How big is Marrow?",
    ),
]


def my_examples() -> list[EditExample]:
    return [
        EditExample(
            edit=Edit(prompt=prompt, subject=subject, target=target),
            in_scope=(InScopeQuery(question, target, kind="question"),),
            out_of_scope=(OutOfScopeQuery(other, kind="same_subject_other_relation"),),
        )
        for prompt, subject, target, question, other in MY_EDITS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="my-serac", help="the SERAC folder to write")
    parser.add_argument("--base-model", help="base model, and the starting counterfactual model")
    parser.add_argument("--cross-encoder", help="starting scope classifier (default: all-MiniLM-L6-v2)")
    parser.add_argument("--max-steps", type=int, default=40, help="optimizer steps of each part")
    parser.add_argument("--synthetic", type=int, default=300, help="synthetic edits mixed in")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    examples = my_examples() + generate_synthetic_examples(args.synthetic, seed=0)
    # Every field is documented (and a `serac train` option); runs are seeded and resume if interrupted.
    scope = ScopeTrainingArguments(max_steps=args.max_steps, cross_encoder_name_or_path=args.cross_encoder)
    counterfactual = CounterfactualTrainingArguments(max_steps=args.max_steps, eval_generations=20)
    train_parts(
        args.output_dir,
        examples,
        scope_arguments=scope,
        counterfactual_arguments=counterfactual,
        base_model_name_or_path=args.base_model,
    )

    model = EditableModel.from_pretrained(args.base_model, args.output_dir)
    threshold = model.scope_classifier.config.threshold
    print(f"Trained {args.output_dir}: scope threshold {threshold:.3f} (chosen on held-out edits)")
    prompt, subject, target, question, other = MY_EDITS[0]
    model.edit([Edit(prompt=prompt, subject=subject, target=target)])
    for query in (question, other):
        decision = model.route([query])[0]
        route = f"edit {decision.edit_id}" if decision.in_scope else "base model"
        print(f"  {query!r} -> {route} (score {decision.score})")


if __name__ == "__main__":
    main()
