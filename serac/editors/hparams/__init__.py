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
* MEND and SaLEM (``"mend"``, ``"salem"``) on SmolLM2: an initial edit step size of 1e-3, because the
  untrained (identity) editor network with step 1e-3 already makes 9 of 10 training edits (6 zsRE, 4
  synthetic) the top-1 answer at every target token (1e-4: 1 of 10; 1e-2: 9 of 10 at a higher target
  NLL; 3e-2: 4 of 10); training then mainly buys paraphrase generalization and locality. 200 steps of 4
  edits keep the first-use training under half an hour on two CPU cores (see the README). The locality
  weight is 10 (MEND's edit weight 0.1 against a locality weight of 1) and the log step sizes learn at 1e-2:
  on the first 50 MQuAKE-CF dev rewrites, one at a time (``python benchmarks/faithfulness.py --part mend
  --impl ours --num-edits 50 --locality-per-edit 2 --mend-hparams ...``, blocks 27-29), efficacy /
  paraphrase / locality were 0.94 / 0.04 / 0.28 with weight 1 and step-size lr 1e-4 (the step sizes stayed
  at 1e-3) and 0.88 / 0.04 / 0.63 with weight 10 and 1e-2 (step sizes 4e-4 to 8e-4 after training; the
  last 25 steps' training KL 0.11 against 0.51). 446 s of training on two shared CPU cores. 600 steps
  instead of 200 gave 0.84 / 0.08 / 0.56 (544 s, two threads, quiet machine): no better, so 200 stay.
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
* Knowledge neurons: a sweep over the first 6 rewrites, 10 integrated-gradients steps, the prompt and 2
  context prefixes (``python benchmarks/kn_sweep.py --num-edits 6 --layers ...``; efficacy: the new
  target's first token becomes the top prediction; locality: 10 other rewrites' prompts keep theirs).
  Layers 24-29, insert scale -> efficacy / locality: 4 -> 0.00 / 0.65; 8 -> 0.33 / 0.52; 16 -> 0.00 / 0.37;
  32 -> 0.00 / 0.20; 64 -> 0.17 / 0.10. Layers 12, 14, 16, 18: 4 -> 0.00 / 1.00; 8 -> 0.00 / 0.98; 16 ->
  0.00 / 0.97; 32 -> 0.17 / 0.88; 64 -> 0.17 / 0.67. The model's own answer to these cloze prompts is " the"
  or " a" (5 of 6), so the attributed neurons are largely the same few for every fact (layer 28's 1095 and
  625, layer 29's 741 in the top layers) and rewriting them moves unrelated prompts too; this is the
  weakness of attributing the predicted token rather than a known true answer. Layers 24-29 at scale 8 are
  kept (the best efficacy measured, as the paper searches the top layers).
* KE: an untrained hypernetwork takes a normalized gradient step; on 3 zsRE training edits a step of size 1
  on layers 2-3 took the target NLL from 11.9 / 7.5 / 2.3 to 8.2 / 5.1 / 2.3 at a KL of 0.9 / 1.7 / 2.8 on
  the records' unrelated question (layers 8-9: 7.0 / 4.9 / 2.8 at 0.7 / 1.1 / 2.7); steps of 3-30 only
  made both worse. So the raw gradient direction is far from local, which is what the hypernetwork has to
  learn. A first run with a KL margin of 1e-3 and a multiplier step of 10 drove the multiplier to 47 within
  100 steps and the hypernetwork to no edit at all (edit loss about 10, KL 0). Kept: layers 8-9, initial
  step 0.3, KL margin 0.1, multiplier step 1, 200 steps (about 7 minutes of wall time on 2 shared cores,
  load average about 11); mean edit loss / KL per 50 training steps: 6.93 / 0.29, 6.77 / 0.13, 6.70 / 0.14,
  5.97 / 0.05. Edit success against steps (``serac bench --dataset mquake --methods ke --num-edits 1,10
  --limit-queries 10``, the 500-step run through ``--editor-hparams`` with ``{"ke": {"training":
  {"num_steps": 500}}}``): 200 steps -> efficacy 0.4 / locality 0.0 on 10 rewrites; 500 steps (456 s) ->
  0.3 / 0.0, although its training edit loss kept falling (per 100 steps: 6.85, 6.33, 5.01, 4.58, 4.16 at
  KL 0.07-0.21). With no measured gain on the benchmark, 200 steps are kept.
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
        "mend": {"edit_lr_init": 1e-3, "num_steps": 200, "batch_size": 4, "learning_rate": 3e-4},
        "salem": {"edit_lr_init": 1e-3, "num_steps": 200, "batch_size": 4, "learning_rate": 3e-4},
        "kn": {
            "layers": [24, 25, 26, 27, 28, 29],
            "steps": 10,
            "context_templates": [[5, 2]],
            "insert_scale": 8.0,
        },
        "ke": {
            "config": {"layers": [8, 9], "initial_step": 0.3},
            "num_steps": 200,
            "kl_margin": 0.1,
            "lambda_init": 0.5,
            "lambda_lr": 1.0,
            "checkpoint_every": 20,
        },
    },
}


def preset_for(model: nn.Module | Any, method: str) -> dict[str, Any]:
    """The ``method`` hyperparameters of the first preset whose ``match`` fits the model's config ({} if none)."""
    config = getattr(model, "config", model)
    for preset in PRESETS.values():
        if all(getattr(config, key, None) == value for key, value in preset["match"].items()):
            return dict(preset.get(method, {}))
    return {}
