"""The values of a key-value edit: the down-projection output that makes the model emit the target.

As in ROME's ``compute_v``: a vector added to a module's output at the subject's last token is optimized
so that the model emits the target after every context template, with a KL term keeping "{subject} is a"
predictions stable, a weight decay and a norm clamp. Used by ROME and MEMIT.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from serac.editors.base import model_device, pad_batch, pad_token_id, prepare_prompt, target_token_ids
from serac.editors.layout import ModelLayout, get_module
from serac.edits import Edit

__all__ = ["TargetDeltas", "compute_target_deltas", "value_weight_decay"]

logger = logging.getLogger(__name__)


@dataclass
class TargetDeltas:
    """Result of :func:`compute_target_deltas` (all [edits, dim], float32)."""

    deltas: torch.Tensor
    initial: torch.Tensor  # the module output at the subject-last token of the bare prompt, unedited
    nll: torch.Tensor  # final mean target NLL per edit
    steps: list[int]  # optimizer steps each edit took


def value_weight_decay(delta: torch.Tensor, initial_sq: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-edit penalty ``weight * ||delta|| / ||initial||^2`` on the value deltas ``[edits, dim]``.

    This is the penalty of the ROME and MEMIT authors' code (``v_weight_decay * norm(delta) /
    norm(target_init) ** 2``), which their published ``v_weight_decay`` values (0.5, ...) were tuned with.
    It grows linearly with ``||delta||``; a squared norm (``||delta||^2 / ||initial||^2``) would weigh a
    delta of several times ``||initial||`` (the clamp allows up to ``clamp_norm_factor`` times) many times
    more heavily and stop the value short of the target.
    """
    return weight * delta.norm(dim=1) / initial_sq


def compute_target_deltas(
    model: nn.Module,
    tokenizer: Any,
    layout: ModelLayout,
    module_name: str,
    edits: Sequence[Edit],
    templates: Sequence[str],
    config: Any,
) -> TargetDeltas:
    """Optimize, per edit, a vector added to ``module_name``'s output at the subject's last token.

    The loss per edit is the mean target NLL over all ``templates`` (each with the edit prompt inside),
    plus ``kl_factor`` times the KL divergence of the next-token distribution after ``config.kl_prompt``
    from the unedited one, plus ``weight_decay * ||delta|| / ||initial||^2`` (the norm, not its square, over
    the squared norm of the unedited output, as in the ROME and MEMIT authors' ``compute_v`` / ``compute_z``;
    see :func:`value_weight_decay`). ``||delta||`` is clamped to
    ``clamp_norm_factor * ||initial||`` after each step. Edits are independent (one delta each), so a batch
    of edits gives the same deltas as editing one at a time, at a fraction of the cost.
    """
    if templates[0] != "{}":
        raise ValueError("the first context template must be the bare prompt '{}'")
    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    body = get_module(model, layout.body)
    lm_head = get_module(model, layout.lm_head)
    module = get_module(model, module_name)

    sequences: list[list[int]] = []
    owner: list[int] = []
    subject_positions: list[int] = []
    label_rows: list[int] = []
    label_positions: list[int] = []
    labels: list[int] = []
    kl_rows: list[int] = []
    kl_positions: list[int] = []
    bare_rows: list[int] = []
    for i, edit in enumerate(edits):
        target_ids = target_token_ids(tokenizer, edit.query, edit.target)
        for t_index, template in enumerate(templates):
            prompt = prepare_prompt(tokenizer, edit, template)
            row = len(sequences)
            if t_index == 0:
                bare_rows.append(row)
            sequences.append(prompt.input_ids + target_ids[:-1])
            owner.append(i)
            subject_positions.append(prompt.subject_last)
            for j, token in enumerate(target_ids):
                label_rows.append(row)
                label_positions.append(len(prompt.input_ids) - 1 + j)
                labels.append(token)
        kl_edit = Edit(prompt=config.kl_prompt, subject=edit.subject, target=edit.target)
        kl_prompt = prepare_prompt(tokenizer, kl_edit)
        kl_rows.append(len(sequences))
        sequences.append(kl_prompt.input_ids)
        owner.append(i)
        subject_positions.append(kl_prompt.subject_last)
        kl_positions.append(len(kl_prompt.input_ids) - 1)

    input_ids, attention_mask = pad_batch(sequences, pad_id, device)
    as_tensor = lambda values: torch.tensor(values, device=device, dtype=torch.long)  # noqa: E731
    owner_t, subject_t = as_tensor(owner), as_tensor(subject_positions)
    label_rows_t, label_pos_t, labels_t = as_tensor(label_rows), as_tensor(label_positions), as_tensor(labels)
    kl_rows_t, kl_pos_t, bare_rows_t = as_tensor(kl_rows), as_tensor(kl_positions), as_tensor(bare_rows)
    row_index = torch.arange(len(sequences), device=device)
    tokens_per_row = torch.zeros(len(sequences), device=device).index_add_(
        0, label_rows_t, torch.ones(len(labels), device=device)
    )
    rows_per_edit = float(len(templates))

    state: dict[str, Any] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        if "initial" not in state:
            state["initial"] = hidden[bare_rows_t, subject_t[bare_rows_t]].detach().float().clone()
        delta = state["delta"]
        hidden = hidden.clone()
        # Out-of-place on a clone keeps the graph: only delta receives gradients.
        hidden[row_index, subject_t] = hidden[row_index, subject_t] + delta[owner_t].to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def losses() -> tuple[torch.Tensor, torch.Tensor]:
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = lm_head(hidden[label_rows_t, label_pos_t]).float()
        token_nll = -logits.log_softmax(-1).gather(1, labels_t[:, None]).squeeze(1)
        row_nll = torch.zeros(len(sequences), device=device).index_add_(0, label_rows_t, token_nll)
        row_nll = row_nll / tokens_per_row.clamp(min=1)
        edit_nll = torch.zeros(len(edits), device=device).index_add_(0, owner_t, row_nll) / rows_per_edit
        kl_logp = lm_head(hidden[kl_rows_t, kl_pos_t]).float().log_softmax(-1)
        return edit_nll, kl_logp

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            state["delta"] = torch.zeros(len(edits), 1, device=device)  # broadcast no-op for the first pass
            edit_nll, reference_logp = losses()
        initial = state["initial"]
        delta = torch.zeros_like(initial, requires_grad=True)
        state["delta"] = delta
        optimizer = torch.optim.Adam([delta], lr=config.lr)
        max_norm = config.clamp_norm_factor * initial.norm(dim=1)
        initial_sq = initial.pow(2).sum(1).clamp(min=1e-12)
        done = torch.zeros(len(edits), dtype=torch.bool, device=device)
        frozen = torch.zeros_like(initial)
        steps = [config.num_steps] * len(edits)
        for step in range(config.num_steps + 1):
            edit_nll, kl_logp = losses()
            newly_done = (edit_nll.detach() < config.early_stop_loss) & ~done
            for i in newly_done.nonzero().flatten().tolist():
                steps[i] = step
            frozen[newly_done] = delta.detach()[newly_done]
            done |= newly_done
            if bool(done.all()) or step == config.num_steps:
                break
            kl = (kl_logp.exp() * (kl_logp - reference_logp)).sum(-1)
            decay = value_weight_decay(delta, initial_sq, config.weight_decay)
            loss = ((edit_nll + config.kl_factor * kl + decay) * (~done)).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                norms = delta.norm(dim=1).clamp(min=1e-12)
                delta.mul_(torch.clamp(max_norm / norms, max=1.0)[:, None])
                delta[done] = frozen[done]
            logger.debug("step %d: target NLL %s", step, edit_nll.detach().tolist())
        final = torch.where(done[:, None], frozen, delta.detach())
    finally:
        handle.remove()
    return TargetDeltas(deltas=final, initial=initial, nll=edit_nll.detach(), steps=steps)
