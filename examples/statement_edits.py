"""Edits in the three forms an edit can take (question, cloze prompt, statement); listing and removing them.

python examples/statement_edits.py                                # offline defaults
python examples/statement_edits.py --base-model PATH --editor PATH
"""

from __future__ import annotations

import argparse

from serac import Edit, EditableModel

EDITS = [
    # A question and its new answer.
    Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia"),
    # A cloze prompt: "{}" is filled with the subject. With a subject, the edit is considered only for
    # queries that name it.
    Edit(prompt="{} plays the sport of", subject="LeBron James", target="football"),
    # A statement: one sentence, no separate answer (the counterfactual model reads it as a whole).
    Edit.from_statement("Boris Johnson is the prime minister of the UK."),
    Edit.from_statement("The Eiffel Tower is painted green.", subject="Eiffel Tower"),
]
QUERIES = [
    "Which country is Ellie Kemper a citizen of?",
    "What sport does LeBron James play?",
    "Who is the prime minister of the UK?",
    "What colour is the Eiffel Tower?",
    "Why is the sky blue?",
]


def show_routing(model: EditableModel, queries: list[str]) -> None:
    """Ask each query and print which edit, if any, answered it."""
    tokenizer = model.tokenizer
    tokenizer.padding_side = "left"
    batch = tokenizer(queries, return_tensors="pt", padding=True)
    model.generate(**batch, max_new_tokens=8, do_sample=False)
    for query, decision in zip(queries, model.last_routing, strict=True):
        route = f"edit {decision.edit_id}" if decision.in_scope else "base model"
        print(f"  {query!r:48} -> {route}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", help="Hugging Face id or path (default: the offline SmolLM2)")
    parser.add_argument("--editor", help="a SERAC folder (default: the offline default parts)")
    args = parser.parse_args()
    if args.editor:
        model = EditableModel.from_pretrained(args.base_model, args.editor)
    else:
        model = EditableModel.from_defaults(args.base_model)

    ids = model.edit(EDITS)
    print("Stored edits:")
    for edit_id, edit in model.edits:  # (id, Edit) pairs; ids are stable and never reused
        kind = "statement" if edit.is_statement else "prompt"
        print(f"  [{edit_id}] {kind:9} {edit.text}")
    show_routing(model, QUERIES)

    # A newer edit of the same prompt supersedes the older one: the store keeps the newest answer only.
    (newer,) = model.edit([Edit(prompt="{} plays the sport of", subject="LeBron James", target="tennis")])
    print(f"Edit {newer} superseded edit {ids[1]}; stored ids: {[edit_id for edit_id, _ in model.edits]}")

    # Removing an edit: its queries go back to the base model.
    model.remove_edits([ids[0]])
    print(f"Removed edit {ids[0]}; stored ids: {[edit_id for edit_id, _ in model.edits]}")
    show_routing(model, QUERIES)


if __name__ == "__main__":
    main()
