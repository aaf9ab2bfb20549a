"""What the weight editors ROME, MEMIT and FT+L share, as functions and two small caches.

* hyperparameters: :class:`PresetWeightEditor` takes a config or keyword hyperparameters and puts them on
  top of the preset for the model (:func:`resolve_config`, :mod:`serac.editors.hparams`);
  :func:`check_optimization_fields` checks the fields of the value optimization;
* the edited layer: :func:`resolve_layer` (a given block, ``"saliency"``, or the
  :func:`early_middle_layer` heuristic);
* per-model caches an editor keeps between calls: :class:`ContextTemplates` and :class:`SecondMoments`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any, ClassVar

import torch
from torch import nn

from serac.editors.base import WeightEditor, check_edits
from serac.editors.hparams import preset_for
from serac.editors.keys import generate_context_templates
from serac.editors.layer_stats import layer_second_moments, model_fingerprint
from serac.editors.layout import ModelLayout, check_layer, get_layout, num_layers
from serac.edits import Edit

__all__ = [
    "EARLY_MIDDLE_FRACTION",
    "ContextTemplates",
    "PresetWeightEditor",
    "SecondMoments",
    "check_context_templates",
    "check_layer_field",
    "check_optimization_fields",
    "early_middle_layer",
    "resolve_config",
    "resolve_layer",
]

logger = logging.getLogger(__name__)

#: Where factual recall sits, as a fraction of the depth: the early-middle MLPs (ROME, MEMIT papers).
EARLY_MIDDLE_FRACTION = 0.2


def resolve_config(config_class: type, model: nn.Module, method: str, overrides: dict[str, Any]) -> Any:
    """``config_class`` from the preset for ``model`` (if any) with ``overrides`` on top."""
    names = {f.name for f in fields(config_class)}
    preset = {key: value for key, value in preset_for(model, method).items() if key in names}
    return config_class(**{**preset, **overrides})


def check_optimization_fields(config: Any) -> None:
    """Check the value-optimization fields ROME and MEMIT configs share (and normalize their templates)."""
    for name in ("num_steps", "stats_samples"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name in ("lr", "weight_decay", "kl_factor", "clamp_norm_factor", "early_stop_loss"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(config.kl_prompt, str) or config.kl_prompt.count("{}") != 1:
        raise ValueError(f"kl_prompt must contain one '{{}}' for the subject, got {config.kl_prompt!r}")
    config.context_templates = check_context_templates(config.context_templates)


def check_context_templates(templates: Any) -> tuple[tuple[int, int], ...]:
    """``(tokens, count)`` pairs of positive ints, as a tuple of tuples; raise on anything else."""
    templates = tuple(tuple(pair) for pair in templates)
    for pair in templates:
        if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
            raise ValueError(
                f"context_templates must be (tokens, count) pairs of positive ints, got {pair!r}"
            )
    return templates


def check_layer_field(layer: Any) -> None:
    """A config's ``layer``: a block index, ``"saliency"`` or ``None`` (the preset or the heuristic)."""
    if layer is not None and layer != "saliency" and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise TypeError(f"layer must be an int, 'saliency' or None, got {layer!r}")


def early_middle_layer(model: nn.Module, layout: ModelLayout) -> int:
    """The block at :data:`EARLY_MIDDLE_FRACTION` of the model's depth, for models without a preset."""
    return round(EARLY_MIDDLE_FRACTION * num_layers(model, layout))


def resolve_layer(
    model: nn.Module, tokenizer: Any, edits: Sequence[Edit], layer: int | str | None, layout: ModelLayout
) -> int:
    """The block to edit: ``layer`` itself, the most salient block for ``"saliency"``, else the heuristic."""
    if layer == "saliency":
        # Imported here: saliency profiling is only needed by callers who ask for it.
        from serac.editors.saliency import select_layers

        layer = select_layers(model, tokenizer, edits, module_template=layout.down_proj, num_layers=1)[0]
    elif layer is None:
        layer = max(0, early_middle_layer(model, layout))
        logger.warning("no layer given or preset for this model; using layer %d", layer)
    return check_layer(model, layer, layout)


class ContextTemplates:
    """The context templates of each (model, settings), generated once per editor."""

    def __init__(self) -> None:
        self._templates: dict[str, list[str]] = {}

    def __call__(self, model: nn.Module, tokenizer: Any, config: Any) -> list[str]:
        """``config.context_templates`` sampled from ``model`` with ``config.context_seed``."""
        key = f"{model_fingerprint(model)}-{config.context_templates}-{config.context_seed}"
        if key not in self._templates:
            self._templates[key] = generate_context_templates(
                model, tokenizer, config.context_templates, seed=config.context_seed
            )
        return self._templates[key]


class SecondMoments:
    """The key second moments ``C`` of each (model, layer, corpus, sample count), computed once per editor."""

    def __init__(self) -> None:
        self._moments: dict[tuple, torch.Tensor] = {}

    def __call__(
        self, model: nn.Module, tokenizer: Any, layers: Sequence[int], config: Any
    ) -> dict[int, torch.Tensor]:
        """``C`` of each of ``layers``, from ``config.stats_corpus`` (see :mod:`serac.editors.layer_stats`)."""
        corpus_id = (
            config.stats_corpus
            if isinstance(config.stats_corpus, (str, type(None)))
            else id(config.stats_corpus)
        )
        fingerprint = model_fingerprint(model)
        key = lambda layer: (fingerprint, layer, corpus_id, config.stats_samples)  # noqa: E731
        missing = [layer for layer in layers if key(layer) not in self._moments]
        if missing:
            moments = layer_second_moments(
                model,
                tokenizer,
                missing,
                corpus=config.stats_corpus,
                num_samples=config.stats_samples,
                cache=config.stats_cache,
            )
            for layer, moment in moments.items():
                self._moments[key(layer)] = moment
        return {layer: self._moments[key(layer)] for layer in layers}


class PresetWeightEditor(WeightEditor):
    """A weight editor whose hyperparameters are a ``config_class`` dataclass filled from per-model presets.

    Give either a ``config_class`` instance or its fields as keyword arguments; they are checked at once,
    not at the first :meth:`apply`, and override the preset for the edited model
    (:mod:`serac.editors.hparams`).
    """

    config_class: ClassVar[type]

    def __init__(self, config: Any | None = None, **hyperparameters: Any) -> None:
        super().__init__()
        if config is not None and hyperparameters:
            raise ValueError("give either a config or keyword hyperparameters, not both")
        self.config_class(**hyperparameters)  # validates names and values
        self._overrides = asdict(config) if config is not None else dict(hyperparameters)

    def resolved_config(self, model: nn.Module) -> Any:
        """The hyperparameters :meth:`apply` would use on ``model`` (preset + given overrides)."""
        return resolve_config(self.config_class, model, self.name, self._overrides)

    def _begin(
        self, model: nn.Module, edits: Sequence[Edit], *, method: str, require_subject: bool
    ) -> tuple[list[Edit], ModelLayout, Any]:
        """Check ``edits`` and find the layout and config, all before any weight changes."""
        edits = check_edits(edits, method=method, require_subject=require_subject)
        layout = get_layout(model)
        config = self.resolved_config(model)
        self._claim_model(model)
        return edits, layout, config
