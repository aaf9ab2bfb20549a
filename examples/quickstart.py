"""A few edits on a model, its answers before and after, and where each query was routed.

Run it on the offline defaults (SmolLM2-135M-Instruct with the default trained parts; the first run trains
and caches the parts, later runs start in seconds):

    python examples/quickstart.py

or on any base model and SERAC folder:

    python examples/quickstart.py --base-model path/to/model --editor path/to/serac-folder
"""

from __future__ import annotations

import argparse

from serac import Edit, EditableModel

EDITS = [
    Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia"),  # a question
    Edit(prompt="{} plays the sport of", subject="LeBron James", target="football"),  # a cloze prompt
    Edit.from_statement("Boris Johnson is the prime minister of the UK."),  # a statement
]
QUERIES = [
    "Which country is Ellie Kemper a citizen of?",
    "LeBron James plays the sport of",
    "What sport does LeBron James play?",
    "Why is the sky blue?",
    "What is the capital of France?",
]


def answer(model: EditableModel, queries: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers, one line each: questions in the chat template (if the model has one), cloze raw."""
    tokenizer = model.tokenizer
    tokenizer.padding_side = "left"  # a decoder-only model continues after the last token of each row
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        if tokenizer.chat_template and q.endswith("?")
        else q
        for q in queries
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    # The same call as base_model.generate(): every row is routed on its own.
    output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return [
        text.strip().split("\n")[0] for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", help="Hugging Face id or path (default: the offline SmolLM2)")
    parser.add_argument("--editor", help="a SERAC folder (default: the offline default parts)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    if args.editor:
        model = EditableModel.from_pretrained(args.base_model, args.editor)
    else:
        model = EditableModel.from_defaults(args.base_model)  # trains the default parts on first use

    before = answer(model, QUERIES, args.max_new_tokens)
    ids = model.edit(EDITS)
    after = answer(model, QUERIES, args.max_new_tokens)

    print(f"Stored edits: {ids}")
    for edit_id, edit in model.edits:
        print(f"  [{edit_id}] {edit.text}")
    # last_routing: one decision per row of this thread's last generate() call.
    for query, old, new, decision in zip(QUERIES, before, after, model.last_routing, strict=True):
        route = f"edit {decision.edit_id}" if decision.in_scope else "base model"
        score = "" if decision.score is None else f", score {decision.score:.2f}"
        print(f"Q: {query}\n   before: {old!r}\n   after:  {new!r}   ({route}{score})")


if __name__ == "__main__":
    main()
