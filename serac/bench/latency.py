"""Latency of a method relative to the base model, measured in the same invocation.

A method that wraps the base model (SERAC, the cache) is timed right after the base model on the same
query (:func:`paired_ratio`); the others are compared with the base run of the same setting
(:func:`add_latency_ratios`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serac.bench.config import BASE_METHOD
from serac.metrics import percentile

__all__ = ["add_latency_ratios", "paired_ratio"]


def paired_ratio(paired: Sequence[tuple[str, float, float]]) -> float | None:
    """Median method time over median base time of the same queries (None without pairs)."""
    if not paired:
        return None
    base_p50 = percentile([base_seconds for _, _, base_seconds in paired], 50)
    return percentile([seconds for _, seconds, _ in paired], 50) / base_p50 if base_p50 else None


def add_latency_ratios(runs: list[dict[str, Any]]) -> None:
    """Each method's latency over the base model's on the same queries, measured in the same invocation.

    Methods timed in pairs with the base model keep their paired p50 ratio; the others are compared with the
    base run of the same setting.
    """
    base = {
        (run["num_edits"], run["mode"]): run["metrics"]
        for run in runs
        if run["method"] == BASE_METHOD and run.get("metrics")
    }
    for run in runs:
        metrics = run.get("metrics")
        if not metrics:
            continue
        reference = base.get((run["num_edits"], run["mode"]))
        for name in ("p50", "p95"):
            key = f"query_ms_{name}"
            if metrics.get(f"{key}_ratio_to_base") is not None:
                continue  # measured in pairs, the better estimate
            ratio = None
            if reference and reference.get(key) and metrics.get(key) is not None:
                ratio = metrics[key] / reference[key]
            metrics[f"{key}_ratio_to_base"] = ratio
