"""Where the parts a weight editor touches live inside each supported architecture.

Architecture specifics are data: a :class:`ModelLayout` names, as module-path templates, the MLP
down-projection a rank-one editor rewrites, the decoder block whose output is the residual stream, the
token embedding, the final norm, the LM head and the config attribute holding the number of layers.
Looking a layout up goes by ``config.model_type`` only; there is no model-name sniffing. Encoder-decoder
models, edited in the encoder, have their own table here: :data:`ENCODER_FF_OUTPUT_TEMPLATES`.

Example:
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    >>> layout = get_layout(model)
    >>> layout.down_proj.format(1), layout.weight_layout
    ('transformer.h.1.mlp.c_proj', 'in_out')
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ENCODER_FF_OUTPUT_TEMPLATES",
    "LAYOUTS",
    "ModelLayout",
    "UnknownLayoutError",
    "check_layer",
    "get_layout",
    "get_module",
    "num_layers",
    "register_layout",
    "weight_as_out_in",
]


class UnknownLayoutError(ValueError):
    """The model's architecture has no registered :class:`ModelLayout`."""


@dataclass(frozen=True)
class ModelLayout:
    """Module-path templates of one architecture; ``{}`` stands for the layer index.

    Args:
        down_proj: the MLP output projection (the "value" matrix ROME and MEMIT rewrite).
        layer: a decoder block; its output (or the first element of its output tuple) is the residual stream.
        mlp: the whole MLP of a block.
        embedding: the token embedding (never edited; its weights fingerprint the model for caches).
        final_norm: the norm applied after the last block.
        lm_head: the output projection to the vocabulary.
        body: the decoder stack without the LM head (returns ``last_hidden_state`` after ``final_norm``).
        num_layers_attr: the config attribute holding the number of blocks.
        weight_layout: ``"out_in"`` for ``nn.Linear`` weights ([out, in]); ``"in_out"`` for GPT-2's ``Conv1D``.
    """

    down_proj: str
    layer: str
    mlp: str
    embedding: str
    final_norm: str
    lm_head: str
    body: str
    num_layers_attr: str = "num_hidden_layers"
    weight_layout: str = "out_in"

    def __post_init__(self) -> None:
        if self.weight_layout not in ("out_in", "in_out"):
            raise ValueError(f"weight_layout must be 'out_in' or 'in_out', got {self.weight_layout!r}")
        for name in ("down_proj", "layer", "mlp"):
            if "{}" not in getattr(self, name):
                raise ValueError(f"ModelLayout.{name} must contain a '{{}}' layer placeholder")


_GPT2 = ModelLayout(
    down_proj="transformer.h.{}.mlp.c_proj",
    layer="transformer.h.{}",
    mlp="transformer.h.{}.mlp",
    embedding="transformer.wte",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    body="transformer",
    num_layers_attr="n_layer",
    weight_layout="in_out",  # transformers' Conv1D stores [in, out]
)
_GPT_NEO = ModelLayout(
    down_proj="transformer.h.{}.mlp.c_proj",
    layer="transformer.h.{}",
    mlp="transformer.h.{}.mlp",
    embedding="transformer.wte",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    body="transformer",
    num_layers_attr="num_layers",
)
_GPTJ = ModelLayout(
    down_proj="transformer.h.{}.mlp.fc_out",
    layer="transformer.h.{}",
    mlp="transformer.h.{}.mlp",
    embedding="transformer.wte",
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    body="transformer",
    num_layers_attr="n_layer",
)
_GPT_NEOX = ModelLayout(
    down_proj="gpt_neox.layers.{}.mlp.dense_4h_to_h",
    layer="gpt_neox.layers.{}",
    mlp="gpt_neox.layers.{}.mlp",
    embedding="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    lm_head="embed_out",
    body="gpt_neox",
)
_LLAMA_LIKE = ModelLayout(
    down_proj="model.layers.{}.mlp.down_proj",
    layer="model.layers.{}",
    mlp="model.layers.{}.mlp",
    embedding="model.embed_tokens",
    final_norm="model.norm",
    lm_head="lm_head",
    body="model",
)

#: ``config.model_type`` -> layout. Extend with :func:`register_layout`.
LAYOUTS: dict[str, ModelLayout] = {
    "gpt2": _GPT2,
    "gpt_neo": _GPT_NEO,
    "gptj": _GPTJ,
    "gpt_neox": _GPT_NEOX,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
}


#: Encoder-decoder models, edited in the encoder (:mod:`serac.editors.encdec`): ``config.model_type`` -> name
#: template of the encoder feed-forward output projection (``{}`` = layer).
#: T5's gated variants (T5 v1.1, mT5) keep the ``wo`` name, so one entry covers them.
ENCODER_FF_OUTPUT_TEMPLATES: dict[str, str] = {
    "t5": "encoder.block.{}.layer.1.DenseReluDense.wo",
    "mt5": "encoder.block.{}.layer.1.DenseReluDense.wo",
    "umt5": "encoder.block.{}.layer.1.DenseReluDense.wo",
    "bart": "model.encoder.layers.{}.fc2",
    "mbart": "model.encoder.layers.{}.fc2",
    "marian": "model.encoder.layers.{}.fc2",
    "pegasus": "model.encoder.layers.{}.fc2",
    "m2m_100": "model.encoder.layers.{}.fc2",
}


def register_layout(model_type: str, layout: ModelLayout) -> None:
    """Make editors work on another architecture (``model_type`` as in its ``config.json``)."""
    if not isinstance(layout, ModelLayout):
        raise TypeError(f"layout must be a ModelLayout, got {type(layout).__name__}")
    LAYOUTS[model_type] = layout


def get_layout(model: nn.Module) -> ModelLayout:
    """The layout of ``model``, found by ``model.config.model_type``; unknown architectures raise."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnknownLayoutError(
            f"{type(model).__name__} has no config.model_type; weight editors need a Hugging Face model"
        )
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise UnknownLayoutError(
            f"no weight-editor layout for model_type {model_type!r}; known: {sorted(LAYOUTS)}. "
            "Add one with serac.editors.layout.register_layout()."
        ) from None


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted path ``name``, with an error that says which part is missing."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise UnknownLayoutError(f"{type(model).__name__} has no module {name!r}") from None


def num_layers(model: nn.Module, layout: ModelLayout | None = None) -> int:
    """The number of decoder blocks of ``model``."""
    layout = layout or get_layout(model)
    value = getattr(model.config, layout.num_layers_attr, None)
    if not isinstance(value, int):
        raise UnknownLayoutError(f"config.{layout.num_layers_attr} is missing on {type(model).__name__}")
    return value


def check_layer(model: nn.Module, layer: int, layout: ModelLayout | None = None) -> int:
    """``layer`` if it is a valid block index of ``model``, else a ``ValueError``/``TypeError``."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int, got {type(layer).__name__}")
    count = num_layers(model, layout)
    if not 0 <= layer < count:
        raise ValueError(f"layer {layer} is out of range: the model has {count} layers (0..{count - 1})")
    return layer


def weight_as_out_in(weight: torch.Tensor, layout: ModelLayout) -> torch.Tensor:
    """A view of a down-projection weight as [out, in], whatever the layout stores (no copy)."""
    return weight if layout.weight_layout == "out_in" else weight.T
