"""Answering queries the same way for every method: the same input format, greedy decoding.

One query per ``generate()`` call by default, so every query's latency is its own; quality runs on whole
datasets can answer several per call (:func:`generate_answers`, ``serac bench --generation-batch-size``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["QueryFormatter", "generate_answer", "generate_answers"]


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


def _greedy_settings(tokenizer: Any, max_new_tokens: int) -> dict[str, Any]:
    return {
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


def _new_text(tokenizer: Any, sequence: torch.Tensor, prompt: torch.Tensor, encoder_decoder: bool) -> str:
    if not encoder_decoder and len(sequence) >= len(prompt) and torch.equal(sequence[: len(prompt)], prompt):
        sequence = sequence[len(prompt) :]
    return tokenizer.decode(sequence, skip_special_tokens=True)


def generate_answer(
    generator: Any,
    tokenizer: Any,
    inputs: Mapping[str, torch.Tensor],
    max_new_tokens: int,
    *,
    encoder_decoder: bool,
) -> tuple[str, float]:
    """Greedy generation for one query (batch size 1); returns the new text and the seconds it took."""
    start = time.perf_counter()
    output = generator.generate(**inputs, **_greedy_settings(tokenizer, max_new_tokens))
    seconds = time.perf_counter() - start
    sequence = (output.sequences if hasattr(output, "sequences") else output)[0]
    return _new_text(tokenizer, sequence, inputs["input_ids"][0], encoder_decoder), seconds


def generate_answers(
    generator: Any,
    tokenizer: Any,
    inputs: Sequence[Mapping[str, torch.Tensor]],
    max_new_tokens: int,
    *,
    encoder_decoder: bool,
) -> tuple[list[str], float]:
    """Greedy generation for several queries in one ``generate()`` call; the new texts and the call's seconds.

    ``inputs`` are single-row encodings (:class:`QueryFormatter`'s); they are padded into one batch, on the
    left for a decoder-only model (so every row's prompt ends where generation starts), on the right for an
    encoder-decoder model. A row's answer can differ from its batch-size-1 answer in rare near-ties, since
    padded batches reorder floating-point sums.
    """
    if not inputs:
        return [], 0.0
    settings = _greedy_settings(tokenizer, max_new_tokens)
    pad = settings["pad_token_id"]
    if isinstance(pad, (list, tuple)):
        pad = pad[0]
    pad = 0 if pad is None else int(pad)
    prompts = [row["input_ids"][0] for row in inputs]
    width = max(len(prompt) for prompt in prompts)
    ids, masks = [], []
    for prompt in prompts:
        filler = width - len(prompt)
        padding = torch.full((filler,), pad, dtype=prompt.dtype, device=prompt.device)
        mask = torch.ones(len(prompt), dtype=torch.long, device=prompt.device)
        zeros = torch.zeros(filler, dtype=torch.long, device=prompt.device)
        if encoder_decoder:
            ids.append(torch.cat([prompt, padding]))
            masks.append(torch.cat([mask, zeros]))
        else:
            ids.append(torch.cat([padding, prompt]))
            masks.append(torch.cat([zeros, mask]))
    start = time.perf_counter()
    output = generator.generate(input_ids=torch.stack(ids), attention_mask=torch.stack(masks), **settings)
    seconds = time.perf_counter() - start
    sequences = output.sequences if hasattr(output, "sequences") else output
    # A decoder-only model's output repeats the padded prompt: the new text starts at the common width.
    answers = [
        tokenizer.decode(sequence if encoder_decoder else sequence[width:], skip_special_tokens=True)
        for sequence in sequences
    ]
    return answers, seconds
