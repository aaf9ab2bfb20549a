"""MEND: a trained editor network turns one fine-tuning gradient into a weight edit (Mitchell et al., ICLR 2022,
"Fast Model Editing at Scale").

The gradient of a linear layer's weight for one token is a rank-1 outer product ``delta u^T`` of the layer's
input ``u`` and the gradient ``delta`` of the loss at its output. MEND never forms the full gradient: an
editor network ``g`` maps each token's factors ``(u, delta)`` to pseudo-factors ``(u~, delta~)`` and the edit
is ``W <- W - lr * sum_tokens delta~ u~^T``, one rank-1 term per token, with ``lr`` learned per edited matrix.

The editor network of one weight shape (:class:`FactorNetwork`):

* normalizes ``u`` and ``delta`` per edited matrix to zero mean and unit variance with running statistics
  gathered during training (frozen afterwards);
* passes ``[u; delta]`` through a low-rank residual MLP, ``x + B relu(A x)``, whose ``B`` starts at zero so
  the untrained network is the identity (the edit is then a plain, normalized gradient step);
* is shared by every edited matrix of that shape, with a per-matrix elementwise scale and shift of its output.

The network is trained by :mod:`serac.editors.mend.training` (edit loss of the target and its paraphrases
after the edit, plus a KL locality loss on unrelated inputs; the base model stays frozen). At test time one
forward and one backward pass through the base model give the factors of all edits, and the predicted
update is added to the weights. Several edits in one :meth:`MENDEditor.apply` sum their updates (batch
editing); successive applies edit the already edited weights (sequential editing).

Example:
    >>> from serac.editors import get_editor
    >>> editor = get_editor("mend")                      # trains (or loads the cached) editor on first use
    >>> editor.apply(model, tokenizer, edits)            # doctest: +SKIP
    >>> editor.restore()                                 # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from serac.editors.base import model_device
from serac.editors.common import PresetWeightEditor
from serac.editors.layout import get_module
from serac.editors.mend.network import (
    PROJECTIONS,
    MENDConfig,
    MENDNetwork,
    as_stored,
    default_layers,
    edit_batch,
    gradient_factors,
    matrix_names,
    predicted_updates,
)
from serac.editors.mend.training import MENDTrainingArguments, cached_mend_network
from serac.edits import Edit

__all__ = ["MENDEditor", "MENDEditorConfig"]


@dataclass
class MENDEditorConfig:
    """Hyperparameters of :class:`MENDEditor`: the network, its training, and where a trained one lies.

    ``layers=None`` edits the last three blocks (MEND's default). ``editor_path`` names a folder written by
    :func:`serac.editors.mend.training.train_mend`; without it the editor trained with these settings for the
    base model is loaded from the cache, or trained on first use.
    """

    layers: list[int] | None = field(default=None, metadata={"help": "edited blocks (None: the last 3)"})
    projections: list[str] = field(default_factory=lambda: list(PROJECTIONS))
    rank: int = 128
    edit_lr_init: float = 1e-4
    editor_path: str | None = field(default=None, metadata={"help": "a trained editor folder"})
    train_data: list[str] = field(
        default_factory=lambda: ["synthetic:2000"],
        metadata={"help": "training data specs (serac.data.load_examples: synthetic:N, zsre:PATH, ...)"},
    )
    num_steps: int = 300
    batch_size: int = 4
    learning_rate: float = 1e-4
    lr_learning_rate: float = 1e-2
    locality_weight: float = 10.0
    max_length: int = 32
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Sequence):
                raise TypeError(f"layers must be a list of block indices or None, got {self.layers!r}")
            self.layers = list(self.layers)
        self.network_config()  # validates the network fields
        self.training_arguments()  # validates the training fields
        if self.editor_path is not None and not isinstance(self.editor_path, (str, Path)):
            raise TypeError(f"editor_path must be a path, got {type(self.editor_path).__name__}")

    def network_config(self, layers: Sequence[int] = ()) -> MENDConfig:
        """The :class:`MENDConfig` these settings describe (with ``layers`` where ``self.layers`` is None)."""
        return MENDConfig(
            layers=list(self.layers if self.layers is not None else layers),
            projections=list(self.projections),
            rank=self.rank,
            edit_lr_init=self.edit_lr_init,
        )

    def training_arguments(self) -> Any:
        """The :class:`~serac.editors.mend.training.MENDTrainingArguments` these settings describe."""
        names = {f.name for f in fields(MENDTrainingArguments)}
        return MENDTrainingArguments(**{k: v for k, v in vars(self).items() if k in names})


# --------------------------------------------------------------------------------------------- editor


class MENDEditor(PresetWeightEditor):
    """MEND: edit with the trained editor network's transform of one fine-tuning gradient per edit batch.

    Args:
        config: a :class:`MENDEditorConfig`; or give its fields as keyword arguments.

    Example:
        >>> editor = MENDEditor(num_steps=300)                          # doctest: +SKIP
        >>> edited = editor.apply(model, tokenizer, [Edit(prompt="The capital of France is", target="Rome")])  # doctest: +SKIP
        >>> editor.restore()                                            # doctest: +SKIP
    """

    name: ClassVar[str] = "mend"
    supports_batch: ClassVar[bool] = True
    supports_sequential: ClassVar[bool] = True
    config_class: ClassVar[type] = MENDEditorConfig

    def __init__(self, config: Any | None = None, **hyperparameters: Any) -> None:
        super().__init__(config, **hyperparameters)
        self.network: MENDNetwork | None = None
        self._network_key: tuple | None = None

    def edit_layers(self, model: nn.Module, tokenizer: Any, config: MENDEditorConfig) -> list[int]:
        """The blocks edited: the configured ones, else MEND's default (the last three)."""
        return list(config.layers) if config.layers is not None else default_layers(model)

    def load_network(self, model: nn.Module, tokenizer: Any) -> MENDNetwork:
        """The trained editor network: from ``editor_path``, the cache, or trained now (and cached)."""
        config = self.resolved_config(model)
        key = (id(model), config.editor_path)
        if self.network is not None and self._network_key == key:
            return self.network
        if config.editor_path is not None:
            network = MENDNetwork.from_pretrained(config.editor_path, model)
        else:
            layers = self.edit_layers(model, tokenizer, config)
            network = cached_mend_network(
                model, tokenizer, config.network_config(layers), config.training_arguments()
            )
        network.eval()
        self.network, self._network_key = network, key
        return network

    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> nn.Module:
        """Edit ``model`` in place with one predicted update per edited matrix and return it."""
        start = time.perf_counter()
        edits, layout, config = self._begin(model, edits, method="MEND", require_subject=False)
        batch = edit_batch(tokenizer, [(edit.query, edit.target) for edit in edits], model_device(model))
        network = self.load_network(model, tokenizer)
        names = matrix_names(model, network.config, layout)
        was_training = model.training
        model.eval()
        try:
            factors, loss = gradient_factors(model, batch, names)
        finally:
            model.train(was_training)
        with torch.no_grad():
            updates = predicted_updates(network, factors)
        self._backup(model, [f"{name}.weight" for name in names])
        norms = {}
        with torch.no_grad():
            for name, update in zip(names, updates, strict=True):
                module = get_module(model, name)
                module.weight.add_(as_stored(update, module).to(module.weight.dtype))
                norms[name] = float(update.norm())
        self.last_stats = {
            "seconds": time.perf_counter() - start,
            "layers": sorted(set(network.config.layers)),
            "edit_loss_before": float(loss) / len(edits),
            "update_norms": norms,
        }
        return model
