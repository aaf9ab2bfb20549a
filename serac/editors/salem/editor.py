"""SaLEM: MEND on the most salient layer (Mishra et al., EACL 2024, "Correcting Language Model Outputs by
Editing Salient Layers").

MEND edits hand-picked blocks (the last three). SaLEM first asks the gradients where to edit: the target NLL
of a sample of the *training* edits is back-propagated once per edit, the saliency of every block's MLP
matrices is averaged parameter -> column -> layer (:func:`serac.editors.saliency.layer_saliency`), and the
editor network is trained and applied on the ``num_salient_layers`` most salient blocks only. Fewer edited
matrices mean a smaller editor network, cheaper training steps and fewer weights changed per edit.

The chosen blocks depend only on the base model and the training data, so they are computed once and cached
next to the trained networks.

Example:
    >>> from serac.editors import get_editor
    >>> editor = get_editor("salem", num_salient_layers=1)   # doctest: +SKIP
    >>> editor.apply(model, tokenizer, edits)                 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from serac.editors.layer_stats import model_fingerprint
from serac.editors.layout import get_layout, get_module
from serac.editors.mend.editor import MENDEditor, MENDEditorConfig
from serac.editors.mend.network import UP_PROJ_NAMES
from serac.editors.mend.training import load_training_examples
from serac.editors.saliency import layer_saliency
from serac.files import write_json_atomic
from serac.offline import cache_dir

__all__ = ["SaLEMEditor", "SaLEMEditorConfig", "salient_layers"]

logger = logging.getLogger(__name__)


@dataclass
class SaLEMEditorConfig(MENDEditorConfig):
    """:class:`~serac.editors.mend.MENDEditorConfig` plus how the edited blocks are chosen.

    ``layers`` given explicitly skips the saliency selection.
    """

    num_salient_layers: int = field(default=1, metadata={"help": "blocks edited (the most salient)"})
    candidate_layers: list[int] | None = field(
        default=None, metadata={"help": "blocks the saliency chooses among (None: every block)"}
    )
    saliency_edits: int = field(default=64, metadata={"help": "training edits the saliency is averaged over"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_salient_layers", "saliency_edits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.candidate_layers is not None:
            candidates = self.candidate_layers
            if (
                not isinstance(candidates, list)
                or not candidates
                or not all(
                    isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0
                    for layer in candidates
                )
            ):
                raise ValueError(
                    f"candidate_layers must be a non-empty list of block indices, got {candidates!r}"
                )
            if self.num_salient_layers > len(candidates):
                raise ValueError(
                    f"num_salient_layers={self.num_salient_layers} exceeds the {len(candidates)} candidate blocks"
                )


def module_templates(model: nn.Module, projections: list[str]) -> list[str]:
    """Name templates (``{}`` = block) of the MLP matrices MEND edits, one per projection."""
    layout = get_layout(model)
    templates = []
    for projection in projections:
        if projection == "down_proj":
            templates.append(layout.down_proj)
            continue
        mlp = get_module(model, layout.mlp.format(0))
        child = next(
            (name for name in UP_PROJ_NAMES if isinstance(getattr(mlp, name, None), nn.Module)), None
        )
        if child is None:
            raise ValueError(f"{layout.mlp.format(0)} has none of the input projections {UP_PROJ_NAMES}")
        templates.append(f"{layout.mlp}.{child}")
    return templates


def salient_layers(
    model: nn.Module, tokenizer: Any, config: SaLEMEditorConfig, *, use_cache: bool = True
) -> tuple[list[int], list[float]]:
    """The ``config.num_salient_layers`` most salient blocks (most salient first) and the saliency profile.

    The saliency is measured on ``config.saliency_edits`` prompt edits drawn (seeded) from
    ``config.train_data``; the result is cached per base model and settings.
    """
    settings = {
        "train_data": config.train_data,
        "saliency_edits": config.saliency_edits,
        "projections": config.projections,
        "seed": config.seed,
    }
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / "parts" / f"salem-saliency-{model_fingerprint(model)}-{digest}.json"
    if use_cache and path.exists():
        profile = json.loads(path.read_text())["profile"]
    else:
        examples = [
            example
            for spec in config.train_data
            for example in load_training_examples(spec, seed=config.seed)
            if not example.edit.is_statement
        ]
        if not examples:
            raise ValueError(f"train_data {config.train_data} holds no prompt edits to measure saliency on")
        sample = random.Random(config.seed).sample(examples, min(config.saliency_edits, len(examples)))
        logger.info("Measuring layer saliency on %d training edits", len(sample))
        profile = layer_saliency(
            model,
            tokenizer,
            [example.edit for example in sample],
            module_templates(model, config.projections),
        )
        if use_cache:
            write_json_atomic(path, {"settings": settings, "profile": profile})
    candidates = list(range(len(profile))) if config.candidate_layers is None else config.candidate_layers
    outside = [layer for layer in candidates if layer >= len(profile)]
    if outside:
        raise ValueError(f"candidate_layers {outside} are not blocks of this model ({len(profile)} blocks)")
    if config.num_salient_layers > len(candidates):
        raise ValueError(
            f"num_salient_layers={config.num_salient_layers} exceeds the {len(candidates)} blocks"
        )
    # Stable sort: equal saliency keeps the lower block first.
    chosen = sorted(candidates, key=lambda layer: -profile[layer])[: config.num_salient_layers]
    return chosen, profile


class SaLEMEditor(MENDEditor):
    """SaLEM: MEND trained and applied on the most salient blocks (see the module docstring).

    Args:
        config: a :class:`SaLEMEditorConfig`; or give its fields as keyword arguments.
    """

    name: ClassVar[str] = "salem"
    config_class: ClassVar[type] = SaLEMEditorConfig

    def __init__(self, config: Any | None = None, **hyperparameters: Any) -> None:
        super().__init__(config, **hyperparameters)
        self.saliency_profile: list[float] | None = None

    def edit_layers(self, model: nn.Module, tokenizer: Any, config: MENDEditorConfig) -> list[int]:
        """The configured blocks, else the most salient ones."""
        if config.layers is not None:
            return list(config.layers)
        assert isinstance(config, SaLEMEditorConfig)
        layers, self.saliency_profile = salient_layers(model, tokenizer, config)
        logger.info("SaLEM edits block(s) %s", layers)
        return sorted(layers)
