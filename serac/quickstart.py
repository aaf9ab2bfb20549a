"""The quickstart on the offline defaults: a few edits, answers before and after, and the routing.

Run: ``serac quickstart`` (or ``python -m serac.quickstart``). On first use it trains and
caches the default scope classifier and counterfactual model (a progress bar shows it); later runs start
in seconds.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch

from serac import Edit, EditableModel

EDITS = [
    Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia"),
    Edit(prompt="{} plays the sport of", subject="LeBron James", target="football"),
    Edit.from_statement("Boris Johnson is the prime minister of the UK."),
]
QUERIES = [
    "Which country is Ellie Kemper a citizen of?",
    "LeBron James plays the sport of",
    "Who is the prime minister of the UK?",
    "What sport does LeBron James play?",
    "Why is the sky blue?",
    "What is the capital of France?",
    "Where was Ellie Kemper born?",
]


def prompt_text(tokenizer, query: str) -> str:
    """Questions go in the chat template, as an instruction-tuned model expects; cloze prompts stay raw text."""
    if getattr(tokenizer, "chat_template", None) and query.rstrip().endswith("?"):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": query}], tokenize=False, add_generation_prompt=True
        )
    return query


def answers(model: EditableModel, queries: list[str], max_new_tokens: int) -> list[str]:
    tokenizer = model.tokenizer
    tokenizer.padding_side = "left"
    texts = [prompt_text(tokenizer, query) for query in queries]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return [
        text.strip().split("\n")[0] for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    ]


def main(argv: list[str] | None = None) -> int:
    """``serac quickstart``: edits on the offline defaults, answers before and after; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="serac quickstart", description="serac quickstart on the offline default models"
    )
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="log what training and loading do (INFO), not only warnings"
    )
    args = parser.parse_args(argv)
    # A first run shows its announcement and one progress bar per part; the details are in the training
    # reports, and on standard error with --verbose.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)

    model = EditableModel.from_defaults()
    before = answers(model, QUERIES, args.max_new_tokens)
    ids = model.edit(EDITS)
    after = answers(model, QUERIES, args.max_new_tokens)
    print(f"\nStored edits: {ids}")
    for edit_id, edit in model.edits:
        print(f"  [{edit_id}] {edit.text}")
    print()
    for query, old, new, decision in zip(QUERIES, before, after, model.last_routing, strict=True):
        route = f"edit {decision.edit_id}" if decision.in_scope else "base model"
        score = "" if decision.score is None else f", score {decision.score:.2f}"
        print(f"Q: {query}\n   before: {old}\n   after:  {new}   ({route}{score})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
