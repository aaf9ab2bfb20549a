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

SMOLLM2_FINDINGS = """How the SmolLM2-135M-Instruct values were found (benchmarks/editors_eval.py, MQuAKE-CF dev edits).

* Layer sweep: ROME single-edit efficacy on the first 8 rewrites, 20 value steps, statistics from 5,000
  token vectors of the self-generated corpus (``--part sweep --layers 2 4 6 8 11 14 --num-edits 8``):
  layer 2: 0.875, 4: 0.625, 6: 0.625, 8: 0.50, 11: 0.50, 14: 0.875. Layer 2 is kept for ROME, and MEMIT
  spreads over layers 2-6, the early MLPs where the sweep and the papers' causal tracing place recall.
* Why efficacy stayed below 1, and the fix: SmolLM2's tokenizer adds no BOS token, so in a cloze prompt
  such as "Boston was founded by" the subject's last token sits at position 0 or 1, where Llama-style
  models keep attention-sink activations, and its key differs from the key k* averaged over context
  templates. An insertion scaled by (C^-1 k*)^T k* (W' k* = W k* + delta) left only a share
  (C^-1 k*)^T k_prompt / (C^-1 k*)^T k* of the value on the edit prompt: 0.04, 0.32 and 0.52 for three
  failed edits at layer 4 against 0.85-1.08 for five that succeeded. Scaling by the edit prompt's own key
  instead, as the ROME authors' code does (``insertion_key="prompt"``, the default), raised single-edit
  efficacy over the first 50 rewrites from 0.76 to 0.88 (``--part rome --num-edits 50``; 0.95 of the 40
  with the subject's last token at position 2 or later, 0.60 of the 10 at position 0-1, where for a
  one-token subject at position 0 the value optimization itself does not converge: target NLL 7.0).
* The measurements in this list were made with the value penalty weight_decay * ||delta||^2 / ||v||^2; it
  is now the ROME/MEMIT authors' weight_decay * ||delta|| / ||v||^2 (see ``serac.editors.values`` and the
  README's comparison with EasyEdit), which lets the value grow further.
* Statistics size: ROME efficacy on the first 8 rewrites at layer 2 is 0.875 with C from 1,000, 5,000 or
  20,000 token vectors (``--part samples``); 5,000 is kept as the default for SmolLM2.
* 20 value steps reach a target NLL below 0.12 on every edit whose subject is not at the sequence start.
* MEMIT's lambda (weight of C against the edit keys): an edit key's share of its residual at one layer is
  about s / (1 + s), s = k^T (lambda C)^-1 k, and for a typical key k^T C^-1 k is about the key dimension
  d. The papers' lambda gives d / lambda of 0.32 (GPT-2 XL: 6400 / 20000) and 1.09 (GPT-J: 16384 / 15000);
  SmolLM2's keys have d = 1536, so GPT-J's 15000 gives 0.10 and barely moves the model. Measured on 10
  rewrites in one batch (``serac bench --dataset mquake --methods memit --num-edits 10
  --limit-queries 10 --editor-hparams ...``), lambda -> efficacy / paraphrase / locality: 15000 -> 0.2 /
  0.0 / 0.6; 2000 -> 0.7 / 0.5 / 0.3; 500 -> 0.8 / 0.6 / 0.1. 2000 (d / lambda = 0.77, inside the papers'
  range) is kept.
* FT+L bound: with GPT-2 XL's L-inf bound (5e-4) fine-tuning barely moves SmolLM2. On 10 rewrites in one
  batch, 25 Adam steps on layer 4's down-projection (``serac bench --dataset mquake --methods
  ft --num-edits 10 --limit-queries 10 --editor-hparams ...``), (epsilon, lr) -> efficacy / locality:
  (5e-4, 5e-4) 0.2 / 1.0 (final target NLL 5.3); (2e-3, 1e-3) 0.0 / 0.7 (4.0); (5e-3, 2e-3) 0.5 / 0.7
  (2.0); (1e-2, 5e-3) 0.9 / 0.4 (0.58); (2e-2, 5e-3) 1.0 / 0.4 (0.17); layer 2 at (5e-3, 2e-3) 0.8 / 0.4.
  (1e-2, 5e-3) is kept: the smallest bound at which fine-tuning fits the edits, as FT+L does in the ROME
  paper (high efficacy, paid for in locality).
"""

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
        "rome": {"layer": 2, "num_steps": 20, "context_templates": [[5, 3]], "stats_samples": 5000},
        "memit": {
            "layers": [2, 3, 4, 5, 6],
            "num_steps": 20,
            "context_templates": [[5, 3]],
            "stats_samples": 5000,
            "mom2_update_weight": 2000.0,
        },
        "ft": {"layer": 4, "lr": 5e-3, "norm_constraint": 1e-2},
    },
}


def preset_for(model: nn.Module | Any, method: str) -> dict[str, Any]:
    """The ``method`` hyperparameters of the first preset whose ``match`` fits the model's config ({} if none)."""
    config = getattr(model, "config", model)
    for preset in PRESETS.values():
        if all(getattr(config, key, None) == value for key, value in preset["match"].items()):
            return dict(preset.get(method, {}))
    return {}
