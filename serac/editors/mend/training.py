"""Training MEND's editor network (:mod:`serac.editors.mend.editor`) on edit data, with the base model frozen.

One step takes ``batch_size`` training edits and:

1. computes the per-token gradient factors of the edits' target NLL in the base model (one forward and one
   backward pass; nothing is learned here);
2. maps them to a weight update with the editor network and applies it *functionally*
   (``torch.func.functional_call``), so the loss below differentiates through the update into the network;
3. scores the edited model: the **edit loss** is the target NLL on the edit prompts and on one in-scope
   rephrasing of each edit; the **locality loss** is ``KL(p_base || p_edited)`` over the tokens of an
   out-of-scope query of each edit (MEND's ``L_e + c_loc L_loc``);
4. takes an Adam step on the network (and, in log space, on the per-matrix step sizes).

Training is seeded (the batch of step ``s`` depends only on the seed and ``s``), shows a tqdm progress bar,
and writes a checkpoint every ``checkpoint_every`` steps; a killed run started again with the same settings
continues from its last checkpoint. :func:`cached_mend_network` keeps finished networks under
:func:`serac.offline.cache_dir` ``/ "parts"``, keyed by the base model's fingerprint and the settings.

Example:
    >>> network = train_mend(model, tokenizer, MENDConfig(layers=[27, 28, 29]), MENDTrainingArguments(), "out")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from serac.data import EditExample, load_counterfact, load_examples, load_examples_jsonl, load_zsre
from serac.durable_folder import fsync_tree, replace_folder, staging_folder
from serac.editors.base import model_device, pad_batch, pad_token_id, token_ids
from serac.editors.layer_stats import model_fingerprint
from serac.editors.layout import get_module
from serac.editors.mend.network import (
    MEND_CONFIG_NAME,
    EditBatch,
    MENDConfig,
    MENDNetwork,
    as_stored,
    edit_batch,
    edit_loss,
    gradient_factors,
    matrix_names,
    predicted_updates,
)
from serac.files import JsonConfigMixin, write_json_atomic
from serac.offline import cache_dir

__all__ = [
    "CHECKPOINT_FOLDER",
    "TRAINING_REPORT_NAME",
    "MENDTrainingArguments",
    "TrainingPairs",
    "cached_mend_network",
    "load_training_examples",
    "mend_cache_path",
    "train_mend",
    "training_losses",
    "training_pairs",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FOLDER = "checkpoint"
TRAINING_REPORT_NAME = "training_report.json"
_OPTIMIZER_NAME = "optimizer.pt"
_STATE_NAME = "trainer_state.json"
#: Bump when the training procedure changes, so cached networks of an older procedure are not reused.
MEND_TRAINING_VERSION = 1
#: Seconds per training step measured for SmolLM2-135M on two CPU cores shared with other jobs (batch 4,
#: 32 tokens, the last 3 blocks: 446 s for 200 steps; 1,350 s at a load average near 10), used only for the
#: cost logged before training.
SECONDS_PER_STEP_ESTIMATE = 2.25


@dataclass
class MENDTrainingArguments(JsonConfigMixin):
    """How the editor network is trained."""

    train_data: list[str] = field(
        default_factory=lambda: ["synthetic:2000"],
        metadata={"help": "data specs for serac.data.load_examples (synthetic:N, zsre:PATH, ...)"},
    )
    num_steps: int = field(default=300, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=4, metadata={"help": "edits per step (their updates are summed)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "Adam lr of the network"})
    lr_learning_rate: float = field(
        default=1e-2, metadata={"help": "Adam lr of the log step sizes (1e-2: about 1% per step)"}
    )
    locality_weight: float = field(
        default=10.0,
        metadata={"help": "c_loc, weight of the KL locality loss (MEND's edit weight 0.1 against 1, scaled)"},
    )
    max_length: int = field(
        default=32, metadata={"help": "tokens per training row (prompts cut on the left)"}
    )
    checkpoint_every: int = field(default=50, metadata={"help": "steps between resumable checkpoints"})
    seed: int = field(default=0, metadata={"help": "seeds the data order and the network init"})

    def __post_init__(self) -> None:
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        self.train_data = list(self.train_data)
        if not self.train_data or not all(isinstance(spec, str) and spec for spec in self.train_data):
            raise ValueError(f"train_data must be a non-empty list of data specs, got {self.train_data!r}")
        for name in ("num_steps", "batch_size", "max_length", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be at least 4 tokens, got {self.max_length}")
        for name in ("learning_rate", "lr_learning_rate", "locality_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")


@dataclass(frozen=True)
class TrainingPairs:
    """One training edit: its (query, target), in-scope (query, answer) pairs and out-of-scope query texts."""

    edit: tuple[str, str]
    in_scope: tuple[tuple[str, str], ...]
    out_of_scope: tuple[str, ...]


def training_pairs(examples: Sequence[EditExample]) -> list[TrainingPairs]:
    """The prompt edits of ``examples`` as :class:`TrainingPairs` (statement edits are skipped)."""
    pairs = []
    for example in examples:
        edit = example.edit
        if edit.is_statement or not edit.target:
            continue
        in_scope = tuple((query.text, query.answer) for query in example.in_scope if query.text != edit.query)
        pairs.append(
            TrainingPairs(
                (edit.query, edit.target), in_scope, tuple(query.text for query in example.out_of_scope)
            )
        )
    return pairs


def load_training_examples(spec: str, *, seed: int = 0) -> list[EditExample]:
    """The examples of one data spec (as :func:`serac.data.load_examples`); malformed file records are skipped
    with a warning, since public training splits hold a few (zsRE: empty new answers)."""
    kind, _, path = spec.strip().partition(":")
    loaders = {"zsre": load_zsre, "counterfact": load_counterfact, "jsonl": load_examples_jsonl}
    if kind.lower() in loaders and path:
        return loaders[kind.lower()](path, skip_invalid=True)
    return load_examples(spec, seed=seed)


def _load_training_pairs(arguments: MENDTrainingArguments) -> list[TrainingPairs]:
    examples: list[EditExample] = []
    for spec in arguments.train_data:
        examples.extend(load_training_examples(spec, seed=arguments.seed))
    pairs = training_pairs(examples)
    if len(pairs) < arguments.batch_size:
        raise ValueError(
            f"MEND training needs at least batch_size={arguments.batch_size} prompt edits; "
            f"{arguments.train_data} gave {len(pairs)}"
        )
    return pairs


def _step_batch(
    pairs: Sequence[TrainingPairs], step: int, arguments: MENDTrainingArguments
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[str]]:
    """The edits, rephrasings and out-of-scope texts of one step; depends only on the seed and the step."""
    rng = random.Random(arguments.seed * 1_000_003 + step)
    chosen = rng.sample(range(len(pairs)), arguments.batch_size)
    edits, rephrasings, unrelated = [], [], []
    for index in chosen:
        item = pairs[index]
        edits.append(item.edit)
        rephrasings.append(rng.choice(item.in_scope) if item.in_scope else item.edit)
        if item.out_of_scope:
            unrelated.append(rng.choice(item.out_of_scope))
        else:
            # Another edit's prompt is out of this edit's scope.
            other = pairs[rng.choice([i for i in range(len(pairs)) if i != index])]
            unrelated.append(other.edit[0])
    return edits, rephrasings, unrelated


def _text_batch(
    tokenizer: Any, texts: Sequence[str], device: torch.device, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [token_ids(tokenizer, text)[:max_length] for text in texts]
    return pad_batch(rows, pad_token_id(tokenizer), device)


def _locality_kl(base_logits: torch.Tensor, edited_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of ``KL(p_base || p_edited)`` of the next-token distributions."""
    base = base_logits.float().log_softmax(-1)
    edited = edited_logits.float().log_softmax(-1)
    per_token = (base.exp() * (base - edited)).sum(-1)
    mask = mask.float()
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def top1_success(logits: torch.Tensor, batch: EditBatch) -> torch.Tensor:
    """Per row: whether every target token is the top-1 teacher-forced prediction (edit success)."""
    scored = batch.labels != -100
    hits = (logits.argmax(-1) == batch.labels) | ~scored
    return hits.all(1)


class _Checkpoint:
    """The resumable state of a training run inside ``directory``."""

    def __init__(self, directory: Path, key: str) -> None:
        self.directory, self.key = directory, key

    def load(self, network: MENDNetwork, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
        from safetensors.torch import load_file

        state_path = self.directory / _STATE_NAME
        if not state_path.exists():
            return 0, []
        state = json.loads(state_path.read_text())
        if state.get("key") != self.key:
            logger.warning("ignoring the checkpoint in %s: it belongs to other settings", self.directory)
            return 0, []
        network.load_state_dict(load_file(str(self.directory / "network.safetensors")))
        optimizer.load_state_dict(torch.load(self.directory / _OPTIMIZER_NAME, weights_only=True))
        logger.info("Resuming MEND training from step %d (%s)", state["step"], self.directory)
        return int(state["step"]), list(state.get("history", []))

    def save(
        self, network: MENDNetwork, optimizer: torch.optim.Optimizer, step: int, history: list[dict]
    ) -> None:
        from safetensors.torch import save_file

        # Written into a fresh folder renamed over the old one: a kill mid-write keeps the last checkpoint.
        state = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
        with staging_folder(self.directory) as staging:
            save_file(state, str(staging / "network.safetensors"))
            torch.save(optimizer.state_dict(), staging / _OPTIMIZER_NAME)
            write_json_atomic(staging / _STATE_NAME, {"key": self.key, "step": step, "history": history})


def _settings_key(config: MENDConfig, arguments: MENDTrainingArguments) -> str:
    payload = json.dumps(
        {"config": config.to_dict(), "arguments": arguments.to_dict(), "version": MEND_TRAINING_VERSION},
        sort_keys=True,
    )
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def train_mend(
    model: nn.Module,
    tokenizer: Any,
    config: MENDConfig,
    arguments: MENDTrainingArguments,
    output_dir: str | Path,
    *,
    pairs: Sequence[TrainingPairs] | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
) -> MENDNetwork:
    """Train an editor network for ``model`` and save it to ``output_dir``.

    Checkpoints go to ``output_dir/checkpoint`` and a run with the same settings resumes from there.
    ``pairs`` replaces the data of ``arguments.train_data``; ``stop_after`` ends the run after that many
    steps of this call (an interrupted run, for tests and step sweeps). The base model is not changed.

    Returns:
        The trained network, in eval mode.
    """
    if not config.layers:
        raise ValueError("MENDConfig.layers is empty: say which blocks the editor edits")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = matrix_names(model, config)
    pairs = list(pairs) if pairs is not None else _load_training_pairs(arguments)
    if len(pairs) < arguments.batch_size:
        raise ValueError(f"need at least batch_size={arguments.batch_size} training edits, got {len(pairs)}")
    key = _settings_key(config, arguments)

    torch.manual_seed(arguments.seed)
    network = MENDNetwork.for_model(model, config)
    optimizer = torch.optim.Adam(
        [
            {"params": [p for n, p in network.named_parameters() if n != "log_edit_lrs"]},
            {"params": [network.log_edit_lrs], "lr": arguments.lr_learning_rate},
        ],
        lr=arguments.learning_rate,
    )
    checkpoint = _Checkpoint(output_dir / CHECKPOINT_FOLDER, key)
    start_step, history = checkpoint.load(network, optimizer)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    end_step = (
        arguments.num_steps if stop_after is None else min(arguments.num_steps, start_step + stop_after)
    )
    bar = tqdm(
        range(start_step, end_step),
        initial=start_step,
        total=arguments.num_steps,
        desc="MEND training",
        disable=not show_progress,
    )
    try:
        for step in bar:
            network.train()
            edits, rephrasings, unrelated = _step_batch(pairs, step, arguments)
            loss_edit, loss_loc, success = training_losses(
                model, tokenizer, network, names, edits, rephrasings, unrelated, arguments.max_length
            )
            loss = loss_edit + arguments.locality_weight * loss_loc
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
            history.append(
                {
                    "step": step + 1,
                    "edit_loss": round(float(loss_edit.detach()), 5),
                    "locality_kl": round(float(loss_loc.detach()), 5),
                    "edit_success": success,
                }
            )
            bar.set_postfix(edit=f"{history[-1]['edit_loss']:.3f}", kl=f"{history[-1]['locality_kl']:.4f}")
            if (step + 1) % arguments.checkpoint_every == 0 or step + 1 == end_step:
                checkpoint.save(network, optimizer, step + 1, history)
    finally:
        bar.close()
        model.train(was_training)
    network.eval()
    if end_step == arguments.num_steps:
        network.save_pretrained(output_dir)
        write_json_atomic(
            output_dir / TRAINING_REPORT_NAME,
            {
                "arguments": arguments.to_dict(),
                "steps": arguments.num_steps,
                "seconds_this_run": round(time.perf_counter() - started, 1),
                "resumed_from_step": start_step,
                "training_edits": len(pairs),
                "history": history,
            },
        )
    return network


def training_losses(
    model: nn.Module,
    tokenizer: Any,
    network: MENDNetwork,
    names: Sequence[str],
    edits: Sequence[tuple[str, str]],
    rephrasings: Sequence[tuple[str, str]],
    unrelated: Sequence[str],
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """MEND's losses for one batch: the edit loss, the locality KL, and the share of edits that succeed.

    The edit loss is the mean target NLL on ``edits`` and ``rephrasings`` after the network's update of
    the matrices ``names``; the locality loss is ``KL(p_base || p_edited)`` on the ``unrelated`` texts.
    Both are differentiable with respect to the network; the model itself is not changed.
    """
    device = model_device(model)
    grad_batch = edit_batch(tokenizer, edits, device, max_length=max_length)
    factors, _ = gradient_factors(model, grad_batch, names)
    loc_ids, loc_mask = _text_batch(tokenizer, unrelated, device, max_length)
    with torch.no_grad():
        base_loc_logits = model(input_ids=loc_ids, attention_mask=loc_mask).logits
    updates = predicted_updates(network, factors)
    edited = {}
    for name, update in zip(names, updates, strict=True):
        module = get_module(model, name)
        edited[f"{name}.weight"] = module.weight + as_stored(update, module).to(module.weight.dtype)
    scored = edit_batch(tokenizer, list(edits) + list(rephrasings), device, max_length=max_length)
    scored_logits = torch.func.functional_call(
        model, edited, (), {"input_ids": scored.input_ids, "attention_mask": scored.attention_mask}
    ).logits
    loss_edit = edit_loss(scored_logits, scored)
    loc_logits = torch.func.functional_call(
        model, edited, (), {"input_ids": loc_ids, "attention_mask": loc_mask}
    ).logits
    loss_loc = _locality_kl(base_loc_logits, loc_logits, loc_mask)
    with torch.no_grad():
        success = top1_success(scored_logits[: len(edits)], _rows(scored, len(edits))).float().mean()
    return loss_edit, loss_loc, float(success)


def _rows(batch: EditBatch, count: int) -> EditBatch:
    return EditBatch(
        batch.input_ids[:count], batch.attention_mask[:count], batch.labels[:count], batch.owners[:count]
    )


def mend_cache_path(model: nn.Module, config: MENDConfig, arguments: MENDTrainingArguments) -> Path:
    """Where the network trained with these settings for this base model is cached."""
    fingerprint = model_fingerprint(model)
    return cache_dir() / "parts" / f"mend-{fingerprint}-{_settings_key(config, arguments)}"


def cached_mend_network(
    model: nn.Module, tokenizer: Any, config: MENDConfig, arguments: MENDTrainingArguments
) -> MENDNetwork:
    """The cached network for these settings and base model, trained (resumably) and cached if missing."""
    config = MENDConfig(
        **{
            **config.to_dict(),
            "base_model_name_or_path": str(getattr(model.config, "_name_or_path", "") or "") or None,
            "base_model_fingerprint": model_fingerprint(model),
        }
    )
    target = mend_cache_path(model, config, arguments)
    if (target / MEND_CONFIG_NAME).exists():
        logger.info("Loading the trained MEND editor from %s", target)
        return MENDNetwork.from_pretrained(target, model)
    logger.warning(
        "No trained MEND editor for blocks %s of this model in the cache: training one now (%d steps, "
        "about %.0f min on two CPU cores; once, cached in %s)",
        config.layers,
        arguments.num_steps,
        arguments.num_steps * SECONDS_PER_STEP_ESTIMATE / 60,
        target,
    )
    # A fixed staging name lets a killed training resume from its checkpoint on the next call.
    staging = target.parent / f".{target.name}.training"
    network = train_mend(model, tokenizer, config, arguments, staging)
    # The finished network and its report are kept; the optimizer state is only needed to resume.
    shutil.rmtree(staging / CHECKPOINT_FOLDER, ignore_errors=True)
    fsync_tree(staging)
    replace_folder(staging, target.absolute())
    return network
