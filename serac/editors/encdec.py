"""Rank-one editing of encoder-decoder models, with edit-dropout.

Raunak & Menezes (2022, "Rank-One Editing of Encoder-Decoder Models") carry ROME's closed-form
rank-one update over to sequence-to-sequence models such as NMT systems. An erroneous behaviour
("5 yards" translated with *Meter* where *Yard* is wanted) hangs on a token *span* of the source. The
memory edited is the output projection ``W`` of one **encoder** feed-forward block:

* the *key* ``k*`` is the input of that projection at the span (the feed-forward block's hidden
  activation), see :func:`compute_key`;
* the *value* ``v*`` is the projection output at the span that makes the decoder produce the positive
  (corrected) output, found by gradient descent on an additive offset, see :func:`compute_value`;
* the update ``W' = W + Lambda (C^-1 k*)^T`` with ``Lambda = (v* - W k* - b) / ((C^-1 k*)^T k*)``
  inserts the pair while changing the outputs of other keys, distributed with second moment ``C``,
  as little as possible, see :func:`rank_one_update` and :func:`encoder_key_second_moment`;
* *edit-dropout* zeroes each entry of the update independently with probability ``p``, see
  :func:`edit_dropout`. With ``rescale=True`` (the default) the kept entries are divided by ``1 - p``,
  as inverted dropout does, so the expected update is the rank-one update; ``rescale=False`` keeps
  the surviving entries as they are. ``p = 0`` returns the rank-one update unchanged.

The edit layer is chosen, as in the paper, by trying every encoder feed-forward layer on a small set of
examples that contain the span (``layer="search"``), or by gradient saliency (``layer="saliency"``,
:mod:`serac.editors.saliency`), or fixed by the caller (``layer=3``).

Architectures are data: :data:`serac.editors.layout.ENCODER_FF_OUTPUT_TEMPLATES` maps a ``config.model_type`` to the module
name template of the encoder feed-forward output projection; any other model works by passing
``module_template``.

Example:
    >>> editor = RankOneEncoderDecoderEditor(layer=2, edit_dropout=0.1)  # doctest: +SKIP
    >>> edit = EncoderDecoderEdit(source="the road is 5 yards long", span="yards",
    ...                           target="die Strasse ist 5 Yard lang")  # doctest: +SKIP
    >>> model = editor.apply(model, tokenizer, [edit])  # doctest: +SKIP
    >>> editor.restore()  # bit-identical original weights  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from serac.editors.base import WeightEditor
from serac.editors.layout import ENCODER_FF_OUTPUT_TEMPLATES
from serac.edits import Edit

__all__ = [
    "ENCODER_FF_OUTPUT_TEMPLATES",
    "EncoderDecoderEdit",
    "RankOneEncoderDecoderConfig",
    "RankOneEncoderDecoderEditor",
    "compute_key",
    "compute_value",
    "count_layers",
    "edit_dropout",
    "encoder_key_second_moment",
    "find_span_tokens",
    "rank_one_update",
    "resolve_module_template",
]

logger = logging.getLogger(__name__)

_LAYER_CHOICES = ("search", "saliency")


# --------------------------------------------------------------------------------------------------
# The edit


@dataclass(frozen=True)
class EncoderDecoderEdit:
    """One correction of an encoder-decoder model: a negative and a positive example sharing a span.

    Args:
        source: the input the model gets wrong (the negative example's source). It must contain ``span``.
        span: the source text the error hangs on ("yards"); its encoding at the edit layer is the key.
            The first occurrence in the source is used.
        target: the positive (corrected) output, for ``positive_source`` (``source`` when that is unset).
        negative_target: the erroneous output the model produces now. Optional; it is not optimized
            against, but its likelihood before and after the edit is reported in ``last_stats``.
        positive_source: the source of the positive example when it is another sentence than
            ``source``; it must contain ``span`` too. The key is then the mean of the span keys of both
            sources and the value is fitted on ``(positive_source, target)``.

    The shared :class:`~serac.edits.Edit` maps onto this as ``prompt`` = source, ``subject`` = span,
    ``target`` = corrected output (see :meth:`from_edit` / :meth:`to_edit`).

    Example:
        >>> e = EncoderDecoderEdit.from_examples(
        ...     negative=("the road is 5 yards long", "die Strasse ist 5 Meter lang"),
        ...     positive=("the road is 5 yards long", "die Strasse ist 5 Yard lang"),
        ...     span="yards")
        >>> e.to_edit().text
        'the road is 5 yards long die Strasse ist 5 Yard lang'
    """

    source: str
    span: str
    target: str
    negative_target: str | None = None
    positive_source: str | None = None

    def __post_init__(self) -> None:
        for name in ("source", "span", "target", "negative_target", "positive_source"):
            value = getattr(self, name)
            if value is None and name in ("negative_target", "positive_source"):
                continue
            if not isinstance(value, str):
                raise TypeError(f"EncoderDecoderEdit.{name} must be a string, got {type(value).__name__}")
            if not value.strip():
                raise ValueError(f"EncoderDecoderEdit.{name} must not be empty")
        if self.span not in self.source:
            raise ValueError(f"span {self.span!r} does not occur in source {self.source!r}")
        if self.positive_source is not None and self.span not in self.positive_source:
            raise ValueError(f"span {self.span!r} does not occur in positive_source {self.positive_source!r}")

    @classmethod
    def from_examples(
        cls, negative: tuple[str, str], positive: tuple[str, str], span: str
    ) -> EncoderDecoderEdit:
        """Build an edit from a negative ``(source, wrong output)`` and a positive ``(source, right output)``."""
        for name, pair in (("negative", negative), ("positive", positive)):
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise TypeError(f"{name} must be a (source, output) pair, got {pair!r}")
        negative_source, negative_target = negative
        positive_source, positive_target = positive
        return cls(
            source=negative_source,
            span=span,
            target=positive_target,
            negative_target=negative_target,
            positive_source=None if positive_source == negative_source else positive_source,
        )

    @classmethod
    def from_edit(cls, edit: Edit) -> EncoderDecoderEdit:
        """Read a shared :class:`Edit` as ``prompt`` = source, ``subject`` = span, ``target`` = output."""
        if not isinstance(edit, Edit):
            raise TypeError(f"expected an Edit, got {type(edit).__name__}")
        if edit.is_statement:
            raise ValueError(
                "a statement edit has no target output; an encoder-decoder edit needs a prompt and target"
            )
        if edit.subject is None:
            raise ValueError(
                f"the edit {edit.query!r} has no subject: set subject to the source span to edit"
            )
        return cls(source=edit.query, span=edit.subject, target=edit.target)

    def to_edit(self) -> Edit:
        """The shared :class:`Edit` view (``negative_target`` and ``positive_source`` are not kept)."""
        return Edit(prompt=self.source, subject=self.span, target=self.target)

    @property
    def value_source(self) -> str:
        """The source the value is fitted on: the positive example's."""
        return self.positive_source if self.positive_source is not None else self.source

    @property
    def key_sources(self) -> tuple[str, ...]:
        """The sources whose span keys are averaged into ``k*``."""
        return (self.source,) if self.positive_source is None else (self.source, self.positive_source)


def _as_encdec_edit(edit: Any) -> EncoderDecoderEdit:
    if isinstance(edit, EncoderDecoderEdit):
        return edit
    if isinstance(edit, Edit):
        return EncoderDecoderEdit.from_edit(edit)
    raise TypeError(f"edits must be Edit or EncoderDecoderEdit objects, got {type(edit).__name__}")


# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class RankOneEncoderDecoderConfig:
    """Hyperparameters of :class:`RankOneEncoderDecoderEditor`.

    Args:
        layer: the encoder layer to edit (an int), ``"search"`` (try each candidate layer on the search
            examples and keep the best) or ``"saliency"`` (the most gradient-salient layer, SaLEM).
        candidate_layers: layers ``"search"``/``"saliency"`` choose from; ``None`` = all encoder layers.
        module_template: name template of the encoder feed-forward output projection, e.g.
            ``"encoder.block.{}.layer.1.DenseReluDense.wo"``; overrides ``layout``.
        layout: a key of :data:`ENCODER_FF_OUTPUT_TEMPLATES`; ``None`` = the model's ``config.model_type``.
        edit_dropout: probability of zeroing each entry of the update (0 = plain rank-one update).
        edit_dropout_rescale: divide the kept entries by ``1 - edit_dropout`` (inverted dropout).
        value_steps: gradient steps fitting the value offset.
        value_lr: Adam learning rate of the value offset.
        value_weight_decay: weight of ``||delta||^2 / ||v0||^2`` in the value loss; keeps the offset small.
            A correction often needs ``||delta||`` of two or three times ``||v0||``, so a weight near 1
            would outweigh the target NLL it is traded against and stop the fit short of the target.
        clamp_norm_factor: the offset's norm is clamped to this multiple of the original value's norm.
        value_loss_threshold: stop fitting once the target's mean token NLL falls below this.
        covariance_regularizer: ``C + r * mean(diag C) * I``; keeps ``C`` invertible when some hidden
            units never fire (ReLU) and bounds the update's size along rare directions.
        max_covariance_tokens: at most this many key vectors enter the second moment estimate.
        covariance_batch_size: texts per encoder forward pass when estimating ``C``.
        search_max_new_tokens: generation length for the locality outputs of the layer search.
        seed: seed of the edit-dropout masks (the masks of one ``apply`` are reproducible).
    """

    layer: int | str = "search"
    candidate_layers: tuple[int, ...] | None = None
    module_template: str | None = None
    layout: str | None = None
    edit_dropout: float = 0.0
    edit_dropout_rescale: bool = True
    value_steps: int = 30
    value_lr: float = 0.5
    value_weight_decay: float = 0.1
    clamp_norm_factor: float = 4.0
    value_loss_threshold: float = 5e-2
    covariance_regularizer: float = 1e-2
    max_covariance_tokens: int = 100_000
    covariance_batch_size: int = 32
    search_max_new_tokens: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int | str):
            raise TypeError(f"layer must be an int, 'search' or 'saliency', got {self.layer!r}")
        if isinstance(self.layer, str) and self.layer not in _LAYER_CHOICES:
            raise ValueError(f"layer must be an int or one of {_LAYER_CHOICES}, got {self.layer!r}")
        if isinstance(self.layer, int) and self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.candidate_layers is not None:
            layers = tuple(self.candidate_layers)
            if not layers or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
                raise ValueError(f"candidate_layers must be non-negative ints, got {self.candidate_layers!r}")
            self.candidate_layers = layers
        if self.module_template is not None and (
            not isinstance(self.module_template, str) or self.module_template.count("{}") != 1
        ):
            raise ValueError(f"module_template must hold exactly one '{{}}', got {self.module_template!r}")
        if self.layout is not None and self.layout not in ENCODER_FF_OUTPUT_TEMPLATES:
            raise ValueError(
                f"unknown layout {self.layout!r}; known: {sorted(ENCODER_FF_OUTPUT_TEMPLATES)} "
                "(or pass module_template)"
            )
        if not (isinstance(self.edit_dropout, int | float) and 0.0 <= self.edit_dropout < 1.0):
            raise ValueError(f"edit_dropout must be in [0, 1), got {self.edit_dropout!r}")
        for name in (
            "value_steps",
            "max_covariance_tokens",
            "covariance_batch_size",
            "search_max_new_tokens",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("value_lr", "clamp_norm_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("value_weight_decay", "value_loss_threshold", "covariance_regularizer"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# Architecture as data


def resolve_module_template(
    model: nn.Module, module_template: str | None = None, layout: str | None = None
) -> str:
    """The encoder feed-forward output template for ``model``: explicit, by layout name, or by model type."""
    if module_template is not None:
        return module_template
    if layout is None:
        layout = getattr(getattr(model, "config", None), "model_type", None)
    if layout not in ENCODER_FF_OUTPUT_TEMPLATES:
        raise ValueError(
            f"no encoder feed-forward layout known for model type {layout!r}; known: "
            f"{sorted(ENCODER_FF_OUTPUT_TEMPLATES)}. Pass module_template='...{{}}...' for other models."
        )
    return ENCODER_FF_OUTPUT_TEMPLATES[layout]


def _get_module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def count_layers(model: nn.Module, module_template: str) -> int:
    """How many consecutive layers ``0, 1, ...`` the template names in ``model``."""
    count = 0
    while _get_module(model, module_template.format(count)) is not None:
        count += 1
    return count


def _linear(model: nn.Module, module_template: str, layer: int) -> nn.Linear:
    module = _get_module(model, module_template.format(layer))
    if module is None:
        raise ValueError(f"model has no module {module_template.format(layer)!r}")
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{module_template.format(layer)!r} is not a linear layer with a 2-d weight")
    return module  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Tokenization helpers


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def find_span_tokens(tokenizer: Any, source: str, span: str) -> tuple[list[int], list[int]]:
    """Token ids of ``source`` (with special tokens) and the indices of the tokens covering ``span``.

    The first occurrence of ``span`` is used. Raises ``ValueError`` when the span is empty, absent, or
    covered by no token.
    """
    if not isinstance(span, str) or not span.strip():
        raise ValueError("the span must be a non-empty string")
    start = source.find(span)
    if start < 0:
        raise ValueError(f"span {span!r} does not occur in source {source!r}")
    end = start + len(span)
    if getattr(tokenizer, "is_fast", False):
        encoding = tokenizer(source, return_offsets_mapping=True)
        ids = list(encoding["input_ids"])
        positions = [
            i
            for i, (a, b) in enumerate(encoding["offset_mapping"])
            if b > a and a < end and b > start  # special tokens have empty offsets
        ]
    else:
        # Without offsets: the span's tokens are those the prefix-with-span adds to the bare prefix,
        # shifted by the special tokens (e.g. <s>) the tokenizer puts in front.
        ids = list(tokenizer(source)["input_ids"])
        special = set(getattr(tokenizer, "all_special_ids", []))
        leading = next((i for i, token in enumerate(ids) if token not in special), len(ids))
        before = len(tokenizer(source[:start], add_special_tokens=False)["input_ids"])
        upto = len(tokenizer(source[:end], add_special_tokens=False)["input_ids"])
        positions = list(range(leading + before, min(leading + upto, len(ids))))
    if not positions:
        raise ValueError(f"span {span!r} of {source!r} maps to no token")
    return ids, positions


def _target_ids(tokenizer: Any, target: str) -> list[int]:
    ids = list(tokenizer(text_target=target)["input_ids"])
    if not ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return ids


# --------------------------------------------------------------------------------------------------
# Model state helpers


@contextmanager
def _frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; both restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@contextmanager
def _capture_input(module: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    handle = module.register_forward_pre_hook(lambda _m, args: store.append(args[0].detach()))
    try:
        yield
    finally:
        handle.remove()


# --------------------------------------------------------------------------------------------------
# The math, one function per quantity


def compute_key(
    model: nn.Module, tokenizer: Any, module_template: str, layer: int, sources: Sequence[str], span: str
) -> torch.Tensor:
    """``k*``: the input of the encoder FF output projection at the span's last token, averaged over sources.

    The last token of the span is the one whose encoding has read the whole span in a left-to-right
    subword split; the encoder is bidirectional, so it also sees the rest of the source.
    """
    module = _linear(model, module_template, layer)
    device = _device(model)
    keys = []
    with _frozen_eval(model), torch.no_grad():
        for source in sources:
            ids, positions = find_span_tokens(tokenizer, source, span)
            captured: list[torch.Tensor] = []
            with _capture_input(module, captured):
                model.get_encoder()(input_ids=torch.tensor([ids], device=device))
            keys.append(captured[0][0, positions[-1]].float())
    return torch.stack(keys).mean(0)


def encoder_key_second_moment(
    model: nn.Module,
    tokenizer: Any,
    module_template: str,
    layer: int,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_tokens: int = 100_000,
) -> torch.Tensor:
    """``C = E[k k^T]`` over the keys of all non-padding source tokens of ``texts`` (float64, on CPU)."""
    if not texts:
        raise ValueError("encoder_key_second_moment needs at least one text")
    module = _linear(model, module_template, layer)
    device = _device(model)
    dim = module.weight.shape[1]
    total = torch.zeros(dim, dim, dtype=torch.float64)
    count = 0
    with _frozen_eval(model), torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
            captured: list[torch.Tensor] = []
            with _capture_input(module, captured):
                model.get_encoder()(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
                )
            keys = captured[0][batch["attention_mask"].to(device).bool()].double().cpu()
            keys = keys[: max_tokens - count]
            total += keys.T @ keys
            count += keys.shape[0]
            if count >= max_tokens:
                break
    return total / count


def _target_nll(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=input_ids, labels=labels).logits
    return nn.functional.cross_entropy(logits[0].float(), labels[0], reduction="mean")


def compute_value(
    model: nn.Module,
    tokenizer: Any,
    module_template: str,
    layer: int,
    source: str,
    span: str,
    target: str,
    config: RankOneEncoderDecoderConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``v*``: the projection output at the span's last token that makes the decoder produce ``target``.

    An offset ``delta`` is added to the module's output at that token and fitted by Adam on the mean token
    NLL of ``target`` (teacher forcing) plus ``value_weight_decay * ||delta||^2 / ||v0||^2``; its norm
    is clamped to ``clamp_norm_factor * ||v0||``. Returns ``v0 + delta`` (float32, bias included) and stats.
    """
    module = _linear(model, module_template, layer)
    device = _device(model)
    ids, positions = find_span_tokens(tokenizer, source, span)
    position = positions[-1]
    input_ids = torch.tensor([ids], device=device)
    labels = torch.tensor([_target_ids(tokenizer, target)], device=device)

    original: list[torch.Tensor] = []
    delta = torch.zeros(module.weight.shape[0], device=device, dtype=torch.float32, requires_grad=True)

    def add_delta(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        if not original:
            original.append(output[0, position].detach().float())
        output = output.clone()
        output[0, position] = output[0, position] + delta.to(output.dtype)
        return output

    optimizer = torch.optim.Adam([delta], lr=config.value_lr)
    handle = module.register_forward_hook(add_delta)
    nll_before = nll = float("nan")
    steps = 0
    try:
        with _frozen_eval(model):
            for steps in range(1, config.value_steps + 1):
                optimizer.zero_grad()
                nll_tensor = _target_nll(model, input_ids, labels)
                nll = float(nll_tensor.detach())
                if steps == 1:
                    nll_before = nll
                if nll < config.value_loss_threshold:
                    break
                v0_norm = original[0].norm().clamp_min(1e-8)
                loss = nll_tensor + config.value_weight_decay * delta.pow(2).sum() / v0_norm**2
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    max_norm = config.clamp_norm_factor * v0_norm
                    if delta.norm() > max_norm:
                        delta.mul_(max_norm / delta.norm())
            with torch.no_grad():
                nll = float(_target_nll(model, input_ids, labels))
    finally:
        handle.remove()
    stats = {
        "target_nll_before": nll_before,
        "target_nll_after": nll,
        "value_steps": steps,
        "delta_norm": float(delta.detach().norm()),
        "v0_norm": float(original[0].norm()),
    }
    return (original[0] + delta.detach()), stats


def rank_one_update(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    key: torch.Tensor,
    value: torch.Tensor,
    second_moment: torch.Tensor | None,
    *,
    regularizer: float = 1e-2,
) -> torch.Tensor:
    """The closed-form update ``Lambda (C^-1 k*)^T`` with ``Lambda = (v* - W k* - b) / ((C^-1 k*)^T k*)``.

    ``weight`` is ``(out, in)`` as in :class:`torch.nn.Linear`; ``second_moment`` is ``C`` (``None`` =
    identity, the minimum-norm update). The result has ``weight``'s shape, device and dtype, and
    ``(W + update) k* + b == v*`` up to rounding.
    """
    key64 = key.detach().double().cpu()
    if second_moment is None:
        direction = key64
    else:
        c = second_moment.double().cpu()
        c = c + regularizer * c.diagonal().mean().clamp_min(1e-12) * torch.eye(c.shape[0], dtype=c.dtype)
        direction = torch.linalg.solve(c, key64)
    current = weight.detach().double().cpu() @ key64
    if bias is not None:
        current = current + bias.detach().double().cpu()
    residual = value.detach().double().cpu() - current
    update = torch.outer(residual, direction) / (direction @ key64)
    return update.to(device=weight.device, dtype=weight.dtype)


def edit_dropout(
    update: torch.Tensor, p: float, *, rescale: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero each entry of ``update`` with probability ``p``; divide the rest by ``1 - p`` if ``rescale``.

    ``p == 0`` returns ``update`` itself, so the edit is then exactly the plain rank-one update.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"edit-dropout probability must be in [0, 1), got {p!r}")
    if p == 0.0:
        return update
    keep = torch.rand(update.shape, generator=generator, device=update.device) >= p
    dropped = update * keep.to(update.dtype)
    return dropped / (1.0 - p) if rescale else dropped


# --------------------------------------------------------------------------------------------------
# Layer search


def _teacher_forced_accuracy(
    model: nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 32
) -> float:
    """Fraction of target tokens the model's argmax reproduces under teacher forcing."""
    device = _device(model)
    correct = total = 0
    with _frozen_eval(model), torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            batch = tokenizer(
                [s for s, _ in chunk], text_target=[t for _, t in chunk], return_tensors="pt", padding=True
            )
            labels = batch["labels"].to(device)
            mask = batch.get("attention_mask")
            pad = getattr(tokenizer, "pad_token_id", None)
            label_mask = labels != pad if pad is not None else torch.ones_like(labels, dtype=torch.bool)
            labels = labels.masked_fill(~label_mask, -100)
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=None if mask is None else mask.to(device),
                labels=labels,
            ).logits
            correct += int(((logits.argmax(-1) == labels) & label_mask).sum())
            total += int(label_mask.sum())
    return correct / max(total, 1)


def _greedy_outputs(
    model: nn.Module, tokenizer: Any, sources: Sequence[str], max_new_tokens: int
) -> list[str]:
    device = _device(model)
    outputs = []
    with _frozen_eval(model), torch.no_grad():
        for start in range(0, len(sources), 32):
            batch = tokenizer(list(sources[start : start + 32]), return_tensors="pt", padding=True).to(device)
            generated = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            outputs.extend(tokenizer.batch_decode(generated, skip_special_tokens=True))
    return outputs


# --------------------------------------------------------------------------------------------------
# The editor


class RankOneEncoderDecoderEditor(WeightEditor):
    """Rank-one editing of an encoder feed-forward layer, with edit-dropout (Raunak & Menezes, 2022).

    Args:
        config: a :class:`RankOneEncoderDecoderConfig`; keyword overrides of its fields are also accepted.
        covariance_texts: source texts whose keys estimate ``C``; ``None`` uses ``C = I`` (minimum-norm
            update, which spreads more onto unrelated inputs than a ``C`` from in-domain text).
        search_examples: ``(source, corrected output)`` pairs containing the span that ``layer="search"``
            scores each layer on (efficacy); the edits themselves when ``None``.
        locality_sources: sources without the span whose pre-edit greedy outputs the search wants kept;
            the first 16 ``covariance_texts`` when ``None``.

    Edits are :class:`EncoderDecoderEdit` objects or shared :class:`~serac.edits.Edit` objects with
    ``prompt`` = source, ``subject`` = span and ``target`` = corrected output. Several edits in one
    :meth:`apply` are inserted one after another, each a rank-one update computed on the model as the
    previous ones left it; :meth:`apply` may be called again without :meth:`restore`. Weights change
    only after every edit has been validated; an error during the update restores the layer.

    Example:
        >>> editor = RankOneEncoderDecoderEditor(layer="search", edit_dropout=0.1,
        ...                                      covariance_texts=train_sources)  # doctest: +SKIP
        >>> model = editor.apply(model, tokenizer, [Edit(prompt="5 {} long", subject="yards",
        ...                                              target="5 Yard lang")])  # doctest: +SKIP
        >>> editor.last_stats["layer"], editor.restore()  # doctest: +SKIP
    """

    name: ClassVar[str] = "encdec_rank_one"
    # Edits given together are inserted one after another, not solved jointly (as ROME, unlike MEMIT).
    supports_batch: ClassVar[bool] = False
    supports_sequential: ClassVar[bool] = True

    def __init__(
        self,
        config: RankOneEncoderDecoderConfig | None = None,
        *,
        covariance_texts: Sequence[str] | None = None,
        search_examples: Sequence[tuple[str, str]] | None = None,
        locality_sources: Sequence[str] | None = None,
        **overrides: Any,
    ) -> None:
        if config is None:
            config = RankOneEncoderDecoderConfig()
        if not isinstance(config, RankOneEncoderDecoderConfig):
            raise TypeError(f"config must be a RankOneEncoderDecoderConfig, got {type(config).__name__}")
        if overrides:
            known = {f.name for f in fields(RankOneEncoderDecoderConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"unknown hyperparameters for {self.name}: {unknown}; known: {sorted(known)}")
            config = RankOneEncoderDecoderConfig(**{**config.to_dict(), **overrides})
        super().__init__()
        self.config = config
        self.covariance_texts = _check_texts("covariance_texts", covariance_texts)
        self.search_examples = _check_pairs(search_examples)
        self.locality_sources = _check_texts("locality_sources", locality_sources)
        self._second_moments: dict[tuple[str, int], torch.Tensor] = {}
        self._second_moments_model: weakref.ref[nn.Module] | None = None

    # -- public API --------------------------------------------------------------------------------

    def apply(
        self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit | EncoderDecoderEdit]
    ) -> nn.Module:
        """Insert ``edits`` into ``model`` in place and return it; :meth:`restore` undoes every apply."""
        started = time.perf_counter()
        encdec_edits, template, layers = self._validate(model, tokenizer, edits)
        stats: dict[str, Any] = {"edits": len(encdec_edits), "module_template": template}
        stats_seconds = 0.0

        config = self.config
        if isinstance(config.layer, int):
            layer = config.layer
        elif config.layer == "saliency":
            from serac.editors.saliency import layer_saliency

            # The loss whose gradients rank the layers is the one the value is fitted on: the positive
            # example's source and corrected output.
            positives = [Edit(prompt=e.value_source, target=e.target) for e in encdec_edits]
            profile = layer_saliency(model, tokenizer, positives, template)
            layer = max(layers, key=lambda i: profile[i])  # ties: the lower layer
            stats["saliency"] = profile
        else:
            layer, stats["layer_search"], stats_seconds = self._search(
                model, tokenizer, encdec_edits, template, layers
            )
        stats["layer"] = layer

        module = _linear(model, template, layer)
        t0 = time.perf_counter()
        second_moment = self._second_moment(model, tokenizer, template, layer)
        stats_seconds += time.perf_counter() - t0
        self._backup(model, [f"{template.format(layer)}.weight"])
        snapshot = module.weight.detach().clone()
        try:
            stats["per_edit"] = self._insert(model, tokenizer, encdec_edits, template, layer, second_moment)
        except BaseException:
            with torch.no_grad():
                module.weight.copy_(snapshot)
            raise
        stats["seconds"] = time.perf_counter() - started
        stats["stats_seconds"] = stats_seconds
        self.last_stats = stats
        logger.info(
            "inserted %d edit(s) at %s in %.2fs", len(encdec_edits), template.format(layer), stats["seconds"]
        )
        return model

    # -- internals ---------------------------------------------------------------------------------

    def _validate(
        self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit | EncoderDecoderEdit]
    ) -> tuple[list[EncoderDecoderEdit], str, list[int]]:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise ValueError(
                f"{self.name} edits encoder-decoder models; this model's config is not is_encoder_decoder"
            )
        if not callable(tokenizer):
            raise TypeError("tokenizer must be a callable Hugging Face tokenizer")
        if isinstance(edits, Edit | EncoderDecoderEdit | str) or not isinstance(edits, Sequence):
            raise TypeError("edits must be a sequence of Edit or EncoderDecoderEdit objects")
        if not edits:
            raise ValueError("edits must not be empty")
        encdec_edits = [_as_encdec_edit(e) for e in edits]
        template = resolve_module_template(model, self.config.module_template, self.config.layout)
        num_layers = count_layers(model, template)
        if num_layers == 0:
            raise ValueError(f"model has no module {template.format(0)!r}; wrong layout or module_template?")
        requested = [self.config.layer] if isinstance(self.config.layer, int) else []
        requested += list(self.config.candidate_layers or [])
        for layer in requested:
            if layer >= num_layers:
                raise ValueError(f"layer {layer} is out of range: the model has {num_layers} encoder layers")
        _linear(model, template, 0)
        for edit in encdec_edits:
            for source in (*edit.key_sources, edit.value_source):
                find_span_tokens(tokenizer, source, edit.span)
            _target_ids(tokenizer, edit.target)
        layers = list(self.config.candidate_layers or range(num_layers))
        self._claim_model(model)  # the last check: refuses a second model while edits of one are held
        return encdec_edits, template, layers

    def _second_moment(
        self, model: nn.Module, tokenizer: Any, template: str, layer: int
    ) -> torch.Tensor | None:
        if self.covariance_texts is None:
            return None
        # One C per model and layer, from the model as this editor first sees it (as ROME's statistics
        # describe the unedited model); a new model starts a new cache.
        cached_for = self._second_moments_model() if self._second_moments_model is not None else None
        if cached_for is not model:
            self._second_moments.clear()
            self._second_moments_model = weakref.ref(model)
        key = (template, layer)
        if key not in self._second_moments:
            self._second_moments[key] = encoder_key_second_moment(
                model,
                tokenizer,
                template,
                layer,
                self.covariance_texts,
                batch_size=self.config.covariance_batch_size,
                max_tokens=self.config.max_covariance_tokens,
            )
        return self._second_moments[key]

    def _insert(
        self,
        model: nn.Module,
        tokenizer: Any,
        edits: Sequence[EncoderDecoderEdit],
        template: str,
        layer: int,
        second_moment: torch.Tensor | None,
    ) -> list[dict[str, Any]]:
        module = _linear(model, template, layer)
        device = module.weight.device
        generator = torch.Generator(device=device).manual_seed(self.config.seed)
        per_edit = []
        for edit in edits:
            negative_before = (
                None
                if edit.negative_target is None
                else _pair_nll(model, tokenizer, edit.source, edit.negative_target)
            )
            key = compute_key(model, tokenizer, template, layer, edit.key_sources, edit.span)
            value, value_stats = compute_value(
                model, tokenizer, template, layer, edit.value_source, edit.span, edit.target, self.config
            )
            update = rank_one_update(
                module.weight,
                module.bias if isinstance(getattr(module, "bias", None), torch.Tensor) else None,
                key,
                value,
                second_moment,
                regularizer=self.config.covariance_regularizer,
            )
            update = edit_dropout(
                update,
                self.config.edit_dropout,
                rescale=self.config.edit_dropout_rescale,
                generator=generator,
            )
            with torch.no_grad():
                module.weight.add_(update)
            record: dict[str, Any] = {
                "span": edit.span,
                **value_stats,
                "update_norm": float(update.float().norm()),
            }
            if edit.negative_target is not None:
                record["negative_target_nll_before"] = negative_before
                record["negative_target_nll_after"] = _pair_nll(
                    model, tokenizer, edit.source, edit.negative_target
                )
            per_edit.append(record)
        return per_edit

    def _search(
        self,
        model: nn.Module,
        tokenizer: Any,
        edits: Sequence[EncoderDecoderEdit],
        template: str,
        layers: list[int],
    ) -> tuple[int, list[dict[str, float]], float]:
        """Try each layer: insert, score efficacy and locality, undo; the best layer wins."""
        examples = list(self.search_examples or [(e.value_source, e.target) for e in edits])
        locality_sources = self.locality_sources
        if locality_sources is None and self.covariance_texts is not None:
            locality_sources = self.covariance_texts[:16]
        locality_pairs: list[tuple[str, str]] = []
        if locality_sources:
            outputs = _greedy_outputs(model, tokenizer, locality_sources, self.config.search_max_new_tokens)
            locality_pairs = [(s, o) for s, o in zip(locality_sources, outputs, strict=True) if o.strip()]
        results = []
        stats_seconds = 0.0
        for layer in layers:
            module = _linear(model, template, layer)
            t0 = time.perf_counter()
            second_moment = self._second_moment(model, tokenizer, template, layer)
            stats_seconds += time.perf_counter() - t0
            snapshot = module.weight.detach().clone()
            try:
                self._insert(model, tokenizer, edits, template, layer, second_moment)
                efficacy = _teacher_forced_accuracy(model, tokenizer, examples)
                locality = (
                    _teacher_forced_accuracy(model, tokenizer, locality_pairs) if locality_pairs else 1.0
                )
            finally:
                with torch.no_grad():
                    module.weight.copy_(snapshot)
            results.append(
                {"layer": layer, "efficacy": efficacy, "locality": locality, "score": efficacy + locality}
            )
            logger.debug("layer %d: efficacy %.3f locality %.3f", layer, efficacy, locality)
        best = max(results, key=lambda r: (r["score"], r["efficacy"], -r["layer"]))
        return int(best["layer"]), results, stats_seconds


def _pair_nll(model: nn.Module, tokenizer: Any, source: str, target: str) -> float:
    device = _device(model)
    input_ids = torch.tensor([tokenizer(source)["input_ids"]], device=device)
    labels = torch.tensor([_target_ids(tokenizer, target)], device=device)
    with _frozen_eval(model), torch.no_grad():
        return float(_target_nll(model, input_ids, labels))


def _check_texts(name: str, texts: Sequence[str] | None) -> list[str] | None:
    if texts is None:
        return None
    if isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts):
        raise TypeError(f"{name} must be a sequence of non-empty strings")
    if not texts:
        raise ValueError(f"{name} must not be empty (pass None instead)")
    return list(texts)


def _check_pairs(pairs: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    if pairs is None:
        return None
    checked = []
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise TypeError(f"search_examples must be (source, output) string pairs, got {pair!r}")
        checked.append((pair[0], pair[1]))
    if not checked:
        raise ValueError("search_examples must not be empty (pass None instead)")
    return checked
