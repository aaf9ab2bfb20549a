"""Edit SmolLM2-135M-Instruct without touching its weights, on the offline defaults.

Run: python examples/quickstart.py
The first run trains and caches the default scope classifier and counterfactual model (under 20 minutes on
two CPU cores, with a progress bar); later runs load them in seconds.
"""

import torch

from serac import Edit, EditableModel

torch.manual_seed(0)
model = EditableModel.from_defaults()
tokenizer = model.tokenizer
tokenizer.padding_side = "left"  # decoder-only models generate after the last input token

ids = model.edit(
    [
        Edit(prompt="What is the country of citizenship of Ellie Kemper?", target="Croatia"),
        Edit(prompt="{} plays the sport of", subject="LeBron James", target="football"),
        Edit.from_statement("Boris Johnson is the prime minister of the UK."),
    ]
)
queries = ["Which country is Ellie Kemper a citizen of?", "Why is the sky blue?"]
batch = tokenizer(queries, return_tensors="pt", padding=True)
out = model.generate(
    **batch, max_new_tokens=16, do_sample=False
)  # same call and return type as the base model
for query, row, decision in zip(queries, out, model.last_routing, strict=True):
    answer = tokenizer.decode(row[batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    print(
        f"{query!r} -> {answer!r}  (in scope: {decision.in_scope}, edit: {decision.edit_id}, score: {decision.score})"
    )

with model.disable_edits():  # the unedited base model, for comparison
    out = model.generate(**batch, max_new_tokens=16, do_sample=False)
    print(
        "without edits:",
        tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True),
    )

model.remove_edits(ids[:1])
model.save_pretrained("my-editor/")  # the edits, the config and the trained parts; never the base weights
model = EditableModel.from_pretrained(model.base_model, "my-editor/", tokenizer=tokenizer)
print("edits after reload:", model.edits)
