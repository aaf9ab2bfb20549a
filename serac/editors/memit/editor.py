"""MEMIT: many edits at once, spread over a range of MLP layers (Meng et al., 2023, "Mass-Editing Memory
in a Transformer").

1. For every edit a target hidden state ``z`` at the output of the last edited block is found as in ROME
   (a delta at the subject's last token, optimized so the model emits the target; clamp relative to the
   hidden state's norm).
2. Layer by layer, lowest first: the keys ``K`` (down-projection inputs at the subject's last token,
   averaged over context templates) are recomputed with the layers below already updated, the remaining
   residual ``z - h`` at the last block is divided by the number of layers left, giving ``R``, and the
   least-squares update

       dW = R K^T (lambda * C + K K^T)^-1        (float64)

   is added. It minimises ``||dW K - R||^2 + lambda * tr(dW C dW^T)``: meet the new key-value pairs while
   moving the outputs of the keys the layer usually sees (second moment ``C``) little; ``lambda`` is
   ``mom2_update_weight``.

Example:
    >>> editor = MEMITEditor(layers=[2, 3, 4, 5, 6])   # doctest: +SKIP
    >>> editor.apply(model, tokenizer, edits)          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from serac.editors.base import prepare_prompt
from serac.editors.common import (
    ContextTemplates,
    PresetWeightEditor,
    SecondMoments,
    check_optimization_fields,
    early_middle_layer,
)
from serac.editors.keys import compute_keys, module_output_at_subject
from serac.editors.layout import check_layer, get_module, weight_as_out_in
from serac.editors.values import compute_target_deltas
from serac.edits import Edit

__all__ = ["LayerUpdate", "MEMITConfig", "MEMITEditor"]

logger = logging.getLogger(__name__)


@dataclass
class MEMITConfig:
    """MEMIT hyperparameters (paper values for GPT-J unless noted); ``None`` fields come from presets."""

    layers: list[int] | None = field(default=None, metadata={"help": "block indices to spread edits over"})
    mom2_update_weight: float = field(default=15000.0, metadata={"help": "lambda: weight of C in the solve"})
    num_steps: int = field(default=25, metadata={"help": "Adam steps optimizing each target delta"})
    lr: float = field(default=0.5, metadata={"help": "learning rate of the target optimization"})
    weight_decay: float = field(default=0.5, metadata={"help": "penalty weight * ||delta|| / ||h||^2"})
    kl_factor: float = field(default=0.0625, metadata={"help": "weight of the '{subject} is a' KL term"})
    clamp_norm_factor: float = field(default=0.75, metadata={"help": "||delta|| <= factor * ||h||"})
    early_stop_loss: float = field(default=0.05, metadata={"help": "stop once the target NLL is below this"})
    kl_prompt: str = field(default="{} is a", metadata={"help": "essence prompt of the KL term"})
    context_templates: tuple[tuple[int, int], ...] = field(
        default=((10, 5),), metadata={"help": "(tokens, count) of model-generated prefixes"}
    )
    context_seed: int = field(default=0, metadata={"help": "sampling seed of the context templates"})
    value_batch_size: int = field(default=8, metadata={"help": "edits whose targets are optimized together"})
    stats_corpus: Any = field(
        default=None, metadata={"help": "corpus of the key statistics (see layer_stats)"}
    )
    stats_samples: int = field(default=20_000, metadata={"help": "token vectors averaged into C"})
    stats_ridge: float = field(
        default=1e-4, metadata={"help": "C + ridge * mean(diag C) * I (C from few samples can be singular)"}
    )
    stats_cache: bool = field(default=True, metadata={"help": "cache statistics on disk"})

    def __post_init__(self) -> None:
        if self.layers is not None:
            if isinstance(self.layers, (int, str)) or not all(
                isinstance(layer, int) and not isinstance(layer, bool) for layer in self.layers
            ):
                raise TypeError(f"layers must be a list of ints, got {self.layers!r}")
            if not self.layers:
                raise ValueError("layers must not be empty")
            self.layers = sorted(set(self.layers))
        check_optimization_fields(self)
        if self.mom2_update_weight < 0 or self.stats_ridge < 0:
            raise ValueError("mom2_update_weight and stats_ridge must be >= 0")
        if not isinstance(self.value_batch_size, int) or self.value_batch_size < 1:
            raise ValueError(f"value_batch_size must be a positive int, got {self.value_batch_size!r}")


@dataclass
class LayerUpdate:
    """One layer's MEMIT solve (float64, CPU): ``update (lambda C + K K^T) = residuals K^T``."""

    layer: int
    keys: torch.Tensor  # K, [in, edits]
    residuals: torch.Tensor  # R, [out, edits]
    update: torch.Tensor  # dW, [out, in]
    second_moment: torch.Tensor  # C (after the ridge), [in, in]
    mom2_update_weight: float


class MEMITEditor(PresetWeightEditor):
    """Mass editing: all edits of one :meth:`apply` are solved jointly over ``layers``.

    Args:
        config: a :class:`MEMITConfig`; or give its fields as keyword arguments.
    """

    name: ClassVar[str] = "memit"
    supports_batch: ClassVar[bool] = True
    supports_sequential: ClassVar[bool] = True
    config_class: ClassVar[type] = MEMITConfig

    def __init__(self, config: MEMITConfig | None = None, **hyperparameters: Any) -> None:
        super().__init__(config, **hyperparameters)
        self.context_templates = ContextTemplates()
        self.second_moments = SecondMoments()
        self.layer_updates: list[LayerUpdate] = []

    def _resolve_layers(self, model: nn.Module, config: MEMITConfig, layout) -> list[int]:
        layers = config.layers
        if layers is None:
            # Five blocks around the early-middle one, as in the paper's GPT-J setting.
            center = max(2, early_middle_layer(model, layout))
            layers = list(range(center - 2, center + 3))
            logger.warning("no MEMIT layers given or preset for this model; using %s", layers)
        return [check_layer(model, layer, layout) for layer in layers]

    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> nn.Module:
        """Insert all ``edits`` into ``model`` in place and return it."""
        start = time.perf_counter()
        edits, layout, config = self._begin(model, edits, method="MEMIT", require_subject=True)
        layers = self._resolve_layers(model, config, layout)
        for edit in edits:
            prepare_prompt(tokenizer, edit)

        stats_start = time.perf_counter()
        moments = self.second_moments(model, tokenizer, layers, config)
        templates = self.context_templates(model, tokenizer, config)
        stats_seconds = time.perf_counter() - stats_start

        self._backup(model, [f"{layout.down_proj.format(layer)}.weight" for layer in layers])
        z_module = layout.layer.format(layers[-1])
        targets, nll, steps = [], [], []
        # Minutes per hundred edits on a CPU: a bar once there is more than one chunk to optimize.
        bar = tqdm(total=len(edits), desc="MEMIT target vectors", unit="edit",
                   disable=len(edits) <= config.value_batch_size)  # fmt: skip
        for chunk_start in range(0, len(edits), config.value_batch_size):
            chunk = edits[chunk_start : chunk_start + config.value_batch_size]
            result = compute_target_deltas(model, tokenizer, layout, z_module, chunk, templates, config)
            targets.append(result.initial + result.deltas)
            nll += result.nll.tolist()
            steps += result.steps
            bar.update(len(chunk))
        bar.close()
        target_z = torch.cat(targets).double().T  # [hidden, edits]
        values_seconds = time.perf_counter() - start - stats_seconds

        layer_updates = []
        for index, layer in enumerate(layers):
            module_name = layout.down_proj.format(layer)
            module = get_module(model, module_name)
            keys = compute_keys(model, tokenizer, module_name, edits, templates).double().T  # [in, edits]
            current_z = module_output_at_subject(model, tokenizer, z_module, edits).double().T
            residuals = (target_z - current_z) / (len(layers) - index)
            second_moment = moments[layer].to(keys.device, torch.float64)
            if config.stats_ridge > 0:
                second_moment = (
                    second_moment
                    + config.stats_ridge
                    * second_moment.diagonal().mean()
                    * torch.eye(second_moment.shape[0], dtype=torch.float64, device=keys.device)
                )
            system = config.mom2_update_weight * second_moment + keys @ keys.T
            # system is symmetric, so dW = R K^T system^-1 is the transpose of system^-1 K R^T.
            update = torch.linalg.solve(system, keys @ residuals.T).T
            with torch.no_grad():
                weight = weight_as_out_in(module.weight, layout)
                weight.add_(update.to(weight.dtype))
            layer_updates.append(
                LayerUpdate(
                    layer,
                    keys.cpu(),
                    residuals.cpu(),
                    update.cpu(),
                    second_moment.cpu(),
                    config.mom2_update_weight,
                )
            )
            logger.debug("layer %d: mean residual norm %.3f", layer, residuals.norm(dim=0).mean())
        self.layer_updates = layer_updates
        self.last_stats = {
            "seconds": time.perf_counter() - start,
            "stats_seconds": stats_seconds,
            "values_seconds": values_seconds,
            "layers": layers,
            "target_nll": nll,
            "steps": steps,
        }
        return model
