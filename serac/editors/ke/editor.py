"""KE, KnowledgeEditor (De Cao et al., EMNLP 2021): a trained hypernetwork turns each edit into a weight update.

The hypernetwork (:mod:`serac.editors.ke.network`) reads the edit, its prompt followed by the new target,
and the gradient of the edit's target NLL with respect to a few MLP down-projections, and predicts their
update; it is trained with the edit loss under a KL constraint on unrelated queries
(:mod:`serac.editors.ke.training`). Without a given hypernetwork the editor uses the default one of the
edited base model, trained on first use and cached.

Example:
    >>> editor = KEEditor(hypernetwork_name_or_path="my-ke-folder")   # doctest: +SKIP
    >>> editor.apply(model, tokenizer, edits)                          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from serac.editors.base import WeightEditor, check_edits, model_device
from serac.editors.ke.network import EditPass, KEHypernetwork
from serac.editors.ke.training import default_hypernetwork_dir
from serac.editors.layer_stats import model_fingerprint
from serac.editors.layout import check_layer, get_layout
from serac.edits import Edit

__all__ = ["KEEditor"]

logger = logging.getLogger(__name__)


class KEEditor(WeightEditor):
    """KE: a trained hypernetwork predicts each edit's update of a few down-projections.

    Args:
        hypernetwork_name_or_path: a folder written by :meth:`KEHypernetwork.save_pretrained`, or a
            :class:`KEHypernetwork`. ``None``: the default hypernetwork for the edited base model, trained
            on first use and cached (:func:`serac.editors.ke.training.default_hypernetwork_dir`).
        training: :class:`~serac.editors.ke.training.KETrainingArguments` fields overriding the default
            training (only when no hypernetwork is given).
    """

    name: ClassVar[str] = "ke"
    supports_batch: ClassVar[bool] = False
    supports_sequential: ClassVar[bool] = True

    def __init__(
        self,
        hypernetwork_name_or_path: str | os.PathLike | KEHypernetwork | None = None,
        training: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if hypernetwork_name_or_path is not None and not isinstance(
            hypernetwork_name_or_path, (str, os.PathLike, KEHypernetwork)
        ):
            raise TypeError(
                f"hypernetwork_name_or_path must be a path or a KEHypernetwork, got {type(hypernetwork_name_or_path).__name__}"
            )
        if training is not None and hypernetwork_name_or_path is not None:
            raise ValueError(
                "training arguments only apply to the default hypernetwork; give one or the other"
            )
        if training is not None and not isinstance(training, dict):
            raise TypeError(
                f"training must be a dict of KETrainingArguments fields, got {type(training).__name__}"
            )
        self._source = hypernetwork_name_or_path
        self._training = dict(training or {})
        self._network: KEHypernetwork | None = (
            hypernetwork_name_or_path if isinstance(hypernetwork_name_or_path, KEHypernetwork) else None
        )

    def hypernetwork(self, model: nn.Module, tokenizer: Any) -> KEHypernetwork:
        """The hypernetwork this editor applies (loaded, or trained for ``model`` and cached, on first use)."""
        if self._network is None:
            if self._source is not None:
                self._network = KEHypernetwork.from_pretrained(self._source)
            else:
                self._network = KEHypernetwork.from_pretrained(
                    default_hypernetwork_dir(model, tokenizer, **self._training)
                )
        return self._network

    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> nn.Module:
        """Add each edit's predicted update to the model (one edit after another) and return it."""
        start = time.perf_counter()
        edits = check_edits(edits, method="KE", require_subject=False)
        layout = get_layout(model)
        network = self.hypernetwork(model, tokenizer)
        for layer in network.config.layers:
            check_layer(model, layer, layout)
        fingerprint = network.config.base_model_fingerprint
        if fingerprint is not None and fingerprint != model_fingerprint(model, layout):
            # Allowed (a fine-tuned variant of the same model may still edit well), but worth knowing.
            logger.warning("this KE hypernetwork was trained for another base model (%s)", fingerprint)
        self._claim_model(model)
        network = network.to(model_device(model))
        edit_pass = EditPass(model, network)
        self._backup(model, edit_pass.names)
        norms = []
        for edit in edits:
            with torch.no_grad():
                updates = edit_pass.updates(tokenizer, edit.query, edit.target)
                for weight, update in zip(edit_pass.weights, updates, strict=True):
                    weight.add_(update.to(weight.dtype))
            norms.append(sum(float(update.norm()) for update in updates))
        self.last_stats = {
            "seconds": time.perf_counter() - start,
            "layers": list(network.config.layers),
            "update_norm": norms,
        }
        return model
