"""The rank-one update of an encoder feed-forward projection, one function per quantity.

The key (:func:`compute_key`), the key second moment (:func:`encoder_key_second_moment`), the value
(:func:`compute_value`), the update (:func:`rank_one_update`) and edit-dropout (:func:`edit_dropout`), with
the architecture lookup they share (:func:`resolve_module_template`, :func:`linear_layer`). See
:mod:`serac.editors.encdec` for the method.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from serac.editors.base import model_device
from serac.editors.encdec.edits import RankOneEncoderDecoderConfig, find_span_tokens, target_ids
from serac.editors.layout import ENCODER_FF_OUTPUT_TEMPLATES

__all__ = [
    "capture_input",
    "compute_key",
    "compute_value",
    "count_layers",
    "edit_dropout",
    "encoder_key_second_moment",
    "frozen_eval",
    "linear_layer",
    "rank_one_update",
    "resolve_module_template",
    "target_nll",
]

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


def _find_module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def count_layers(model: nn.Module, module_template: str) -> int:
    """How many consecutive layers ``0, 1, ...`` the template names in ``model``."""
    count = 0
    while _find_module(model, module_template.format(count)) is not None:
        count += 1
    return count


def linear_layer(model: nn.Module, module_template: str, layer: int) -> nn.Linear:
    """The projection ``module_template`` names at ``layer``; ``ValueError`` unless it is a 2-d linear layer."""
    module = _find_module(model, module_template.format(layer))
    if module is None:
        raise ValueError(f"model has no module {module_template.format(layer)!r}")
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{module_template.format(layer)!r} is not a linear layer with a 2-d weight")
    return module  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Model state helpers


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
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
def capture_input(module: nn.Module, store: list[torch.Tensor]) -> Iterator[None]:
    """Append every input ``module`` receives inside the block to ``store``."""
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
    module = linear_layer(model, module_template, layer)
    device = model_device(model)
    keys = []
    with frozen_eval(model), torch.no_grad():
        for source in sources:
            ids, positions = find_span_tokens(tokenizer, source, span)
            captured: list[torch.Tensor] = []
            with capture_input(module, captured):
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
    module = linear_layer(model, module_template, layer)
    device = model_device(model)
    dim = module.weight.shape[1]
    total = torch.zeros(dim, dim, dtype=torch.float64)
    count = 0
    with frozen_eval(model), torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
            captured: list[torch.Tensor] = []
            with capture_input(module, captured):
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


def target_nll(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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
    module = linear_layer(model, module_template, layer)
    device = model_device(model)
    ids, positions = find_span_tokens(tokenizer, source, span)
    position = positions[-1]
    input_ids = torch.tensor([ids], device=device)
    labels = torch.tensor([target_ids(tokenizer, target)], device=device)

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
        with frozen_eval(model):
            for steps in range(1, config.value_steps + 1):
                optimizer.zero_grad()
                nll_tensor = target_nll(model, input_ids, labels)
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
                nll = float(target_nll(model, input_ids, labels))
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
