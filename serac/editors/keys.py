"""The keys of a key-value edit: what an MLP down-projection reads at the subject's last token.

As in ROME's ``compute_u``, a key is averaged over the edit prompt behind a few short prefixes the model
generated itself (context templates), so it does not depend on one exact wording. Used by ROME and MEMIT.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from serac.editors.base import PreparedPrompt, model_device, pad_batch, pad_token_id, prepare_prompt
from serac.editors.layer_stats import StopForward, sample_texts
from serac.editors.layout import get_module
from serac.edits import Edit

__all__ = [
    "CONTEXT_SEEDS",
    "compute_keys",
    "compute_template_keys",
    "generate_context_templates",
    "module_output_at_subject",
]

CONTEXT_SEEDS: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")


def generate_context_templates(
    model: nn.Module, tokenizer: Any, lengths_counts: Sequence[tuple[int, int]], *, seed: int = 0
) -> list[str]:
    """``["{}"]`` plus short model-generated prefixes ending in ``". {}"`` (sampled top-5, deterministic)."""
    templates = ["{}"]
    for length, count in lengths_counts:
        seeds = [CONTEXT_SEEDS[i % len(CONTEXT_SEEDS)] for i in range(count)]
        texts = sample_texts(model, tokenizer, seeds, max_new_tokens=length, seed=seed + length, top_k=5)
        for text in texts:
            # Braces would break str templates; newlines would make the prefix a separate document.
            clean = " ".join(text.replace("{", " ").replace("}", " ").split())
            templates.append(clean + ". {}")
    return templates


@torch.no_grad()
def compute_template_keys(
    model: nn.Module,
    tokenizer: Any,
    module_name: str,
    edits: Sequence[Edit],
    templates: Sequence[str],
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """Input of ``module_name`` at each edit's subject-last token behind each template: [edits, templates, in]."""
    prompts = [prepare_prompt(tokenizer, edit, t) for edit in edits for t in templates]
    keys = _capture_at_subject(model, tokenizer, module_name, prompts, "input", batch_size)
    return keys.reshape(len(edits), len(templates), -1)


@torch.no_grad()
def compute_keys(
    model: nn.Module,
    tokenizer: Any,
    module_name: str,
    edits: Sequence[Edit],
    templates: Sequence[str],
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """Input of ``module_name`` at each edit's subject-last token, averaged over ``templates``: [edits, in]."""
    return compute_template_keys(model, tokenizer, module_name, edits, templates, batch_size=batch_size).mean(
        dim=1
    )


@torch.no_grad()
def module_output_at_subject(
    model: nn.Module, tokenizer: Any, module_name: str, edits: Sequence[Edit], *, batch_size: int = 64
) -> torch.Tensor:
    """Output of ``module_name`` (first element if a tuple) at each bare prompt's subject-last token."""
    prompts = [prepare_prompt(tokenizer, edit) for edit in edits]
    return _capture_at_subject(model, tokenizer, module_name, prompts, "output", batch_size)


def _capture_at_subject(
    model: nn.Module,
    tokenizer: Any,
    module_name: str,
    prompts: Sequence[PreparedPrompt],
    side: str,
    batch_size: int,
) -> torch.Tensor:
    """The ``side`` (``"input"`` or ``"output"``) of ``module_name`` at each prompt's subject-last token.

    The forward pass stops at the module, since nothing after it is needed: [prompts, dim], float32.
    """
    module = get_module(model, module_name)
    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    captured: dict[str, torch.Tensor] = {}

    def input_hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured["value"] = inputs[0]
        raise StopForward

    def output_hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured["value"] = output[0] if isinstance(output, tuple) else output
        raise StopForward

    if side == "input":
        handle = module.register_forward_pre_hook(input_hook)
    else:
        handle = module.register_forward_hook(output_hook)
    vectors = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            input_ids, attention_mask = pad_batch([p.input_ids for p in chunk], pad_id, device)
            with contextlib.suppress(StopForward):
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            positions = torch.tensor([p.subject_last for p in chunk], device=device)
            vectors.append(captured["value"][torch.arange(len(chunk), device=device), positions].float())
    finally:
        handle.remove()
    return torch.cat(vectors)
