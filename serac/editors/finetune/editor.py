"""FT+L: constrained fine-tuning of one MLP down-projection (the "FT+L" baseline of the ROME paper).

Adam steps on the target NLL of the edit prompts (all edits of one :meth:`FineTuneEditor.apply` in one
batch), changing only the weight of one layer's down-projection; after every step each weight is clipped
back into ``[w0 - epsilon, w0 + epsilon]`` around its value at the start of the apply (the L-inf norm
bound that keeps fine-tuning from wrecking unrelated behaviour).

Example:
    >>> editor = FineTuneEditor(layer=4, norm_constraint=5e-4)   # doctest: +SKIP
    >>> editor.apply(model, tokenizer, edits)                    # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from serac.editors.base import (
    model_device,
    pad_batch,
    pad_token_id,
    target_token_ids,
    token_ids,
)
from serac.editors.common import PresetWeightEditor, check_layer_field, resolve_layer
from serac.editors.layout import get_module
from serac.edits import Edit

__all__ = ["FTConfig", "FineTuneEditor"]


@dataclass
class FTConfig:
    """FT+L hyperparameters (ROME paper values for GPT-2 XL); ``None`` fields come from presets."""

    layer: int | str | None = field(default=None, metadata={"help": "block index, or 'saliency'"})
    num_steps: int = field(default=25, metadata={"help": "Adam steps"})
    lr: float = field(default=5e-4, metadata={"help": "Adam learning rate"})
    norm_constraint: float = field(
        default=5e-4, metadata={"help": "L-inf bound epsilon on the weight change"}
    )
    early_stop_loss: float = field(
        default=1e-2, metadata={"help": "stop once the mean target NLL is below this"}
    )

    def __post_init__(self) -> None:
        check_layer_field(self.layer)
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {self.num_steps!r}")
        for name in ("lr", "norm_constraint", "early_stop_loss"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")


class FineTuneEditor(PresetWeightEditor):
    """FT+L: fine-tune one down-projection on the edits, inside an L-inf ball around its weights.

    Args:
        config: an :class:`FTConfig`; or give its fields as keyword arguments.
    """

    name: ClassVar[str] = "ft"
    supports_batch: ClassVar[bool] = True
    supports_sequential: ClassVar[bool] = True
    config_class: ClassVar[type] = FTConfig

    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> nn.Module:
        """Fine-tune ``model`` in place on ``edits`` and return it."""
        start = time.perf_counter()
        edits, layout, config = self._begin(model, edits, method="FT+L", require_subject=False)
        layer = resolve_layer(model, tokenizer, edits, config.layer, layout)
        module_name = layout.down_proj.format(layer)
        weight = get_module(model, module_name).weight
        body = get_module(model, layout.body)
        lm_head = get_module(model, layout.lm_head)
        device = model_device(model)

        sequences, label_rows, label_positions, labels = [], [], [], []
        for row, edit in enumerate(edits):
            prompt_ids = token_ids(tokenizer, edit.query)
            target_ids = target_token_ids(tokenizer, edit.query, edit.target)
            sequences.append(prompt_ids + target_ids[:-1])
            for j, token in enumerate(target_ids):
                label_rows.append(row)
                label_positions.append(len(prompt_ids) - 1 + j)
                labels.append(token)
        input_ids, attention_mask = pad_batch(sequences, pad_token_id(tokenizer), device)
        label_rows_t = torch.tensor(label_rows, device=device)
        label_positions_t = torch.tensor(label_positions, device=device)
        labels_t = torch.tensor(labels, device=device)
        tokens_per_edit = torch.bincount(label_rows_t, minlength=len(edits)).float()

        self._backup(model, [f"{module_name}.weight"])
        initial = weight.detach().clone()
        lower, upper = initial - config.norm_constraint, initial + config.norm_constraint
        requires_grad = weight.requires_grad
        weight.requires_grad_(True)
        optimizer = torch.optim.Adam([weight], lr=config.lr)
        losses = []
        try:
            for _ in range(config.num_steps):
                hidden = body(
                    input_ids=input_ids, attention_mask=attention_mask, use_cache=False
                ).last_hidden_state
                logits = lm_head(hidden[label_rows_t, label_positions_t]).float()
                token_nll = -logits.log_softmax(-1).gather(1, labels_t[:, None]).squeeze(1)
                edit_nll = torch.zeros(len(edits), device=device).index_add(0, label_rows_t, token_nll)
                loss = (edit_nll / tokens_per_edit).mean()
                losses.append(float(loss.detach()))
                if losses[-1] < config.early_stop_loss:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    weight.copy_(torch.minimum(torch.maximum(weight, lower), upper))
        finally:
            weight.requires_grad_(requires_grad)
            weight.grad = None
        self.last_stats = {
            "seconds": time.perf_counter() - start,
            "stats_seconds": 0.0,
            "layer": layer,
            "loss": losses,
        }
        return model
