"""ROME: rank-one model editing of one MLP down-projection (Meng et al., 2022, "Locating and Editing
Factual Associations in GPT").

The down-projection of an MLP is read as a key-value memory: the key ``k`` is the projection's input at
the subject's last token, the value is its output. An edit

1. computes the key ``k*``: the input at the subject's last token, averaged over the edit prompt behind a
   few short prefixes the model generated itself (context templates), so the key does not depend on one
   exact wording (:func:`compute_keys`);
2. finds the value ``v* = W k + delta``: ``delta`` is optimized, added to the projection's output at the
   subject's last token, so that the model emits the target after every context template, with a KL term
   keeping "{subject} is a" predictions stable, a weight decay on ``delta`` and a norm clamp
   (:func:`compute_target_deltas`); ``k`` is the key of the edit prompt itself;
3. inserts the pair in closed form, in the direction ``C^-1 k*`` that touches other keys least under the
   key second moment ``C`` (:mod:`serac.editors.layer_stats`), scaled so that the edit prompt's own key
   ``k`` is sent exactly to ``v*``, as in the ROME authors' code::

       W' = W + (v* - W k) (C^-1 k*)^T / ((C^-1 k*)^T k)

   (``insertion_key="average"`` sends ``k*`` to ``v*`` instead, the paper's formula
   ``W' = W + (v* - W k*) (C^-1 k*)^T / ((C^-1 k*)^T k*)``: weaker on the edit prompt whenever its key is
   far from the average, as at the attention-sink positions of a prompt that starts with the subject.)

The model is unchanged unless :meth:`ROMEEditor.apply` is called; :meth:`ROMEEditor.restore` gives back the
original weights bit for bit.

Example:
    >>> editor = ROMEEditor(layer=4)                                           # doctest: +SKIP
    >>> editor.apply(model, tokenizer, [Edit(prompt="{} plays the sport of",   # doctest: +SKIP
    ...                                       subject="LeBron James", target="football")])
    >>> editor.restore()                                                       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from serac.editors.base import (
    WeightEditor,
    check_edits,
    model_device,
    pad_batch,
    pad_token_id,
    prepare_prompt,
    target_token_ids,
)
from serac.editors.layer_stats import _StopForward, layer_second_moments, model_fingerprint, sample_texts
from serac.editors.layout import (
    ModelLayout,
    check_layer,
    get_layout,
    get_module,
    num_layers,
    weight_as_out_in,
)
from serac.edits import Edit

__all__ = [
    "ROMEConfig",
    "ROMEEditor",
    "RankOneUpdate",
    "TargetDeltas",
    "compute_keys",
    "compute_template_keys",
    "compute_target_deltas",
    "generate_context_templates",
    "solve_rank_one",
]

logger = logging.getLogger(__name__)

CONTEXT_SEEDS: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")


@dataclass
class ROMEConfig:
    """ROME hyperparameters (paper values for GPT-2 XL / GPT-J unless noted).

    Fields left at ``None`` by the caller are filled from :mod:`serac.editors.hparams` for known models.
    """

    layer: int | str | None = field(default=None, metadata={"help": "block index, or 'saliency'"})
    num_steps: int = field(default=20, metadata={"help": "Adam steps optimizing the value delta"})
    lr: float = field(default=0.5, metadata={"help": "learning rate of the value optimization"})
    weight_decay: float = field(default=0.5, metadata={"help": "penalty on ||delta||^2 / ||v||^2"})
    kl_factor: float = field(default=0.0625, metadata={"help": "weight of the '{subject} is a' KL term"})
    clamp_norm_factor: float = field(default=4.0, metadata={"help": "||delta|| <= factor * ||v||"})
    early_stop_loss: float = field(default=0.05, metadata={"help": "stop once the target NLL is below this"})
    kl_prompt: str = field(default="{} is a", metadata={"help": "essence prompt of the KL term"})
    context_templates: tuple[tuple[int, int], ...] = field(
        default=((5, 5), (10, 5)), metadata={"help": "(tokens, count) of model-generated prefixes"}
    )
    context_seed: int = field(default=0, metadata={"help": "sampling seed of the context templates"})
    insertion_key: str = field(
        default="prompt",
        metadata={"help": "key sent exactly to the value: 'prompt' (the edit prompt's) or 'average'"},
    )
    stats_corpus: Any = field(
        default=None, metadata={"help": "corpus of the key statistics (see layer_stats)"}
    )
    stats_samples: int = field(default=20_000, metadata={"help": "token vectors averaged into C"})
    stats_ridge: float = field(default=1e-4, metadata={"help": "C + ridge * mean(diag C) * I before solving"})
    stats_cache: bool = field(default=True, metadata={"help": "cache statistics on disk"})

    def __post_init__(self) -> None:
        if (
            self.layer is not None
            and self.layer != "saliency"
            and (isinstance(self.layer, bool) or not isinstance(self.layer, int))
        ):
            raise TypeError(f"layer must be an int, 'saliency' or None, got {self.layer!r}")
        if self.insertion_key not in ("prompt", "average"):
            raise ValueError(f"insertion_key must be 'prompt' or 'average', got {self.insertion_key!r}")
        _check_optimization_fields(self)
        if not isinstance(self.stats_ridge, (int, float)) or self.stats_ridge < 0:
            raise ValueError(f"stats_ridge must be >= 0, got {self.stats_ridge!r}")


def _check_optimization_fields(config: Any) -> None:
    for name in ("num_steps", "stats_samples"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name in ("lr", "weight_decay", "kl_factor", "clamp_norm_factor", "early_stop_loss"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(config.kl_prompt, str) or config.kl_prompt.count("{}") != 1:
        raise ValueError(f"kl_prompt must contain one '{{}}' for the subject, got {config.kl_prompt!r}")
    config.context_templates = tuple(tuple(pair) for pair in config.context_templates)
    for pair in config.context_templates:
        if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
            raise ValueError(
                f"context_templates must be (tokens, count) pairs of positive ints, got {pair!r}"
            )


def resolve_config(config_class: type, model: nn.Module, method: str, overrides: dict[str, Any]):
    """``config_class`` from the preset for ``model`` (if any) with ``overrides`` on top."""
    from serac.editors.hparams import preset_for

    names = {f.name for f in fields(config_class)}
    preset = {key: value for key, value in preset_for(model, method).items() if key in names}
    return config_class(**{**preset, **overrides})


# ----------------------------------------------------------------------------------------------------------
# context templates


def generate_context_templates(
    model: nn.Module, tokenizer: Any, lengths_counts: Sequence[tuple[int, int]], *, seed: int = 0
) -> list[str]:
    """``["{}"]`` plus short model-generated prefixes ending in ``". {}"`` (sampled top-5, deterministic)."""
    templates = ["{}"]
    for length, count in lengths_counts:
        seeds = [CONTEXT_SEEDS[i % len(CONTEXT_SEEDS)] for i in range(count)]
        texts = sample_texts(model, tokenizer, seeds, max_new_tokens=length, seed=seed + length, top_k=5)
        for text in texts:
            # Braces would break str templates; newlines would make the prefix a separate document.
            clean = " ".join(text.replace("{", " ").replace("}", " ").split())
            templates.append(clean + ". {}")
    return templates


# ----------------------------------------------------------------------------------------------------------
# keys


@torch.no_grad()
def compute_template_keys(
    model: nn.Module,
    tokenizer: Any,
    module_name: str,
    edits: Sequence[Edit],
    templates: Sequence[str],
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """Input of ``module_name`` at each edit's subject-last token behind each template: [edits, templates, in]."""
    module = get_module(model, module_name)
    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    prompts = [prepare_prompt(tokenizer, edit, t) for edit in edits for t in templates]
    keys: list[torch.Tensor] = []
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured["input"] = inputs[0]
        raise _StopForward

    handle = module.register_forward_pre_hook(hook)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            input_ids, attention_mask = pad_batch([p.input_ids for p in chunk], pad_id, device)
            with contextlib.suppress(_StopForward):
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            positions = torch.tensor([p.subject_last for p in chunk], device=device)
            keys.append(captured["input"][torch.arange(len(chunk), device=device), positions].float())
    finally:
        handle.remove()
    return torch.cat(keys).reshape(len(edits), len(templates), -1)


@torch.no_grad()
def compute_keys(
    model: nn.Module,
    tokenizer: Any,
    module_name: str,
    edits: Sequence[Edit],
    templates: Sequence[str],
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """Input of ``module_name`` at each edit's subject-last token, averaged over ``templates``: [edits, in]."""
    return compute_template_keys(model, tokenizer, module_name, edits, templates, batch_size=batch_size).mean(
        dim=1
    )


@torch.no_grad()
def module_output_at_subject(
    model: nn.Module, tokenizer: Any, module_name: str, edits: Sequence[Edit], *, batch_size: int = 64
) -> torch.Tensor:
    """Output of ``module_name`` (first element if a tuple) at each bare prompt's subject-last token."""
    module = get_module(model, module_name)
    device = model_device(model)
    pad_id = pad_token_id(tokenizer)
    prompts = [prepare_prompt(tokenizer, edit) for edit in edits]
    outputs = []
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        captured["output"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            input_ids, attention_mask = pad_batch([p.input_ids for p in chunk], pad_id, device)
            with contextlib.suppress(_StopForward):
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            positions = torch.tensor([p.subject_last for p in chunk], device=device)
            outputs.append(captured["output"][torch.arange(len(chunk), device=device), positions].float())
    finally:
        handle.remove()
    return torch.cat(outputs)


# ----------------------------------------------------------------------------------------------------------
# values


@dataclass
class TargetDeltas:
    """Result of :func:`compute_target_deltas` (all [edits, dim], float32)."""

    deltas: torch.Tensor
    initial: torch.Tensor  # the module output at the subject-last token of the bare prompt, unedited
    nll: torch.Tensor  # final mean target NLL per edit
    steps: list[int]  # optimizer steps each edit took


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
    from the unedited one, plus ``weight_decay * ||delta||^2 / ||initial||^2``. ``||delta||`` is clamped to
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
            decay = config.weight_decay * delta.pow(2).sum(1) / initial_sq
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


# ----------------------------------------------------------------------------------------------------------
# insertion


def solve_rank_one(second_moment: torch.Tensor, key: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(C + ridge * mean(diag C) * I)^-1 k`` in float64 (the ridge keeps a C from few samples invertible)."""
    c = second_moment.to(torch.float64)
    if ridge > 0:
        c = c + ridge * c.diagonal().mean() * torch.eye(c.shape[0], dtype=c.dtype, device=c.device)
    return torch.linalg.solve(c, key.to(c.device, torch.float64))


@dataclass
class RankOneUpdate:
    """What one ROME edit inserted at ``layer``: ``W' inserted_key = value`` (vectors float32, CPU)."""

    layer: int
    key: torch.Tensor  # k*, averaged over the context templates
    value: torch.Tensor  # v*
    left: torch.Tensor  # C^-1 k*
    delta: torch.Tensor  # v* - W inserted_key
    nll: float
    steps: int
    inserted_key: torch.Tensor  # the edit prompt's key (insertion_key="prompt") or k*


class ROMEEditor(WeightEditor):
    """Rank-one model editing; edits in one :meth:`apply` are inserted one after another.

    Args:
        config: a :class:`ROMEConfig`; or give its fields as keyword arguments.

    Example:
        >>> editor = ROMEEditor(layer=4, num_steps=20)   # doctest: +SKIP
        >>> model = editor.apply(model, tokenizer, edits)  # doctest: +SKIP
    """

    name: ClassVar[str] = "rome"
    supports_batch: ClassVar[bool] = False
    supports_sequential: ClassVar[bool] = True
    config_class: ClassVar[type] = ROMEConfig

    def __init__(self, config: ROMEConfig | None = None, **hyperparameters: Any) -> None:
        super().__init__()
        if config is not None and hyperparameters:
            raise ValueError("give either a config or keyword hyperparameters, not both")
        self.config_class(**hyperparameters)  # validate names and values now, not at the first apply
        self._overrides = asdict(config) if config is not None else dict(hyperparameters)
        self._templates: dict[str, list[str]] = {}
        self._moments: dict[tuple, torch.Tensor] = {}
        self.updates: list[RankOneUpdate] = []

    # shared with MEMIT and fine-tuning -------------------------------------------------------------------
    def _context_templates(self, model: nn.Module, tokenizer: Any, config: Any) -> list[str]:
        key = f"{model_fingerprint(model)}-{config.context_templates}-{config.context_seed}"
        if key not in self._templates:
            self._templates[key] = generate_context_templates(
                model, tokenizer, config.context_templates, seed=config.context_seed
            )
        return self._templates[key]

    def _second_moments(self, model: nn.Module, tokenizer: Any, layers: Sequence[int], config: Any):
        corpus_id = (
            config.stats_corpus
            if isinstance(config.stats_corpus, (str, type(None)))
            else id(config.stats_corpus)
        )
        fingerprint = model_fingerprint(model)
        key = lambda layer: (fingerprint, layer, corpus_id, config.stats_samples)  # noqa: E731
        missing = [layer for layer in layers if key(layer) not in self._moments]
        if missing:
            moments = layer_second_moments(
                model,
                tokenizer,
                missing,
                corpus=config.stats_corpus,
                num_samples=config.stats_samples,
                cache=config.stats_cache,
            )
            for layer, moment in moments.items():
                self._moments[key(layer)] = moment
        return {layer: self._moments[key(layer)] for layer in layers}

    def _resolve_layer(
        self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit], config: Any, layout
    ) -> int:
        layer = config.layer
        if layer == "saliency":
            from serac.editors.saliency import select_layers

            layer = select_layers(model, tokenizer, edits, module_template=layout.down_proj, num_layers=1)[0]
        elif layer is None:
            # Without a preset, follow the papers' finding that factual recall sits in early-middle MLPs.
            layer = max(0, round(0.2 * num_layers(model, layout)))
            logger.warning("no ROME layer given or preset for this model; using layer %d", layer)
        return check_layer(model, layer, layout)

    # ------------------------------------------------------------------------------------------------------
    def resolved_config(self, model: nn.Module) -> ROMEConfig:
        """The hyperparameters :meth:`apply` would use on ``model`` (preset + given overrides)."""
        return resolve_config(self.config_class, model, self.name, self._overrides)

    def apply(self, model: nn.Module, tokenizer: Any, edits: Sequence[Edit]) -> nn.Module:
        """Insert each edit into ``model`` in place and return it."""
        start = time.perf_counter()
        edits = check_edits(edits, method="ROME", require_subject=True)
        layout = get_layout(model)
        config = self.resolved_config(model)
        self._claim_model(model)
        layer = self._resolve_layer(model, tokenizer, edits, config, layout)
        for edit in edits:  # tokenization problems surface before any weight changes
            prepare_prompt(tokenizer, edit)
        module_name = layout.down_proj.format(layer)
        module = get_module(model, module_name)

        stats_start = time.perf_counter()
        second_moment = self._second_moments(model, tokenizer, [layer], config)[layer]
        templates = self._context_templates(model, tokenizer, config)
        stats_seconds = time.perf_counter() - stats_start

        self._backup(model, [f"{module_name}.weight"])
        updates = []
        for edit in edits:
            template_keys = compute_template_keys(model, tokenizer, module_name, [edit], templates)[0]
            key = template_keys.mean(dim=0)
            # templates[0] is the bare edit prompt.
            inserted = template_keys[0] if config.insertion_key == "prompt" else key
            target = compute_target_deltas(model, tokenizer, layout, module_name, [edit], templates, config)
            left = solve_rank_one(second_moment, key, config.stats_ridge).to(key.device)
            if float(torch.dot(left, inserted.double())) <= 1e-3 * float(torch.dot(left, key.double())):
                # The prompt's key barely lies along C^-1 k*: sending it to v* would take a huge update.
                logger.warning(
                    "ROME: the key of %r is nearly orthogonal to C^-1 k*; inserting k*", edit.query
                )
                inserted = key
            with torch.no_grad():
                weight = weight_as_out_in(module.weight, layout)
                # delta was optimized on top of the edit prompt's output W k: v* = W k + delta.
                value = target.initial[0] + target.deltas[0]
                delta = value - module(inserted.to(weight.dtype)[None])[0].float()
                update = torch.outer(delta.double(), left) / torch.dot(left, inserted.double())
                weight.add_(update.to(weight.dtype))
            updates.append(
                RankOneUpdate(
                    layer=layer,
                    key=key.cpu(),
                    value=value.cpu(),
                    left=left.float().cpu(),
                    delta=delta.cpu(),
                    nll=float(target.nll[0]),
                    steps=target.steps[0],
                    inserted_key=inserted.cpu(),
                )
            )
        self.updates += updates
        self.last_stats = {
            "seconds": time.perf_counter() - start,
            "stats_seconds": stats_seconds,
            "layer": layer,
            "target_nll": [u.nll for u in updates],
            "steps": [u.steps for u in updates],
        }
        return model
