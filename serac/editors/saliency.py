"""Gradient-saliency layer selection (SaLEM; Mishra et al., "Correcting Language Model Outputs by Editing
Salient Layers", EACL 2024).

Which layer should a weight editor change? SaLEM answers with gradients instead of causal tracing: the
loss of the *desired* outputs on the edit data is back-propagated once per edit, and a layer's
*saliency* is the mean absolute gradient of its weight. The layer (or layers) whose weights the loss is
most sensitive to are edited.

A layer may hold several edited matrices (MEND edits the MLP's input and output projections): each
template then names one of them, and SaLEM's averaging goes parameter -> column -> layer: a column's
saliency is the mean absolute gradient of its parameters (the weights reading one input unit), a matrix's
the mean over its columns, and a layer's the mean over its matrices.

Here a layer is one module of a stack named by a template (``"model.layers.{}.mlp.down_proj"`` for a
Llama-style causal LM, ``"encoder.block.{}.layer.1.DenseReluDense.wo"`` for T5's encoder feed-forward
blocks), so the same code serves ROME-style editors of causal LMs and the encoder-decoder rank-one editor.

The loss per edit is the mean token NLL of the edit's target:

* causal LM, prompt edit: ``query`` followed by ``" " + target``; only the target tokens are scored;
* causal LM, statement edit: every token of the statement after the first;
* encoder-decoder: ``query`` is the source, ``target`` the output (statement edits have no output and
  are refused).

Example:
    >>> from serac.edits import Edit
    >>> edits = [Edit(prompt="The Eiffel Tower is in", target="Rome")]
    >>> select_layers(model, tokenizer, edits, "model.layers.{}.mlp.down_proj")  # doctest: +SKIP
    [7]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from serac.edits import Edit

__all__ = ["layer_saliency", "select_layers"]

logger = logging.getLogger(__name__)


def _as_edit(edit: Any) -> Edit:
    if isinstance(edit, Edit):
        return edit
    to_edit = getattr(edit, "to_edit", None)
    if callable(to_edit):
        converted = to_edit()
        if isinstance(converted, Edit):
            return converted
    raise TypeError(f"edits must be Edit objects (or offer to_edit()), got {type(edit).__name__}")


def _layer_weights(model: nn.Module, module_template: str) -> list[nn.Parameter]:
    if not isinstance(module_template, str) or module_template.count("{}") != 1:
        raise ValueError(f"module_template must hold exactly one '{{}}', got {module_template!r}")
    weights = []
    while True:
        try:
            module = model.get_submodule(module_template.format(len(weights)))
        except AttributeError:
            break
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter):
            raise ValueError(f"{module_template.format(len(weights))!r} has no weight parameter")
        weights.append(weight)
    if not weights:
        raise ValueError(f"model has no module {module_template.format(0)!r}; check module_template")
    return weights


def _loss_inputs(model: nn.Module, tokenizer: Any, edit: Edit) -> dict[str, torch.Tensor]:
    """Tensors for ``model(**inputs)`` whose ``labels`` score only what the edit asks the model to say."""
    device = next(model.parameters()).device
    if getattr(model.config, "is_encoder_decoder", False):
        if edit.is_statement:
            raise ValueError("an encoder-decoder model needs prompt edits with a target, not statements")
        input_ids = tokenizer(edit.query)["input_ids"]
        labels = tokenizer(text_target=edit.target)["input_ids"]
        return {
            "input_ids": torch.tensor([input_ids], device=device),
            "labels": torch.tensor([labels], device=device),
        }
    if edit.is_statement:
        input_ids = tokenizer(edit.text)["input_ids"]
        labels = list(input_ids)
    else:
        prompt_ids = tokenizer(edit.query)["input_ids"]
        target_ids = tokenizer(" " + edit.target, add_special_tokens=False)["input_ids"]
        input_ids = list(prompt_ids) + list(target_ids)
        labels = [-100] * len(prompt_ids) + list(target_ids)
    if len(input_ids) < 2 or all(label == -100 for label in labels[1:]):
        raise ValueError(f"edit {edit.text!r} leaves no token to score")
    return {
        "input_ids": torch.tensor([input_ids], device=device),
        "labels": torch.tensor([labels], device=device),
    }


def _templates(module_template: str | Sequence[str]) -> list[str]:
    templates = [module_template] if isinstance(module_template, str) else list(module_template)
    if not templates:
        raise ValueError("module_template must name at least one module")
    return templates


def _column_mean(gradient: torch.Tensor, weight: nn.Parameter, model: nn.Module) -> float:
    """Mean over the matrix's input columns of each column's mean absolute gradient."""
    magnitude = gradient.abs().float()
    # nn.Linear stores [out, in] (a column is a dim-0 slice); GPT-2's Conv1D stores [in, out].
    column_dim = 0 if magnitude.dim() == 2 and not _stores_in_out(weight, model) else -1
    return float(magnitude.mean(dim=column_dim).mean()) if magnitude.dim() == 2 else float(magnitude.mean())


def _stores_in_out(weight: nn.Parameter, model: nn.Module) -> bool:
    for module in model.modules():
        if getattr(module, "weight", None) is weight:
            return not isinstance(module, nn.Linear)
    return False


def layer_saliency(
    model: nn.Module, tokenizer: Any, edits: Sequence[Edit], module_template: str | Sequence[str]
) -> list[float]:
    """The saliency profile: one score per layer ``0..L-1`` of ``module_template``.

    ``score[l]`` is the mean over edits of ``mean(|d loss_e / d W_l|)``, where ``loss_e`` is the mean
    token NLL of edit ``e``'s target. Absolute values are taken per edit, so edits pulling a weight in
    opposite directions do not cancel. With several templates (several matrices per layer), the layer's
    score is the mean of its matrices' column saliencies (see the module docstring). The model's weights,
    ``.grad`` fields, ``requires_grad`` flags and train/eval mode are left as they were.
    """
    if isinstance(edits, Edit) or not isinstance(edits, Sequence):
        raise TypeError("edits must be a sequence of Edit objects")
    if not edits:
        raise ValueError("edits must not be empty")
    edits = [_as_edit(e) for e in edits]
    stacks = [_layer_weights(model, template) for template in _templates(module_template)]
    if len({len(stack) for stack in stacks}) != 1:
        raise ValueError(f"the modules {module_template} do not have the same number of layers")
    per_layer = len(stacks)
    # Layer-major: the matrices of layer 0, then those of layer 1, ...
    weights = [stack[layer] for layer in range(len(stacks[0])) for stack in stacks]
    batches = [_loss_inputs(model, tokenizer, e) for e in edits]  # validate all before any work

    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    totals = torch.zeros(len(stacks[0]), dtype=torch.float64)
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        for inputs in batches:
            logits = model(**inputs).logits
            labels = inputs["labels"]
            if not getattr(model.config, "is_encoder_decoder", False):
                logits, labels = logits[:, :-1], labels[:, 1:]  # position t predicts token t + 1
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
            )
            grads = torch.autograd.grad(loss, weights)
            scores = torch.tensor(
                [_column_mean(g, w, model) for g, w in zip(grads, weights, strict=True)], dtype=torch.float64
            )
            totals += scores.view(-1, per_layer).mean(1)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    profile = (totals / len(batches)).tolist()
    logger.debug("saliency of %s: %s", module_template, profile)
    return profile


def select_layers(
    model: nn.Module,
    tokenizer: Any,
    edits: Sequence[Edit],
    module_template: str | Sequence[str],
    num_layers: int = 1,
    *,
    candidate_layers: Sequence[int] | None = None,
) -> list[int]:
    """The ``num_layers`` most salient layers, most salient first (``[0]`` is the argmax).

    ``candidate_layers`` restricts the choice (e.g. to the layers an editor can handle).
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    total = len(_layer_weights(model, _templates(module_template)[0]))
    layers = list(range(total)) if candidate_layers is None else list(candidate_layers)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < total:
            raise ValueError(f"candidate layer {layer!r} is out of range 0..{total - 1}")
    if num_layers > len(layers):
        raise ValueError(f"num_layers={num_layers} exceeds the {len(layers)} candidate layers")
    profile = layer_saliency(model, tokenizer, edits, module_template)
    # Stable sort: equal saliency keeps the lower layer first.
    return sorted(layers, key=lambda layer: -profile[layer])[:num_layers]
