"""ROME: rank-one model editing of one MLP down-projection (Meng et al., 2022, "Locating and Editing
Factual Associations in GPT").

The down-projection of an MLP is read as a key-value memory: the key ``k`` is the projection's input at
the subject's last token, the value is its output. An edit

1. computes the key ``k*``: the input at the subject's last token, averaged over the edit prompt behind a
   few short prefixes the model generated itself (context templates), so the key does not depend on one
   exact wording (:func:`serac.editors.keys.compute_keys`);
2. finds the value ``v* = W k + delta``: ``delta`` is optimized, added to the projection's output at the
   subject's last token, so that the model emits the target after every context template, with a KL term
   keeping "{subject} is a" predictions stable, a weight decay on ``delta`` and a norm clamp
   (:func:`serac.editors.values.compute_target_deltas`); ``k`` is the key of the edit prompt itself;
3. inserts the pair in closed form, in the direction ``C^-1 k*`` that touches other keys least under the
   key second moment ``C`` (:mod:`serac.editors.layer_stats`), scaled so that the edit prompt's own key
   ``k`` is sent exactly to ``v*``, as in the ROME authors' code::

       W' = W + (v* - W k) (C^-1 k*)^T / ((C^-1 k*)^T k)

   (``insertion_key="average"`` sends ``k*`` to ``v*`` instead, the paper's formula
   ``W' = W + (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*)``: weaker on the edit prompt whenever its key is
   far from the average, as at the attention-sink positions of a prompt that starts with the subject.)

The model is unchanged unless :meth:`ROMEEditor.apply` is called; :meth:`ROMEEditor.restore` gives back the
original weights bit for bit.

Example:
    >>> editor = ROMEEditor(layer=4)                                           # doctest: +SKIP
    >>> editor.apply(model, tokenizer, [Edit(prompt="{} plays the sport of",   # doctest: +SKIP
    ...                                       subject="LeBron James", target="football")])
    >>> editor.restore()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from serac.editors.base import prepare_prompt
from serac.editors.common import (
    ContextTemplates,
    PresetWeightEditor,
    SecondMoments,
    check_layer_field,
    check_optimization_fields,
    resolve_layer,
)
from serac.editors.keys import compute_template_keys
from serac.editors.layout import get_module, weight_as_out_in
from serac.editors.values import compute_target_deltas
from serac.edits import Edit

__all__ = ["ROMEConfig", "ROMEEditor", "RankOneUpdate", "solve_rank_one"]

logger = logging.getLogger(__name__)


@dataclass
class ROMEConfig:
    """ROME hyperparameters (paper values for GPT-2 XL / GPT-J unless noted).

    Fields left at ``None`` by the caller are filled from :mod:`serac.editors.hparams` for known models.
    """

    layer: int | str | None = field(default=None, metadata={"help": "block index, or 'saliency'"})
    num_steps: int = field(default=20, metadata={"help": "Adam steps optimizing the value delta"})
    lr: float = field(default=0.5, metadata={"help": "learning rate of the value optimization"})
    weight_decay: float = field(default=0.5, metadata={"help": "penalty weight * ||delta|| / ||v||^2"})
    kl_factor: float = field(default=0.0625, metadata={"help": "weight of the '{subject} is a' KL term"})
    clamp_norm_factor: float = field(default=4.0, metadata={"help": "||delta|| <= factor * ||v||"})
    early_stop_loss: float = field(default=0.05, metadata={"help": "stop once the target NLL is below this"})
    kl_prompt: str = field(default="{} is a", metadata={"help": "essence prompt of the KL term"})
    context_templates: tuple[tuple[int, int], ...] = field(
        default=((5, 5), (10, 5)), metadata={"help": "(tokens, count) of model-generated prefixes"}
    )
    context_seed: int = field(default=0, metadata={"help": "sampling seed of the context templates"})
    insertion_key: str = field(
        default="prompt",
        metadata={"help": "key sent exactly to the value: 'prompt' (the edit prompt's) or 'average'"},
    )
    stats_corpus: Any = field(
        default=None, metadata={"help": "corpus of the key statistics (see layer_stats)"}
    )
    stats_samples: int = field(default=20_000, metadata={"help": "token vectors averaged into C"})
    stats_ridge: float = field(default=1e-4, metadata={"help": "C + ridge * mean(diag C) * I before solving"})
    stats_cache: bool = field(default=True, metadata={"help": "cache statistics on disk"})

    def __post_init__(self) -> None:
        check_layer_field(self.layer)
        if self.insertion_key not in ("prompt", "average"):
            raise ValueError(f"insertion_key must be 'prompt' or 'average', got {self.insertion_key!r}")
        check_optimization_fields(self)
        if not isinstance(self.stats_ridge, (int, float)) or self.stats_ridge < 0:
            raise ValueError(f"stats_ridge must be >= 0, got {self.stats_ridge!r}")


def solve_rank_one(second_moment: torch.Tensor, key: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(C + ridge * mean(diag C) * I)^-1 k`` in float64 (the ridge keeps a C from few samples invertible)."""
    c = second_moment.to(torch.float64)
    if ridge > 0:
        c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    return torch.linalg.solve(c, key.to(c.device, torch.float64))


@dataclass
class RankOneUpdate:
    """What one ROME edit inserted at ``layer``: ``W' inserted_key = value`` (vectors float32, CPU)."""

    layer: int
    key: torch.Tensor  # k*, averaged over the context templates
    value: torch.Tensor  # v*
    left: torch.Tensor  # C^-1 k*
    delta: torch.Tensor  # v* - W inserted_key
    nll: float
    steps: int
    inserted_key: torch.Tensor  # the edit prompt's key (insertion_key="prompt") or k*


class ROMEEditor(PresetWeightEditor):
    """Rank-one model editing; edits in one :meth:`apply` are inserted one after another.

    Args:
        config: a :class:`ROMEConfig`; or give its fields as keyword arguments.

    Example:
        >>> editor = ROMEEditor(layer=4, num_steps=20)   # doctest: +SKIP
        >>> model = editor.apply(model, tokenizer, edits)  # doctest: +SKIP
    """

    name: ClassVar[str] = "rome"
    supports_batch: ClassVar[bool] = False
    supports_sequential: ClassVar[bool] = True
    config_class: ClassVar[type] = ROMEConfig

    def __init__(self, config: ROMEConfig | None = None, **hyperparameters: Any) -> None:
        super().__init__(config, **hyperparameters)
        self.context_templates = ContextTemplates()
        self.second_moments = SecondMoments()
        self.updates: list[RankOneUpdate] = []

    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> nn.Module:
        """Insert each edit into ``model`` in place and return it."""
        start = time.perf_counter()
        edits, layout, config = self._begin(model, edits, method="ROME", require_subject=True)
        layer = resolve_layer(model, tokenizer, edits, config.layer, layout)
        for edit in edits:  # tokenization problems surface before any weight changes
            prepare_prompt(tokenizer, edit)
        module_name = layout.down_proj.format(layer)
        module = get_module(model, module_name)

        stats_start = time.perf_counter()
        second_moment = self.second_moments(model, tokenizer, [layer], config)[layer]
        templates = self.context_templates(model, tokenizer, config)
        stats_seconds = time.perf_counter() - stats_start

        self._backup(model, [f"{module_name}.weight"])
        updates = []
        for edit in edits:
            template_keys = compute_template_keys(model, tokenizer, module_name, [edit], templates)[0]
            key = template_keys.mean(dim=0)
            # templates[0] is the bare edit prompt.
            inserted = template_keys[0] if config.insertion_key == "prompt" else key
            target = compute_target_deltas(model, tokenizer, layout, module_name, [edit], templates, config)
            left = solve_rank_one(second_moment, key, config.stats_ridge).to(key.device)
            if float(torch.dot(left, inserted.double())) <= 1e-3 * float(torch.dot(left, key.double())):
                # The prompt's key barely lies along C^-1 k*: sending it to v* would take a huge update.
                logger.warning(
                    "ROME: the key of %r is nearly orthogonal to C^-1 k*; inserting k*", edit.query
                )
                inserted = key
            with torch.no_grad():
                weight = weight_as_out_in(module.weight, layout)
                # delta was optimized on top of the edit prompt's output W k: v* = W k + delta.
                value = target.initial[0] + target.deltas[0]
                delta = value - module(inserted.to(weight.dtype)[None])[0].float()
                update = torch.outer(delta.double(), left) / torch.dot(left, inserted.double())
                weight.add_(update.to(weight.dtype))
            updates.append(
                RankOneUpdate(
                    layer=layer,
                    key=key.cpu(),
                    value=value.cpu(),
                    left=left.float().cpu(),
                    delta=delta.cpu(),
                    nll=float(target.nll[0]),
                    steps=target.steps[0],
                    inserted_key=inserted.cpu(),
                )
            )
        self.updates += updates
        self.last_stats = {
            "seconds": time.perf_counter() - start,
            "stats_seconds": stats_seconds,
            "layer": layer,
            "target_nll": [u.nll for u in updates],
            "steps": [u.steps for u in updates],
        }
        return model
