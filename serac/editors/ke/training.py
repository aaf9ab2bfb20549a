"""Training the KE hypernetwork: the edit loss under a locality constraint, with a Lagrange multiplier.

Each step takes one training edit and asks the hypernetwork for its update; the edit loss is the target NLL
of the edit prompt (and one paraphrase, when the example has one) through the updated model, and the
constraint is the KL divergence of the next-token distributions on an unrelated query, base model against
updated model, kept below ``kl_margin`` (De Cao et al.'s constrained objective)::

    minimize  L_edit + lambda * (KL - kl_margin)     over the hypernetwork
    lambda <- max(0, lambda + lambda_lr * (KL - kl_margin))   (dual ascent)

Training is seeded and resumable: the hypernetwork, the optimizer, lambda and the step are checkpointed every
``checkpoint_every`` steps, and the edit of step ``i`` depends only on the seed and ``i``, so a killed run
continues where it stopped. The default hypernetwork of a base model is cached under
:func:`serac.offline.cache_dir` keyed by the model's fingerprint and the configuration.

Example:
    >>> train_hypernetwork(model, tokenizer, examples, KETrainingArguments(num_steps=200), "ke-folder")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from serac.data import EditExample, SyntheticDataConfig, generate_synthetic_examples
from serac.durable_folder import fsync_tree, replace_folder
from serac.editors.base import model_device
from serac.editors.hparams import preset_for
from serac.editors.ke.network import (
    KE_CONFIG_NAME,
    EditPass,
    KEConfig,
    edit_rows,
    hypernetwork_for,
    target_nll,
)
from serac.editors.layer_stats import model_fingerprint
from serac.editors.mend.training import load_training_examples
from serac.files import write_bytes_atomic
from serac.offline import cache_dir

__all__ = [
    "CHECKPOINT_NAME",
    "KETrainingArguments",
    "default_hypernetwork_dir",
    "train_hypernetwork",
    "training_examples",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "ke_checkpoint.pt"


@dataclass
class KETrainingArguments:
    """How the KE hypernetwork is trained; the hypernetwork's shape is in ``config``."""

    config: KEConfig = field(
        default_factory=KEConfig, metadata={"help": "hypernetwork shape and edited layers"}
    )
    train_data: list[str] = field(
        default_factory=lambda: ["synthetic:1000"],
        metadata={"help": "training data specs (synthetic:N, zsre:PATH, counterfact:PATH, jsonl:PATH)"},
    )
    num_steps: int = field(default=300, metadata={"help": "training edits, one per step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate of the hypernetwork"})
    kl_margin: float = field(default=1e-3, metadata={"help": "allowed KL on unrelated queries"})
    lambda_init: float = field(default=1.0, metadata={"help": "starting Lagrange multiplier"})
    lambda_lr: float = field(default=10.0, metadata={"help": "dual ascent step of the multiplier"})
    checkpoint_every: int = field(default=25, metadata={"help": "steps between resumable checkpoints"})
    seed: int = field(default=0, metadata={"help": "seeds the edit order and the hypernetwork's init"})

    def __post_init__(self) -> None:
        if isinstance(self.train_data, str):
            self.train_data = [self.train_data]
        if not self.train_data or not all(isinstance(spec, str) and spec for spec in self.train_data):
            raise ValueError(f"train_data must be a non-empty list of data specs, got {self.train_data!r}")
        if isinstance(self.config, dict):
            self.config = KEConfig(**self.config)
        if not isinstance(self.config, KEConfig):
            raise TypeError(f"config must be a KEConfig, got {type(self.config).__name__}")
        for name in ("num_steps", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("learning_rate", "kl_margin", "lambda_init", "lambda_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int, got {self.seed!r}")

    def key(self) -> str:
        """A short hash of every setting: folders trained with other settings are never reused."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def training_examples(train_data: Sequence[str], seed: int = 0) -> list[EditExample]:
    """The edits of ``train_data`` (never MQuAKE for a MQuAKE benchmark: it is the evaluation data).

    Synthetic edits come with two questions about another relation of their subject each, the unrelated
    queries the KL constraint is measured on; file records without a new answer are skipped.
    """
    examples: list[EditExample] = []
    for spec in train_data:
        kind, _, size = spec.strip().partition(":")
        if kind.lower() == "synthetic":
            examples += generate_synthetic_examples(
                int(size or 1000), seed=seed, config=SyntheticDataConfig(same_subject_other_relation=2)
            )
        else:
            examples += [
                example for example in load_training_examples(spec, seed=seed) if example.edit.target
            ]
    return examples


def _step_rows(examples: Sequence[EditExample], seed: int, step: int) -> tuple[list[tuple[str, str]], str]:
    """The edit rows and the unrelated query of training step ``step`` (a function of seed and step only)."""
    rng = random.Random(f"{seed}-{step}")
    example = examples[rng.randrange(len(examples))]
    rows = [(example.edit.query, example.edit.target)]
    paraphrases = [query for query in example.in_scope if query.text != example.edit.query]
    if paraphrases:
        paraphrase = rng.choice(paraphrases)
        rows.append((paraphrase.text, paraphrase.answer if paraphrase.answer else example.edit.target))
    if example.out_of_scope:
        unrelated = rng.choice(example.out_of_scope).text
    else:
        unrelated = examples[rng.randrange(len(examples))].edit.query
    return rows, unrelated


def _kl_on_unrelated(
    base_logits: torch.Tensor, edited_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(base || edited) of the next-token distributions, averaged over the unrelated query's tokens."""
    base = base_logits.float().log_softmax(-1)
    edited = edited_logits.float().log_softmax(-1)
    per_token = (base.exp() * (base - edited)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def training_step(
    model: nn.Module,
    tokenizer: Any,
    edit_pass: EditPass,
    rows: Sequence[tuple[str, str]],
    unrelated: str,
    multiplier: float,
    kl_margin: float,
) -> tuple[torch.Tensor, float, float]:
    """The Lagrangian of one training edit, with its edit loss and KL (the hypernetwork gets the gradient)."""
    device = model_device(model)
    batch = edit_rows(tokenizer, rows, device, extra=[unrelated])
    edit_only = edit_rows(tokenizer, rows[:1], device)
    gradients = edit_pass.gradients(edit_only)
    query, target = rows[0]
    encoding = edit_pass.network.encode(edit_pass.encoding_input(tokenizer, query, target))
    updates = [edit_pass.as_out_in(update) for update in edit_pass.network.updates(encoding, gradients)]
    logits = edit_pass.edited_forward(updates, batch)
    edit_loss = target_nll(logits, batch)
    with torch.no_grad():
        base_logits = model(
            input_ids=batch.input_ids[-1:], attention_mask=batch.attention_mask[-1:], use_cache=False
        ).logits
    kl = _kl_on_unrelated(base_logits[0], logits[-1], batch.attention_mask[-1].float())
    lagrangian = edit_loss + multiplier * (kl - kl_margin)
    return lagrangian, float(edit_loss.detach()), float(kl.detach())


def train_hypernetwork(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[EditExample],
    arguments: KETrainingArguments,
    output_dir: str | os.PathLike,
    *,
    show_progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> Path:
    """Train a KE hypernetwork for ``model`` and save it to ``output_dir``; resumes from its checkpoint.

    ``on_step(step, logs)`` is called after every step (after any checkpoint of that step).
    """
    examples = [example for example in examples if example.edit.target and not example.edit.is_statement]
    if not examples:
        raise ValueError("KE training needs prompt edits with a target; none were given")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(arguments.seed)
    config = KEConfig(**{**asdict(arguments.config), "base_model_fingerprint": model_fingerprint(model)})
    config.base_model_name_or_path = config.base_model_name_or_path or getattr(
        model.config, "_name_or_path", None
    )
    network = hypernetwork_for(model, config).to(model_device(model))
    optimizer = torch.optim.Adam(network.parameters(), lr=arguments.learning_rate)
    multiplier, start, history = float(arguments.lambda_init), 0, []
    checkpoint = output_dir / CHECKPOINT_NAME
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location=model_device(model), weights_only=False)
        if state["arguments_key"] != arguments.key():
            raise ValueError(
                f"{checkpoint} was written with other training arguments; remove it or use another folder"
            )
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        multiplier, start, history = state["multiplier"], state["step"], state["history"]
        logger.info("Resuming KE training at step %d of %d", start, arguments.num_steps)
    edit_pass = EditPass(model, network)
    bar = tqdm(
        range(start, arguments.num_steps),
        desc="KE hypernetwork",
        disable=not show_progress,
        initial=start,
        total=arguments.num_steps,
    )
    for step in bar:
        rows, unrelated = _step_rows(examples, arguments.seed, step)
        lagrangian, edit_loss, kl = training_step(
            model, tokenizer, edit_pass, rows, unrelated, multiplier, arguments.kl_margin
        )
        optimizer.zero_grad(set_to_none=True)
        lagrangian.backward()
        optimizer.step()
        multiplier = max(0.0, multiplier + arguments.lambda_lr * (kl - arguments.kl_margin))
        history.append({"step": step, "edit_loss": edit_loss, "kl": kl, "multiplier": multiplier})
        bar.set_postfix(edit_loss=f"{edit_loss:.2f}", kl=f"{kl:.4f}", multiplier=f"{multiplier:.2f}")
        if (step + 1) % arguments.checkpoint_every == 0 or step + 1 == arguments.num_steps:
            buffer = _serialize(
                {
                    "network": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "multiplier": multiplier,
                    "step": step + 1,
                    "history": history,
                    "arguments_key": arguments.key(),
                }
            )
            write_bytes_atomic(checkpoint, buffer)
        if on_step is not None:
            on_step(step, history[-1])
    network.save_pretrained(output_dir)
    (output_dir / "ke_training_history.json").write_text(json.dumps(history))
    return output_dir


def _serialize(state: dict[str, Any]) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def default_arguments(model: nn.Module, **overrides: Any) -> KETrainingArguments:
    """The preset training of ``model`` (:mod:`serac.editors.hparams`, method ``"ke"``) with ``overrides``."""
    preset = preset_for(model, "ke")
    values = {**preset, **overrides}
    config = {**preset.get("config", {}), **dict(overrides.get("config", {}) or {})}
    values["config"] = KEConfig(**config)
    return KETrainingArguments(**values)


def default_hypernetwork_dir(model: nn.Module, tokenizer: Any, **overrides: Any) -> Path:
    """The cached default hypernetwork of ``model``, trained on first use (resuming an interrupted run)."""
    arguments = default_arguments(model, **overrides)
    # Beside MEND's networks and the default parts; a fixed staging name lets a killed training resume.
    target = cache_dir() / "parts" / f"ke-{model_fingerprint(model)}-{arguments.key()}"
    if (target / KE_CONFIG_NAME).exists():
        return target
    staging = target.parent / f".{target.name}.training"
    logger.info("Training the KE hypernetwork for this base model into %s (once)", target)
    examples = training_examples(arguments.train_data, seed=arguments.seed)
    train_hypernetwork(model, tokenizer, examples, arguments, staging)
    fsync_tree(staging)
    replace_folder(staging, target.absolute())
    return target
