"""MEND's editor network and the gradient factors it reads (the editor itself is :mod:`serac.editors.mend.editor`).

Per edited matrix, the gradient of one token's loss is the outer product ``delta u^T`` of the layer input
``u`` and the output gradient ``delta`` (:func:`gradient_factors`). :class:`MENDNetwork` maps them to
pseudo-factors and the update ``-lr * sum_t delta~_t u~_t^T`` (:meth:`MENDNetwork.update`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serac.editors.base import model_device, pad_batch, pad_token_id, target_token_ids, token_ids
from serac.editors.layout import ModelLayout, check_layer, get_layout, get_module, num_layers
from serac.files import JsonConfigMixin

__all__ = [
    "DEFAULT_NUM_LAST_LAYERS",
    "MEND_CONFIG_NAME",
    "MEND_WEIGHTS_NAME",
    "PROJECTIONS",
    "UP_PROJ_NAMES",
    "EditBatch",
    "FactorNetwork",
    "MENDConfig",
    "MENDNetwork",
    "as_stored",
    "default_layers",
    "edit_batch",
    "edit_loss",
    "gradient_factors",
    "matrix_names",
    "predicted_updates",
]

logger = logging.getLogger(__name__)


MEND_CONFIG_NAME = "mend_config.json"
MEND_WEIGHTS_NAME = "mend_network.safetensors"
#: MEND's default edit site: the MLP matrices of the last three blocks.
DEFAULT_NUM_LAST_LAYERS = 3
#: The MLP input projection goes by these names in the supported architectures (Llama, GPT-2/Neo, GPT-J,
#: GPT-NeoX), looked up inside the block's MLP module.
UP_PROJ_NAMES = ("up_proj", "c_fc", "fc_in", "dense_h_to_4h")
#: Edited matrix kinds: the MLP output projection and the MLP input projection.
PROJECTIONS = ("down_proj", "up_proj")
#: Floor of the running standard deviation, so a factor coordinate that never varied does not divide by 0.
_MIN_STD = 1e-12


@dataclass
class MENDConfig(JsonConfigMixin):
    """The editor network: which matrices it edits and its size (saved as ``mend_config.json``)."""

    layers: list[int] = field(default_factory=list, metadata={"help": "edited blocks"})
    projections: list[str] = field(
        default_factory=lambda: list(PROJECTIONS), metadata={"help": "edited MLP matrices per block"}
    )
    rank: int = field(default=128, metadata={"help": "hidden width of the low-rank residual MLP"})
    edit_lr_init: float = field(default=1e-4, metadata={"help": "initial learned edit step size"})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "the base model the network was trained for"}
    )
    base_model_fingerprint: str | None = field(
        default=None, metadata={"help": "id of the base model's weights (see layer_stats.model_fingerprint)"}
    )

    def __post_init__(self) -> None:
        self.layers = list(self.layers)
        self.projections = list(self.projections)
        for layer in self.layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise ValueError(f"layers must be block indices >= 0, got {layer!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must not repeat, got {self.layers}")
        if not self.projections or any(p not in PROJECTIONS for p in self.projections):
            raise ValueError(f"projections must be some of {PROJECTIONS}, got {self.projections}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be a positive int, got {self.rank!r}")
        if not isinstance(self.edit_lr_init, (int, float)) or not self.edit_lr_init > 0:
            raise ValueError(f"edit_lr_init must be a number > 0, got {self.edit_lr_init!r}")


def _up_proj_name(model: nn.Module, layout: ModelLayout, layer: int) -> str:
    mlp_name = layout.mlp.format(layer)
    mlp = get_module(model, mlp_name)
    for name in UP_PROJ_NAMES:
        if isinstance(getattr(mlp, name, None), nn.Module):
            return f"{mlp_name}.{name}"
    raise ValueError(f"{mlp_name} has none of the input projections {UP_PROJ_NAMES}")


def matrix_names(model: nn.Module, config: MENDConfig, layout: ModelLayout | None = None) -> list[str]:
    """Module names of the matrices ``config`` edits, in the order of the network's members."""
    layout = layout or get_layout(model)
    names = []
    for layer in config.layers:
        check_layer(model, layer, layout)
        for projection in config.projections:
            if projection == "down_proj":
                names.append(layout.down_proj.format(layer))
            else:
                names.append(_up_proj_name(model, layout, layer))
    return names


def default_layers(model: nn.Module, layout: ModelLayout | None = None) -> list[int]:
    """MEND's default edit site: the last :data:`DEFAULT_NUM_LAST_LAYERS` blocks."""
    total = num_layers(model, layout)
    return list(range(max(0, total - DEFAULT_NUM_LAST_LAYERS), total))


def _in_out(module: nn.Module) -> tuple[int, int, bool]:
    """(input size, output size, whether the weight is stored [out, in]) of a linear module."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        return weight.shape[1], weight.shape[0], True
    # transformers' Conv1D (GPT-2) stores [in, out].
    return weight.shape[0], weight.shape[1], False


class _RunningMoments(nn.Module):
    """Running mean and variance of a vector stream (Welford), updated in training mode only."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("m2", torch.zeros(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double()
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.count + n
        shift = batch_mean - self.mean
        self.mean += shift * n / total
        self.m2 += batch_m2 + shift**2 * self.count * n / total
        self.count.fill_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x)
        if self.count < 2:
            return x
        std = (self.m2 / (self.count - 1)).sqrt().clamp_min(_MIN_STD)
        return ((x.double() - self.mean) / std).to(x.dtype)


class FactorNetwork(nn.Module):
    """Maps ``(u, delta)`` of one token to ``(u~, delta~)``: a low-rank residual MLP, identity at init.

    Shared by the ``num_members`` edited matrices of one shape; each member has its own input normalization
    and its own scale and shift of the output.
    """

    def __init__(self, in_dim: int, out_dim: int, rank: int, num_members: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        width = in_dim + out_dim
        self.u_moments = nn.ModuleList(_RunningMoments(in_dim) for _ in range(num_members))
        self.delta_moments = nn.ModuleList(_RunningMoments(out_dim) for _ in range(num_members))
        self.down = nn.Linear(width, rank)
        self.up = nn.Linear(rank, width)
        # Zero output layer: the untrained network passes the normalized factors through unchanged.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = nn.Parameter(torch.ones(num_members, width))
        self.shift = nn.Parameter(torch.zeros(num_members, width))

    def forward(self, u: torch.Tensor, delta: torch.Tensor, member: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.u_moments[member](u), self.delta_moments[member](delta)], dim=-1)
        x = x + self.up(torch.relu(self.down(x)))
        x = x * self.scale[member] + self.shift[member]
        return x[:, : self.in_dim], x[:, self.in_dim :]


class MENDNetwork(nn.Module):
    """The editor network of one base model: a :class:`FactorNetwork` per weight shape and a learned step size
    per edited matrix.

    Args:
        config: which matrices, and the network size.
        shapes: ``(in, out)`` of each edited matrix, in the order of :func:`matrix_names`.
    """

    def __init__(self, config: MENDConfig, shapes: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.config = config
        self.shapes = [tuple(int(v) for v in shape) for shape in shapes]
        distinct = sorted(set(self.shapes))
        self._net_of = [distinct.index(shape) for shape in self.shapes]
        self._member_of = [self._net_of[:i].count(self._net_of[i]) for i in range(len(self.shapes))]
        self.nets = nn.ModuleList(
            FactorNetwork(i, o, config.rank, self._net_of.count(k)) for k, (i, o) in enumerate(distinct)
        )
        # The step size is learned in log space: it stays positive and moves by factors, not by steps.
        self.log_edit_lrs = nn.Parameter(torch.full((len(self.shapes),), math.log(config.edit_lr_init)))

    @property
    def edit_lrs(self) -> torch.Tensor:
        return self.log_edit_lrs.exp()

    def pseudo_factors(
        self, index: int, u: torch.Tensor, delta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u~, delta~)`` for matrix ``index`` from its per-token factors ``u`` [T, in] and ``delta`` [T, out]."""
        return self.nets[self._net_of[index]](u.float(), delta.float(), self._member_of[index])

    def update(self, index: int, u: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """The [out, in] change of matrix ``index``: ``-lr * sum_t delta~_t u~_t^T`` (rank <= tokens)."""
        u_tilde, delta_tilde = self.pseudo_factors(index, u, delta)
        return -self.edit_lrs[index] * (delta_tilde.T @ u_tilde)

    # ---------------------------------------------------------------------------------------- saving

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``mend_config.json`` and ``mend_network.safetensors`` (the network only, no base weights)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        save_file(state, str(directory / MEND_WEIGHTS_NAME), metadata={"shapes": repr(self.shapes)})
        self.config.save_json(directory / MEND_CONFIG_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, model: nn.Module) -> MENDNetwork:
        """Load a network saved by :meth:`save_pretrained` for ``model`` (its matrices must fit)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (MEND_CONFIG_NAME, MEND_WEIGHTS_NAME):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory} holds no {name}: not a trained MEND editor")
        config = MENDConfig.load_json(directory / MEND_CONFIG_NAME)
        network = cls.for_model(model, config)
        state = load_file(str(directory / MEND_WEIGHTS_NAME))
        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"the MEND editor in {directory} does not fit this model: {error}") from None
        return network.to(model_device(model))

    @classmethod
    def for_model(cls, model: nn.Module, config: MENDConfig) -> MENDNetwork:
        """An untrained network for the matrices ``config`` names in ``model``."""
        shapes = [_in_out(get_module(model, name))[:2] for name in matrix_names(model, config)]
        return cls(config, shapes).to(model_device(model))


# ------------------------------------------------------------------------------------ gradient factors


@dataclass
class EditBatch:
    """Padded token rows; ``labels`` is -100 except at the target tokens each position predicts."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    #: Row -> index of its edit, so per-edit losses can be averaged.
    owners: torch.Tensor


def edit_batch(
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    device: torch.device,
    *,
    max_length: int | None = None,
    owners: Sequence[int] | None = None,
) -> EditBatch:
    """Rows of ``query + " " + target`` whose labels score only the target tokens.

    With ``max_length``, prompts are cut from the left so each row holds at most ``max_length`` tokens.
    """
    rows, label_rows = [], []
    for query, target in pairs:
        prompt_ids = token_ids(tokenizer, query)
        target_ids = target_token_ids(tokenizer, query, target)
        if not target_ids:
            raise ValueError(f"target {target!r} has no tokens")
        if max_length is not None:
            keep = max(1, max_length - len(target_ids))
            prompt_ids = prompt_ids[-keep:]
            target_ids = target_ids[: max(1, max_length - len(prompt_ids))]
        sequence = prompt_ids + target_ids[:-1]
        # Position p predicts token p + 1: the target tokens are predicted from the last prompt token on.
        labels = [-100] * (len(prompt_ids) - 1) + list(target_ids)
        rows.append(sequence)
        label_rows.append(labels)
    input_ids, attention_mask = pad_batch(rows, pad_token_id(tokenizer), device)
    labels = torch.full_like(input_ids, -100)
    for row, values in enumerate(label_rows):
        labels[row, : len(values)] = torch.tensor(values, device=device)
    owner_ids = list(owners) if owners is not None else list(range(len(pairs)))
    return EditBatch(input_ids, attention_mask, labels, torch.tensor(owner_ids, device=device))


def edit_loss(logits: torch.Tensor, batch: EditBatch, *, reduce: str = "mean") -> torch.Tensor:
    """Per-row mean target NLL, then the mean (``"mean"``) or the sum (``"sum"``) over rows."""
    token_nll = nn.functional.cross_entropy(
        logits.float().transpose(1, 2), batch.labels, ignore_index=-100, reduction="none"
    )
    mask = (batch.labels != -100).float()
    per_row = (token_nll * mask).sum(1) / mask.sum(1).clamp_min(1)
    return per_row.mean() if reduce == "mean" else per_row.sum()


def gradient_factors(
    model: nn.Module, batch: EditBatch, names: Sequence[str]
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The per-token factors ``(u, delta)`` of the gradient of each named linear module, and the loss.

    ``u`` [T, in] is the module's input and ``delta`` [T, out] the gradient of the summed per-edit target NLL
    at its output, for the T non-padding tokens of the batch: ``sum_t delta_t u_t^T`` is the weight gradient.
    The model's weights and flags are left as they were.
    """
    modules = [get_module(model, name) for name in names]
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}

    def recorder(index: int):
        def hook(_module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            inputs[index] = args[0].detach()
            outputs[index] = output

        return hook

    handles = [module.register_forward_hook(recorder(i)) for i, module in enumerate(modules)]
    flags = [(module.weight, module.weight.requires_grad) for module in modules]
    try:
        for module in modules:
            # Needed only so the modules' outputs join the graph; their .grad is never filled.
            module.weight.requires_grad_(True)
        with torch.enable_grad():
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            loss = edit_loss(logits, batch, reduce="sum")
            grads = torch.autograd.grad(loss, [outputs[i] for i in range(len(modules))])
    finally:
        for handle in handles:
            handle.remove()
        for weight, flag in flags:
            weight.requires_grad_(flag)
    mask = batch.attention_mask.bool()
    factors = [(inputs[i][mask].detach(), grads[i][mask].detach()) for i in range(len(modules))]
    return factors, loss.detach()


def predicted_updates(
    network: MENDNetwork, factors: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> list[torch.Tensor]:
    """The [out, in] update of every edited matrix."""
    return [network.update(index, u, delta) for index, (u, delta) in enumerate(factors)]


def as_stored(update: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """An [out, in] update in the layout the module stores its weight in."""
    return update if _in_out(module)[2] else update.T
