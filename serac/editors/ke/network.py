"""The KE hypernetwork (De Cao et al., EMNLP 2021): what turns an edit into a weight update.

For each edited matrix ``W`` (an MLP down-projection), the hypernetwork reads the edit, its prompt followed
by the new target, with an LSTM over the base model's frozen token embeddings, and takes the gradient ``G``
of the edit's target NLL with respect to ``W``. The update it predicts is gradient-conditioned as in the
paper::

    delta_W = -softplus(eta) * ((a b^T) * G / |G|) + c d^T

where ``a``, ``b``, ``c``, ``d`` and ``eta`` are linear read-outs of the edit encoding. At initialization
``a = b = 1`` and ``c = d = 0``, so an untrained hypernetwork takes one normalized gradient step; training
(:mod:`serac.editors.ke.training`) learns where to deviate from it. Only the hypernetwork is saved
(safetensors plus a JSON config naming the edited modules); the base model is referenced, never copied.

Example:
    >>> network = KEHypernetwork.from_pretrained("my-ke-folder")     # doctest: +SKIP
    >>> EditPass(model, network).updates(tokenizer, "The capital of France is", "Rome")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from serac.editors.base import (
    model_device,
    pad_batch,
    pad_token_id,
    target_token_ids,
    token_ids,
)
from serac.editors.layout import check_layer, get_layout, get_module
from serac.files import JsonConfigMixin

__all__ = [
    "KE_CONFIG_NAME",
    "KE_WEIGHTS_NAME",
    "EditPass",
    "KEConfig",
    "KEHypernetwork",
    "TokenBatch",
    "edit_rows",
    "hypernetwork_for",
    "target_nll",
]

logger = logging.getLogger(__name__)

KE_CONFIG_NAME = "ke_config.json"
KE_WEIGHTS_NAME = "ke_hypernetwork.safetensors"


@dataclass
class KEConfig(JsonConfigMixin):
    """The hypernetwork's shape and the matrices it edits (saved as ``ke_config.json``)."""

    layers: tuple[int, ...] = field(default=(2,), metadata={"help": "blocks whose down-projection is edited"})
    hidden_size: int = field(default=128, metadata={"help": "width of the LSTM edit encoder"})
    initial_step: float = field(
        default=1e-2, metadata={"help": "size of the normalized gradient step an untrained network takes"}
    )
    max_tokens: int = field(default=48, metadata={"help": "edit text tokens read by the encoder"})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "the base model the hypernetwork was trained for (a reference)"}
    )
    base_model_fingerprint: str | None = field(
        default=None, metadata={"help": "serac.editors.layer_stats.model_fingerprint of that base model"}
    )

    def __post_init__(self) -> None:
        if isinstance(self.layers, (int, str)) or not all(
            isinstance(layer, int) and not isinstance(layer, bool) and layer >= 0 for layer in self.layers
        ):
            raise TypeError(f"layers must be a sequence of block indices, got {self.layers!r}")
        self.layers = tuple(self.layers)
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must name at least one block, each once, got {self.layers!r}")
        for name in ("hidden_size", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.initial_step, bool) or not isinstance(self.initial_step, (int, float)):
            raise TypeError(f"initial_step must be a number, got {self.initial_step!r}")
        if self.initial_step <= 0:
            raise ValueError(f"initial_step must be > 0, got {self.initial_step!r}")


@dataclass(frozen=True)
class TokenBatch:
    """Padded token rows with the positions and ids of the tokens whose NLL is the edit loss."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    label_rows: torch.Tensor
    label_positions: torch.Tensor
    labels: torch.Tensor
    num_rows: int


def edit_rows(
    tokenizer: Any, pairs: Sequence[tuple[str, str]], device: torch.device, extra: Sequence[str] = ()
) -> TokenBatch:
    """(query, target) rows teacher-forced on the target, then ``extra`` texts with no labels (right-padded)."""
    sequences, label_rows, label_positions, labels = [], [], [], []
    for row, (query, target) in enumerate(pairs):
        prompt_ids = token_ids(tokenizer, query)
        target_ids = target_token_ids(tokenizer, query, target)
        sequences.append(prompt_ids + target_ids[:-1])
        for offset, token in enumerate(target_ids):
            label_rows.append(row)
            label_positions.append(len(prompt_ids) - 1 + offset)
            labels.append(token)
    sequences += [token_ids(tokenizer, text) for text in extra]
    input_ids, attention_mask = pad_batch(sequences, pad_token_id(tokenizer), device)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return TokenBatch(
        input_ids,
        attention_mask,
        as_tensor(label_rows),
        as_tensor(label_positions),
        as_tensor(labels),
        len(pairs),
    )


def target_nll(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """Mean over labelled rows of each row's mean target-token NLL."""
    selected = logits[batch.label_rows, batch.label_positions].float()
    token_nll = -selected.log_softmax(-1).gather(1, batch.labels[:, None]).squeeze(1)
    per_row = torch.zeros(batch.num_rows, device=logits.device).index_add(0, batch.label_rows, token_nll)
    counts = torch.bincount(batch.label_rows, minlength=batch.num_rows).clamp_min(1)
    return (per_row / counts).mean()


class KEHypernetwork(nn.Module):
    """Edit encoder plus one gradient-conditioned update head per edited down-projection.

    Args:
        config: the :class:`KEConfig`.
        embedding_size: width of the base model's token embedding (the encoder's input).
        shapes: ``[out, in]`` shape of each edited matrix, in the order of ``config.layers``.
    """

    def __init__(self, config: KEConfig, embedding_size: int, shapes: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        if len(shapes) != len(config.layers):
            raise ValueError(f"{len(config.layers)} layers but {len(shapes)} matrix shapes")
        self.config = config
        self.embedding_size = embedding_size
        self.shapes = [tuple(shape) for shape in shapes]
        self.project = nn.Linear(embedding_size, config.hidden_size)
        self.encoder = nn.LSTM(config.hidden_size, config.hidden_size, batch_first=True)
        self.heads = nn.ModuleList(
            nn.Linear(config.hidden_size, 2 * (out + inp) + 1) for out, inp in self.shapes
        )
        # Zero read-outs start every head at a plain normalized gradient step of size initial_step.
        inverse_softplus = float(torch.log(torch.expm1(torch.tensor(float(config.initial_step)))))
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
            with torch.no_grad():
                head.bias[-1] = inverse_softplus

    def encode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The edit encoding from the edit text's token embeddings ``[tokens, embedding_size]``."""
        _, (hidden, _) = self.encoder(torch.tanh(self.project(embeddings.float()))[None])
        return hidden[-1, 0]

    def updates(self, encoding: torch.Tensor, gradients: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The update of each edited matrix (``[out, in]``) from the encoding and the edit-loss gradients."""
        result = []
        for head, (out, inp), gradient in zip(self.heads, self.shapes, gradients, strict=True):
            read = head(encoding)
            a, b, c, d = read[:-1].split([out, inp, out, inp])
            step = nn.functional.softplus(read[-1])
            unit = gradient.float() / gradient.float().norm().clamp_min(1e-12)
            result.append(-step * ((1 + a)[:, None] * (1 + b)[None] * unit) + c[:, None] * d[None])
        return result

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the weights (safetensors) and the config (JSON) into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        save_file(
            state,
            str(directory / KE_WEIGHTS_NAME),
            metadata={"shapes": repr(self.shapes), "embedding_size": str(self.embedding_size)},
        )
        self.config.save_json(directory / KE_CONFIG_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> KEHypernetwork:
        """Load what :meth:`save_pretrained` wrote."""
        import ast

        from safetensors import safe_open
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / KE_CONFIG_NAME).exists() or not (directory / KE_WEIGHTS_NAME).exists():
            raise FileNotFoundError(
                f"{directory} holds no KE hypernetwork ({KE_CONFIG_NAME}, {KE_WEIGHTS_NAME})"
            )
        config = KEConfig.load_json(directory / KE_CONFIG_NAME)
        with safe_open(str(directory / KE_WEIGHTS_NAME), framework="pt") as handle:
            metadata = handle.metadata()
        network = cls(config, int(metadata["embedding_size"]), ast.literal_eval(metadata["shapes"]))
        network.load_state_dict(load_file(str(directory / KE_WEIGHTS_NAME)))
        return network


def hypernetwork_for(model: nn.Module, config: KEConfig) -> KEHypernetwork:
    """A new (untrained) hypernetwork sized for ``model``'s down-projections in ``config.layers``."""
    layout = get_layout(model)
    shapes = []
    for layer in config.layers:
        check_layer(model, layer, layout)
        weight = get_module(model, layout.down_proj.format(layer)).weight
        shapes.append(tuple(weight.shape) if layout.weight_layout == "out_in" else tuple(weight.T.shape))
    embedding = get_module(model, layout.embedding).weight
    return KEHypernetwork(config, embedding.shape[1], shapes)


class EditPass:
    """What one edit needs from the base model: the edited weights, the edit-loss gradient, the encoding input."""

    def __init__(self, model: nn.Module, network: KEHypernetwork) -> None:
        layout = get_layout(model)
        self.model, self.network, self.layout = model, network, layout
        self.names = [f"{layout.down_proj.format(layer)}.weight" for layer in network.config.layers]
        parameters = dict(model.named_parameters())
        self.weights = [parameters[name] for name in self.names]
        for weight, shape in zip(self.weights, network.shapes, strict=True):
            stored = tuple(weight.shape) if layout.weight_layout == "out_in" else tuple(weight.T.shape)
            if stored != shape:
                raise ValueError(f"the hypernetwork edits {shape} matrices but the model's is {stored}")
        self.embedding = get_module(model, layout.embedding).weight

    def as_out_in(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.layout.weight_layout == "out_in" else tensor.T

    def gradients(self, batch: TokenBatch) -> list[torch.Tensor]:
        """Gradient of the edit loss at the current weights, per edited matrix, as ``[out, in]``."""
        flags = [weight.requires_grad for weight in self.weights]
        try:
            for weight in self.weights:
                weight.requires_grad_(True)
            with torch.enable_grad():
                logits = self.model(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
                ).logits
                grads = torch.autograd.grad(target_nll(logits, batch), self.weights)
        finally:
            for weight, flag in zip(self.weights, flags, strict=True):
                weight.requires_grad_(flag)
        return [self.as_out_in(grad.detach()) for grad in grads]

    def encoding_input(self, tokenizer: Any, query: str, target: str) -> torch.Tensor:
        ids = token_ids(tokenizer, f"{query} {target}")[-self.network.config.max_tokens :]
        return self.embedding.detach()[torch.tensor(ids, device=self.embedding.device)]

    def updates(self, tokenizer: Any, query: str, target: str) -> list[torch.Tensor]:
        """Predicted updates (stored layout) of the edited matrices for one edit."""
        device = model_device(self.model)
        gradients = self.gradients(edit_rows(tokenizer, [(query, target)], device))
        encoding = self.network.encode(self.encoding_input(tokenizer, query, target))
        return [self.as_out_in(update) for update in self.network.updates(encoding, gradients)]

    def edited_forward(self, updates: Sequence[torch.Tensor], batch: TokenBatch) -> torch.Tensor:
        """Logits of ``batch`` through the model with ``weight + update`` for each edited matrix."""
        replaced = {
            name: weight + update.to(weight.dtype)
            for name, weight, update in zip(self.names, self.weights, updates, strict=True)
        }
        return functional_call(
            self.model,
            replaced,
            args=(),
            kwargs={"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "use_cache": False},
            strict=False,
        ).logits
