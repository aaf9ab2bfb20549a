"""What meta-training a base model for Editable Neural Networks (Sinitsin et al., ICLR 2020) would cost here.

ENN trains the whole model to be editable: an outer step applies an edit with ``k`` differentiable SGD steps
on the edit loss over every parameter, then takes the task loss, the edit loss after the inner steps and a
locality KL on an unrelated input, and backpropagates through the inner steps into the original weights
(second order). This module times such outer steps on the given base model and records peak memory, so the
cost of the full meta-training can be extrapolated; it does not train an ENN.

Run:
    python benchmarks/enn_cost.py --inner-steps 1 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from collections.abc import Sequence

import torch
from torch.func import functional_call

from serac.editors.base import pad_batch, pad_token_id, target_token_ids, token_ids
from serac.offline import load_base_model

logger = logging.getLogger(__name__)

EDIT = ("Ellie Kemper is a citizen of", "Croatia")
UNRELATED = "The river runs through the old city and the market opens at dawn."
TASK_TEXT = (
    "The museum shows paintings from the early years of the city, and the film was directed by a young man "
    "from the south who studied law at the university."
)


def _nll(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return -logits[0, positions].float().log_softmax(-1).gather(1, labels[:, None]).mean()


def outer_step_seconds(model, tokenizer, inner_steps: int, inner_lr: float = 1e-4) -> tuple[float, float]:
    """Wall and CPU seconds of one ENN outer step with ``inner_steps`` differentiable SGD steps over all weights.

    The CPU seconds (this process, all threads) do not depend on what else the machine runs.
    """
    device = next(model.parameters()).device
    prompt_ids = token_ids(tokenizer, EDIT[0])
    target_ids = target_token_ids(tokenizer, EDIT[0], EDIT[1])
    edit_ids = torch.tensor([prompt_ids + target_ids[:-1]], device=device)
    edit_labels = torch.tensor(target_ids, device=device)
    edit_positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(target_ids), device=device)
    task_ids, _ = pad_batch([token_ids(tokenizer, TASK_TEXT)], pad_token_id(tokenizer), device)
    unrelated_ids, _ = pad_batch([token_ids(tokenizer, UNRELATED)], pad_token_id(tokenizer), device)
    parameters = {name: p for name, p in model.named_parameters()}
    for parameter in parameters.values():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters.values(), lr=1e-5)

    def logits(weights, ids):
        return functional_call(model, weights, args=(), kwargs={"input_ids": ids, "use_cache": False}).logits

    start, cpu_start = time.perf_counter(), time.process_time()
    weights = dict(parameters)
    for _ in range(inner_steps):
        loss = _nll(logits(weights, edit_ids), edit_labels, edit_positions)
        grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True, allow_unused=True)
        weights = {
            name: w if g is None else w - inner_lr * g
            for (name, w), g in zip(weights.items(), grads, strict=True)
        }
    edit_loss = _nll(logits(weights, edit_ids), edit_labels, edit_positions)
    task_logits = logits(parameters, task_ids)
    task_loss = -task_logits[0, :-1].float().log_softmax(-1).gather(1, task_ids[0, 1:, None]).mean()
    with torch.no_grad():
        base = logits(parameters, unrelated_ids).float().log_softmax(-1)
    edited = logits(weights, unrelated_ids).float().log_softmax(-1)
    locality = (base.exp() * (base - edited)).sum(-1).mean()
    outer = task_loss + edit_loss + locality
    optimizer.zero_grad(set_to_none=True)
    outer.backward()
    optimizer.step()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="base model (default: offline SmolLM2-135M)")
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="outer steps timed per inner-step count")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--extrapolate-steps", type=int, default=10000, help="outer steps to extrapolate to")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    model, tokenizer = load_base_model(arguments.model)
    # Second-order gradients need the eager attention: the fused CPU kernel has no double backward.
    model.set_attn_implementation("eager")
    model.train()
    result = {"threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in model.parameters())}
    for inner in arguments.inner_steps:
        measured = [outer_step_seconds(model, tokenizer, inner) for _ in range(arguments.repeats)]
        best = min(cpu for _, cpu in measured)
        result[f"inner_{inner}"] = {
            "outer_step_wall_seconds": [wall for wall, _ in measured],
            "outer_step_cpu_seconds": [cpu for _, cpu in measured],
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            # CPU seconds over the threads used: with all cores busy on this one job, hours of wall time.
            "extrapolated_hours": best / result["threads"] * arguments.extrapolate_steps / 3600,
        }
        logger.info("inner steps %d: %s", inner, json.dumps(result[f"inner_{inner}"]))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
