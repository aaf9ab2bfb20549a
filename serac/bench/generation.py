"""Answering a query the same way for every method: the same input format, greedy, batch size 1."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["QueryFormatter", "generate_answer"]


@dataclass
class QueryFormatter:
    """Turns a query text into model inputs the same way for every method.

    ``raw``: the text itself. ``chat``: the text as the user turn of the tokenizer's chat template.
    ``auto``: questions (text ending in "?") in the chat template, when the tokenizer has one, since an
    instruction-tuned model answers questions there and often stops at once on a bare question; cloze
    prompts as raw text, which such a model continues.
    """

    tokenizer: Any
    prompt_format: str = "auto"

    def uses_chat(self, text: str) -> bool:
        if self.prompt_format == "chat":
            return True
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        return self.prompt_format == "auto" and has_template and text.rstrip().endswith("?")

    def __call__(self, text: str, device: torch.device) -> dict[str, torch.Tensor]:
        if self.uses_chat(text):
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            encoded = self.tokenizer(rendered, return_tensors="pt", add_special_tokens=False)
        else:
            encoded = self.tokenizer(text, return_tensors="pt")
        return {key: encoded[key].to(device) for key in ("input_ids", "attention_mask") if key in encoded}


def generate_answer(
    generator: Any,
    tokenizer: Any,
    inputs: Mapping[str, torch.Tensor],
    max_new_tokens: int,
    *,
    encoder_decoder: bool,
) -> tuple[str, float]:
    """Greedy generation for one query (batch size 1); returns the new text and the seconds it took."""
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        # Greedy decoding: a checkpoint's sampling settings would only trigger warnings.
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    start = time.perf_counter()
    output = generator.generate(**inputs, **kwargs)
    seconds = time.perf_counter() - start
    sequence = (output.sequences if hasattr(output, "sequences") else output)[0]
    prompt = inputs["input_ids"][0]
    if not encoder_decoder and len(sequence) >= len(prompt) and torch.equal(sequence[: len(prompt)], prompt):
        sequence = sequence[len(prompt) :]
    return tokenizer.decode(sequence, skip_special_tokens=True), seconds
