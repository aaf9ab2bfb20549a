"""Reports of a benchmark result: a Markdown table and one PNG plot per metric, written atomically.

A *result* is the dictionary :func:`serac.bench.runner.run_benchmark` returns (and writes as JSON):
``{"config": {...}, "runs": [{"method", "num_edits", "mode", "metrics": {...}}, ...], "skipped": [...]}``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

from serac.files import write_bytes_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "PLOTTED_METRICS",
    "TABLE_COLUMNS",
    "markdown_table",
    "plot_metrics",
]

#: (metric key, column header, count key or None, kind) of the table; columns whose values are all missing
#: are left out, so a dataset without portability questions gets no portability column.
TABLE_COLUMNS: tuple[tuple[str, str, str | None, str], ...] = (
    ("efficacy", "efficacy", "efficacy_count", "rate"),
    ("paraphrase", "paraphrase", "paraphrase_count", "rate"),
    ("locality", "locality", "locality_count", "rate"),
    ("locality_hard", "locality (hard)", "locality_hard_count", "rate"),
    ("portability", "portability", "portability_count", "rate"),
    ("portability_case", "multi-hop (case)", "portability_case_count", "rate"),
    ("edit_success", "ES", "edit_success_count", "rate"),
    ("drawdown", "DD", "drawdown_count", "rate"),
    ("drawdown_tokens", "DD tok", "drawdown_tokens_count", "rate"),
    ("efficacy_prob", "P(new)>P(true)", "efficacy_prob_count", "rate"),
    ("paraphrase_prob", "P(new)>P(true) para.", "paraphrase_prob_count", "rate"),
    ("locality_prob", "P(true)>P(new) neigh.", "locality_prob_count", "rate"),
    ("scope_recall", "routed to an edit (in-scope q.)", None, "rate"),
    ("scope_false_positive_rate", "routed to an edit (out-of-scope q.)", None, "rate"),
    ("scope_recall_all", "scope recall (all q.)", "scope_recall_all_count", "rate"),
    (
        "scope_false_positive_rate_all",
        "false positives (all out-of-scope q.)",
        "scope_false_positive_rate_all_count",
        "rate",
    ),
    ("edit_seconds_per_edit", "s / edit", None, "seconds"),
    ("query_ms_p50", "query ms p50", None, "ms"),
    ("query_ms_p95", "query ms p95", None, "ms"),
    ("query_ms_p50_ratio_to_base", "p50 / base", None, "ratio"),
    ("query_ms_p50_ratio_to_base_out_of_scope", "p50 / base (out-of-scope q.)", None, "ratio"),
)

#: Metrics plotted against the number of edits, one PNG each.
PLOTTED_METRICS: tuple[str, ...] = (
    "efficacy",
    "paraphrase",
    "locality",
    "locality_hard",
    "portability",
    "edit_success",
    "efficacy_prob",
    "paraphrase_prob",
    "locality_prob",
    "edit_seconds_per_edit",
    "query_ms_p50",
    "query_ms_p95",
)

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":")
_LABELS = {
    "efficacy": "efficacy (edit prompt gives the new answer)",
    "paraphrase": "paraphrase (in-scope rephrasings give the new answer)",
    "locality": "locality (out-of-scope answers unchanged)",
    "locality_hard": "locality on hard out-of-scope queries",
    "portability": "portability (multi-hop questions give the new answer)",
    "edit_success": "edit success (target top-1 at every token, teacher-forced)",
    "efficacy_prob": "P(new) > P(true) on the edit prompt",
    "paraphrase_prob": "P(new) > P(true) on paraphrases",
    "locality_prob": "P(true) > P(new) on neighborhood prompts",
    "edit_seconds_per_edit": "seconds per edit",
    "query_ms_p50": "query latency p50 (ms)",
    "query_ms_p95": "query latency p95 (ms)",
}


# ----------------------------------------------------------------------------------------------- table


def _format(value: Any, kind: str, count: Any) -> str:
    if value is None:
        return "–"
    if kind == "rate":
        text = f"{value:.3f}"
        return f"{text} ({count})" if count is not None else text
    if kind == "seconds":
        return f"{value:.3g}"
    if kind == "ms":
        return f"{value:.1f}"
    return f"{value:.2f}×"


def _edits_label(run: Mapping[str, Any]) -> str:
    return str(run["num_edits"])


def markdown_table(result: Mapping[str, Any]) -> str:
    """The runs as a Markdown table (rates show their count in parentheses), then caps and skipped runs."""
    runs = [run for run in result.get("runs", []) if run.get("metrics")]
    columns = [
        column for column in TABLE_COLUMNS if any(run["metrics"].get(column[0]) is not None for run in runs)
    ]
    header = ["method", "mode", "edits", *(title for _, title, _, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(columns)) + "|"]
    for run in runs:
        metrics = run["metrics"]
        cells = [run["method"], run["mode"], _edits_label(run)]
        for key, _, count_key, kind in columns:
            cells.append(_format(metrics.get(key), kind, metrics.get(count_key) if count_key else None))
        lines.append("| " + " | ".join(cells) + " |")
    failed = [run for run in result.get("runs", []) if run.get("error")]
    extra = []
    config = result.get("config", {})
    if config.get("max_edits"):
        caps = ", ".join(
            f"{method}={'none' if cap is None else cap}"
            for method, cap in sorted(config["max_edits"].items())
        )
        extra.append(f"Edit caps per method: {caps}.")
    for run in failed:
        extra.append(f"Failed: {run['method']} at {run['num_edits']} edits: {run['error']}")
    for skipped in result.get("skipped", []):
        extra.append(f"Skipped: {skipped['method']} at {skipped['num_edits']} edits ({skipped['reason']}).")
    for note in result.get("notes", []):
        extra.append(f"Note: {note}")
    if extra:
        lines.append("")
        lines.extend(extra)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- plots


def _series(runs: Sequence[Mapping[str, Any]], metric: str) -> dict[str, list[tuple[int, float]]]:
    modes = {run["mode"] for run in runs}
    series: dict[str, list[tuple[int, float]]] = {}
    for run in runs:
        value = (run.get("metrics") or {}).get(metric)
        if value is None:
            continue
        label = run["method"] if len(modes) == 1 else f"{run['method']} ({run['mode']})"
        series.setdefault(label, []).append((int(run["num_edits"]), float(value)))
    return {label: sorted(points) for label, points in series.items()}


def plot_metrics(
    result: Mapping[str, Any],
    directory: str | os.PathLike,
    stem: str,
    metrics: Sequence[str] = PLOTTED_METRICS,
) -> list[Path]:
    """One PNG per metric with data: the metric against the number of edits, one line per method.

    Files are named ``{stem}.{metric}.png`` inside ``directory``; returns their paths.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, work without a display
    import matplotlib.pyplot as plt

    runs = [run for run in result.get("runs", []) if run.get("metrics")]
    written = []
    for metric in metrics:
        series = _series(runs, metric)
        if not series:
            continue
        figure, axis = plt.subplots(figsize=(6, 4))
        try:
            for index, (label, points) in enumerate(sorted(series.items())):
                xs = [x for x, _ in points]
                ys = [y for _, y in points]
                # Methods often coincide (base and cache both keep locality at 1): distinct markers and
                # dash patterns keep every line visible.
                axis.plot(
                    xs,
                    ys,
                    marker=_MARKERS[index % len(_MARKERS)],
                    linestyle=_LINESTYLES[index % len(_LINESTYLES)],
                    markersize=7 - index % 3,
                    alpha=0.85,
                    label=label,
                )
            all_x = [x for points in series.values() for x, _ in points]
            if max(all_x) >= 10 * min(all_x):
                axis.set_xscale("log")
            if metric in ("edit_seconds_per_edit", "query_ms_p50", "query_ms_p95"):
                positive = [y for points in series.values() for _, y in points if y > 0]
                if positive and max(positive) >= 100 * min(positive):
                    axis.set_yscale("log")
            else:
                axis.set_ylim(-0.02, 1.02)
            axis.set_xlabel("number of edits")
            axis.set_ylabel(metric)
            dataset = result.get("config", {}).get("dataset", "")
            axis.set_title(f"{_LABELS.get(metric, metric)}, {dataset}", fontsize=9)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8)
            figure.tight_layout()
            path = Path(directory) / f"{stem}.{metric}.png"
            buffer = BytesIO()
            figure.savefig(buffer, format="png", dpi=110)
            written.append(write_bytes_atomic(path, buffer.getvalue()))
        finally:
            plt.close(figure)
    return written
