"""Knowledge neurons (Dai et al., ACL 2022): find the FFN neurons that express a fact, then rewrite them.

Attribution is integrated gradients over the intermediate activations of one MLP at the prompt's last token:
the activation ``a`` is scaled from 0 to its actual value in ``steps`` equal steps and, for each neuron,
``a_i`` times the mean gradient of the answer's probability along that path is its attribution (a Riemann
sum; with many steps the attributions of one layer add up to ``p(a) - p(0)``, the completeness property).
Neurons above a fraction of the largest attribution are candidates; the ones that stay candidates across
several wordings of the prompt (the prompt behind short context prefixes, as ROME's keys use) are the
fact's knowledge neurons.

The edit ("updating facts" in the paper) changes only those neurons' value vectors, the columns of the
down-projection they write through: the direction of the old answer's token embedding is taken out and the
new answer's put in. The old answer is what the model itself predicts for the prompt.

Example:
    >>> editor = KnowledgeNeuronsEditor(layers=(20, 21, 22))   # doctest: +SKIP
    >>> editor.apply(model, tokenizer, edits)                  # doctest: +SKIP
    >>> editor.last_stats["neurons"]                           # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from serac.editors.base import model_device, target_token_ids, token_ids
from serac.editors.common import ContextTemplates, PresetWeightEditor, check_context_templates
from serac.editors.layout import (
    ModelLayout,
    check_layer,
    get_layout,
    get_module,
    num_layers,
    weight_as_out_in,
)
from serac.edits import Edit

__all__ = [
    "Attribution",
    "KNConfig",
    "KnowledgeNeuronsEditor",
    "find_knowledge_neurons",
    "neuron_attributions",
]

logger = logging.getLogger(__name__)

#: Share of the depth, from the top, searched when neither the caller nor a preset names the layers: the
#: paper finds knowledge neurons mostly in the topmost layers.
TOP_LAYERS_FRACTION = 0.25


@dataclass
class KNConfig:
    """Knowledge-neuron hyperparameters (paper values for BERT where it gives them)."""

    layers: tuple[int, ...] | None = field(
        default=None, metadata={"help": "blocks whose MLP neurons are searched (None: preset or top quarter)"}
    )
    steps: int = field(default=20, metadata={"help": "integrated-gradients steps from 0 to the activation"})
    attribution_threshold: float = field(
        default=0.2, metadata={"help": "a candidate's attribution is above this fraction of the prompt's max"}
    )
    shared_fraction: float = field(
        default=0.5, metadata={"help": "a knowledge neuron is a candidate for at least this share of prompts"}
    )
    max_neurons: int = field(
        default=10, metadata={"help": "at most this many neurons per edit (by mean score)"}
    )
    erase_scale: float = field(
        default=1.0, metadata={"help": "times the old answer's unit embedding taken out of each value vector"}
    )
    insert_scale: float = field(
        default=8.0, metadata={"help": "times the new answer's unit embedding put into each value vector"}
    )
    context_templates: tuple[tuple[int, int], ...] = field(
        default=((5, 3),), metadata={"help": "(tokens, count) of the generated prefixes giving more prompts"}
    )
    context_seed: int = field(default=0, metadata={"help": "sampling seed of the context prefixes"})
    batch_size: int = field(default=32, metadata={"help": "scaled copies of a prompt per forward pass"})

    def __post_init__(self) -> None:
        if self.layers is not None:
            if isinstance(self.layers, (int, str)) or not all(
                isinstance(layer, int) and not isinstance(layer, bool) for layer in self.layers
            ):
                raise TypeError(f"layers must be a sequence of ints, got {self.layers!r}")
            self.layers = tuple(self.layers)
            if not self.layers:
                raise ValueError("layers must name at least one block")
        for name in ("steps", "max_neurons", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("attribution_threshold", "shared_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        for name in ("erase_scale", "insert_scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.context_templates = check_context_templates(self.context_templates)


@dataclass(frozen=True)
class Attribution:
    """Integrated-gradients scores of one layer's neurons, and the probabilities at both ends of the path.

    ``scores.sum()`` approaches ``probability - baseline_probability`` as the number of steps grows.
    """

    scores: torch.Tensor
    probability: float
    baseline_probability: float


def neuron_attributions(
    model: nn.Module,
    down_proj_name: str,
    input_ids: Sequence[int],
    target_token: int,
    *,
    steps: int = 20,
    batch_size: int = 32,
) -> Attribution:
    """Integrated gradients of ``p(target_token)`` at the last position over the input neurons of a down-projection.

    The path scales the neurons' activation at the last token, ``a``, as ``(k / steps) * a`` for
    ``k = 1..steps`` (right Riemann sum), every other activation staying as it is.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    module = get_module(model, down_proj_name)
    layout = get_layout(model)
    body, lm_head = get_module(model, layout.body), get_module(model, layout.lm_head)
    device = model_device(model)
    ids = torch.tensor([list(input_ids)], dtype=torch.long, device=device)
    captured: dict[str, torch.Tensor] = {}
    replacement: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        hidden = inputs[0]
        if "scaled" not in replacement:
            captured["activation"] = hidden[0, -1].detach().clone()
            return inputs
        # The blocks below run once; the path's copies start here and broadcast through the blocks above.
        scaled = replacement["scaled"]
        hidden = hidden.expand(scaled.shape[0], -1, -1).clone()
        hidden[:, -1] = scaled.to(hidden.dtype)
        return (hidden, *inputs[1:])

    def probabilities() -> torch.Tensor:
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
        return lm_head(hidden).float().softmax(-1)[:, target_token]

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            probability = float(probabilities()[0])
        activation = captured["activation"].float()
        total = torch.zeros_like(activation)
        alphas = torch.arange(1, steps + 1, device=device, dtype=torch.float32) / steps
        with torch.no_grad():
            replacement["scaled"] = torch.zeros_like(activation)[None]
            baseline = float(probabilities()[0])
        for chunk in alphas.split(batch_size):
            scaled = (chunk[:, None] * activation[None]).requires_grad_(True)
            replacement["scaled"] = scaled
            with torch.enable_grad():
                (gradient,) = torch.autograd.grad(probabilities().sum(), scaled)
            total += gradient.sum(0)
    finally:
        handle.remove()
    return Attribution(activation * total / steps, probability, baseline)


def find_knowledge_neurons(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    target_token: int,
    layers: Sequence[int],
    layout: ModelLayout,
    config: KNConfig,
) -> list[tuple[int, int, float]]:
    """The fact's knowledge neurons as ``(layer, neuron, mean attribution)``, strongest first.

    A neuron is a candidate for a prompt when its attribution exceeds ``attribution_threshold`` times the
    largest over all searched layers for that prompt; it is kept when it is a candidate for at least
    ``shared_fraction`` of the prompts. If no neuron is shared that widely, the candidates of the mean
    attribution are kept instead (logged), so a fact phrased in few prompts still gets neurons.
    """
    per_prompt = []
    for ids in prompts:
        scores = torch.stack(
            [
                neuron_attributions(
                    model,
                    layout.down_proj.format(layer),
                    ids,
                    target_token,
                    steps=config.steps,
                    batch_size=config.batch_size,
                ).scores
                for layer in layers
            ]
        )
        per_prompt.append(scores)
    scores = torch.stack(per_prompt)  # [prompts, layers, neurons]
    largest = scores.flatten(1).amax(dim=1).clamp_min(1e-12)
    candidates = scores > config.attribution_threshold * largest[:, None, None]
    shared = candidates.float().mean(dim=0) >= config.shared_fraction
    mean = scores.mean(dim=0)
    if not bool(shared.any()):
        logger.info(
            "no neuron is shared by %.0f%% of the prompts; using the mean attribution",
            100 * config.shared_fraction,
        )
        shared = mean > config.attribution_threshold * mean.max().clamp_min(1e-12)
    positions = shared.nonzero().tolist()
    found = sorted(((layers[i], j, float(mean[i, j])) for i, j in positions), key=lambda t: -t[2])
    return found[: config.max_neurons]


class KnowledgeNeuronsEditor(PresetWeightEditor):
    """Knowledge neurons: attribute the old answer to MLP neurons, then swap answers in their value vectors.

    Args:
        config: a :class:`KNConfig`; or give its fields as keyword arguments.
    """

    name: ClassVar[str] = "kn"
    supports_batch: ClassVar[bool] = True
    supports_sequential: ClassVar[bool] = True
    config_class: ClassVar[type] = KNConfig

    def __init__(self, config: KNConfig | None = None, **hyperparameters: Any) -> None:
        super().__init__(config, **hyperparameters)
        self.context_templates = ContextTemplates()

    def _layers(self, model: nn.Module, layout: ModelLayout, config: KNConfig) -> list[int]:
        if config.layers is not None:
            return [check_layer(model, layer, layout) for layer in config.layers]
        count = num_layers(model, layout)
        first = count - max(1, round(TOP_LAYERS_FRACTION * count))
        logger.warning("no layers given or preset for this model; searching layers %d-%d", first, count - 1)
        return list(range(first, count))

    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> nn.Module:
        """Find each edit's knowledge neurons on the current model, then rewrite them all; return the model."""
        start = time.perf_counter()
        edits, layout, config = self._begin(model, edits, method="knowledge neurons", require_subject=False)
        layers = self._layers(model, layout, config)
        embedding = get_module(model, layout.lm_head).weight.detach()
        templates = self.context_templates(model, tokenizer, config)
        device = model_device(model)

        # Every edit is attributed on the same (current) model before any value vector changes.
        updates: list[tuple[int, int, torch.Tensor]] = []
        neurons_per_edit: list[list[tuple[int, int]]] = []
        unchanged = 0
        for edit in edits:
            prompt_ids = token_ids(tokenizer, edit.query)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=False).logits
            old_token = int(logits[0, -1].argmax())
            new_token = target_token_ids(tokenizer, edit.query, edit.target)[0]
            if old_token == new_token:
                # The model already answers with the new target's first token: nothing to swap.
                unchanged += 1
                neurons_per_edit.append([])
                continue
            prompts = [token_ids(tokenizer, template.replace("{}", edit.query)) for template in templates]
            neurons = find_knowledge_neurons(model, prompts, old_token, layers, layout, config)
            neurons_per_edit.append([(layer, neuron) for layer, neuron, _ in neurons])
            old_direction = embedding[old_token].float() / embedding[old_token].float().norm()
            new_direction = embedding[new_token].float() / embedding[new_token].float().norm()
            delta = config.insert_scale * new_direction - config.erase_scale * old_direction
            updates += [(layer, neuron, delta) for layer, neuron, _ in neurons]

        touched = sorted({layer for layer, _, _ in updates})
        self._backup(model, [f"{layout.down_proj.format(layer)}.weight" for layer in touched])
        with torch.no_grad():
            for layer, neuron, delta in updates:
                weight = weight_as_out_in(get_module(model, layout.down_proj.format(layer)).weight, layout)
                weight[:, neuron] += delta.to(weight.dtype)
        self.last_stats = {
            "seconds": time.perf_counter() - start,
            "layers": layers,
            "neurons": sum(len(found) for found in neurons_per_edit),
            "knowledge_neurons": neurons_per_edit,
            "prompts_per_edit": len(templates),
            "already_answered": unchanged,
        }
        return model
