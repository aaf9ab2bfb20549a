"""Wrap your own Hugging Face model with a SERAC folder: it stays untouched, edits change what it says.

    python examples/wrap_your_model.py --base-model HuggingFaceTB/SmolLM2-360M-Instruct --editor my-serac/

Without --base-model the offline SmolLM2-135M-Instruct is used; without --editor, the default trained parts
(trained and cached on first use). Load your model as you normally would (a seq2seq model works too, loaded
with AutoModelForSeq2SeqLM).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from serac import Edit, EditableModel

QUESTION = "What is the country of citizenship of Ellie Kemper?"


def fingerprint(model: torch.nn.Module) -> str:
    """A hash of every weight, to show that editing never changes the base model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", help="Hugging Face id or path (default: the offline SmolLM2)")
    parser.add_argument("--editor", help="a SERAC folder (default: the offline default parts)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    # Your model, loaded the usual way (pick your own dtype, device, quantization ...).
    if args.base_model is None:
        from serac.offline import resolve_base_model  # the offline SmolLM2 checkpoint, converted once

        args.base_model = resolve_base_model()
    tokenizer = AutoTokenizer.from_pretrained(args.base_model)
    base_model = AutoModelForCausalLM.from_pretrained(args.base_model).eval()
    before = fingerprint(base_model)

    if args.editor:
        model = EditableModel.from_pretrained(base_model, args.editor, tokenizer=tokenizer)
    else:
        model = EditableModel.from_defaults(base_model, tokenizer=tokenizer)
    model.edit([Edit(prompt=QUESTION, target="Croatia")])

    batch = tokenizer([QUESTION], return_tensors="pt")
    settings = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    with model.disable_edits():  # the base model alone, for comparison
        unedited = model.generate(**batch, **settings)
    edited = model.generate(**batch, **settings)  # same arguments and return type as base_model.generate
    decision = model.last_routing[0]
    prompt_length = batch["input_ids"].shape[1]
    print(f"Q: {QUESTION}")
    print(f"   base model:     {tokenizer.decode(unedited[0, prompt_length:], skip_special_tokens=True)!r}")
    print(f"   editable model: {tokenizer.decode(edited[0, prompt_length:], skip_special_tokens=True)!r}")
    score = "none" if decision.score is None else f"{decision.score:.2f}"
    print(f"   routing: in_scope={decision.in_scope} edit_id={decision.edit_id} score={score}")
    print(f"base model weights unchanged: {fingerprint(base_model) == before}")

    # Unknown attributes are the base model's, so code written for it keeps working.
    print(f"model.config is base_model.config: {model.config is base_model.config}")

    # A SERAC folder holds the parts and the edits, and a reference to the base model, never its weights.
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        print("saved:", ", ".join(sorted(path.name for path in Path(folder).iterdir())))
        reloaded = EditableModel.from_pretrained(base_model, folder, tokenizer=tokenizer)
        print(f"reloaded edits: {reloaded.edits}")


if __name__ == "__main__":
    main()
