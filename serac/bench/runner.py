"""The benchmark runner: every (method, number of edits) setting, applied, evaluated and undone.

For every method and every number of edits, the runner applies the edits (all at once, or one after
another in ``mode="sequential"``), generates an answer to each evaluation query (batch size 1, greedy, the
same ``max_new_tokens`` for every method), scores the answers with :mod:`serac.metrics`, and undoes the
edits before the next setting (weight editors restore their weights; SERAC starts from an empty edit
store), so every setting is independent. After each undo the base model's weights are checked unchanged.
"""

from __future__ import annotations

import logging
import os
import platform
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from serac.bench.config import BASE_METHOD, SERAC_METHOD, BenchmarkConfig, progress, validate_config
from serac.bench.data import (
    Setting,
    build_setting,
    load_background_edits,
    load_benchmark_examples,
    order_examples,
)
from serac.bench.evaluation import Harness, evaluate, reference_top1
from serac.bench.generation import QueryFormatter, generate_answers
from serac.bench.latency import add_latency_ratios
from serac.bench.methods import Method, build_method, load_editable_model, sum_stats
from serac.data.schema import EditExample
from serac.edits import Edit
from serac.offline import load_base_model

logger = logging.getLogger(__name__)

__all__ = ["run_benchmark", "weights_fingerprint"]


def weights_fingerprint(model: Any) -> list[tuple[str, float, float]]:
    """Per-parameter sum and sum of squares (float64): any edit a restore missed changes them."""
    with torch.no_grad():
        return [
            (name, float(parameter.double().sum()), float(parameter.double().square().sum()))
            for name, parameter in model.named_parameters()
        ]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed)


def _environment(model: Any, device: torch.device) -> dict[str, Any]:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype),
        "model_parameters": sum(parameter.numel() for parameter in model.parameters()),
    }


def run_benchmark(
    config: BenchmarkConfig,
    *,
    examples: Sequence[EditExample] | None = None,
    model_loader: Callable[[str | None], tuple[Any, Any]] | None = None,
    editable_factory: Callable[[Any, Any, str | None], Any] | None = None,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every (method, number of edits) setting and return the result dictionary.

    Args:
        config: the settings; validated first.
        examples: the examples to use instead of loading ``config.dataset``.
        model_loader: ``name_or_path -> (model, tokenizer)``; default :func:`serac.offline.load_base_model`.
        editable_factory: ``(model, tokenizer, serac_path) -> EditableModel``; default
            :func:`load_editable_model`.
        on_update: called with the partial result after every run (the CLI saves it, so a long benchmark
            that is interrupted keeps what it measured).

    Raises:
        BenchmarkError: on bad settings or unusable data, before any model is loaded.
        RuntimeError: if a method left the base model's weights changed after undoing its edits.
    """
    validate_config(config)
    if examples is None:
        examples = load_benchmark_examples(config)
    ordered, conflicts = order_examples(examples, config.seed)
    distinct = len({example.edit for example in ordered})
    settings_requested = list(config.num_edits)
    numbers = sorted({distinct if value is None else min(value, distinct) for value in settings_requested})
    if any(value is not None and value > distinct for value in settings_requested):
        logger.warning(
            "The data has %d distinct usable edits; larger --num-edits settings are cut to it", distinct
        )
    probabilities = (
        config.probabilities if config.probabilities is not None else config.dataset == "counterfact"
    )
    settings = {
        n: build_setting(
            ordered,
            n,
            config.limit_queries,
            probabilities=probabilities,
            evaluated_fraction=config.held_out_subjects,
        )
        for n in numbers
    }
    background = load_background_edits(config, ordered) if config.background else []
    caps = config.caps()

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    loader = model_loader or load_base_model
    model, tokenizer = loader(config.model)
    if config.device is not None:
        model.to(config.device)
    model.eval()
    device = next(model.parameters()).device
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    formatter = QueryFormatter(tokenizer, config.prompt_format)

    result: dict[str, Any] = {
        "config": {
            **{key: value for key, value in asdict(config).items() if key not in ("progress",)},
            "num_edits": settings_requested,
            "num_edits_run": numbers,
            "max_edits": caps,
            "probabilities": probabilities,
            "model_name_or_path": getattr(model, "name_or_path", None) or config.model,
            "usable_examples": len(ordered),
            "usable_edits": distinct,
            "conflicting_examples_dropped": conflicts,
            "background_edits": len(background),
            "environment": _environment(model, device),
        },
        "runs": [],
        "skipped": [],
        "notes": [],
        "complete": False,
    }

    # Locality compares with what the unedited model answers: computed once, before any edit.
    reference_texts = sorted({query.text for setting in settings.values() for query in setting.locality})
    reference: dict[str, str] = {}
    size = config.generation_batch_size
    chunks = [reference_texts[start : start + size] for start in range(0, len(reference_texts), size)]
    for chunk in progress(chunks, config.progress, "unedited answers (locality reference)"):
        answers, _ = generate_answers(
            model, tokenizer, [formatter(text, device) for text in chunk], config.max_new_tokens,
            encoder_decoder=encoder_decoder,
        )  # fmt: skip
        reference.update(zip(chunk, answers, strict=True))
    # Drawdown compares with the unedited model's teacher-forced accuracy on the same queries.
    locality_queries = {query.text: query for setting in settings.values() for query in setting.locality}
    top1 = reference_top1(model, tokenizer, list(locality_queries.values()))
    harness = Harness(model, tokenizer, formatter, reference, device, encoder_decoder, top1)
    pristine = weights_fingerprint(model)

    factory = editable_factory or load_editable_model
    for method_name in config.methods:
        method: Method | None = None
        # Sequential settings are points along one stream of edits (the literature's sequential-editing
        # curves): the run at 100 edits continues from the state after the first 10 instead of starting over.
        stream = _EditStream() if config.mode == "sequential" else None
        for n in numbers:
            cap = caps[method_name]
            if cap is not None and n > cap:
                result["skipped"].append(
                    {
                        "method": method_name,
                        "num_edits": n,
                        "reason": f"above the cap --max-edits {method_name}={cap}",
                    }
                )
                continue
            if method is None:
                method = build_method(method_name, config, model, tokenizer, factory, background)
            reason = method.skip_reason(n, config.mode)
            if reason is not None:
                result["skipped"].append({"method": method_name, "num_edits": n, "reason": reason})
                continue
            run = _run_setting(method, settings[n], config, harness, stream=stream)
            result["runs"].append(run)
            if stream is not None and "error" in run:
                stream = _EditStream()  # _run_setting undid the edits; the next setting starts over
            if stream is None or "error" in run:
                _check_restored(model, pristine, method_name, n, result, on_update)
            if on_update is not None:
                on_update(result)
        if method is not None and stream is not None and stream.applied:
            method.reset()
            _check_restored(model, pristine, method_name, stream.applied, result, on_update)
    if background and any(name != SERAC_METHOD for name in config.methods):
        result["notes"].append(
            f"the {len(background)} --background edits are stored by SERAC only; the other methods apply "
            "just the evaluated edits"
        )
    add_latency_ratios(result["runs"])
    if probabilities:
        unavailable = sorted(
            {
                run["method"]
                for run in result["runs"]
                if (run.get("metrics") or {}).pop("probabilities_unavailable", False)
            }
        )
        if unavailable:
            result["notes"].append(
                f"{', '.join(unavailable)} expose(s) no log-probabilities: P(new)>P(true) is null there"
            )
        if SERAC_METHOD in config.methods:
            result["notes"].append(
                "SERAC's probabilities are routed: in-scope prompts are scored by the counterfactual model "
                "given the edit, others by the base model"
            )
    result["complete"] = True
    return result


def _check_restored(
    model: Any,
    pristine: list[tuple[str, float, float]],
    method_name: str,
    num_edits: int,
    result: dict[str, Any],
    on_update: Callable[[dict[str, Any]], None] | None,
) -> None:
    if weights_fingerprint(model) != pristine:
        if on_update is not None:
            on_update(result)
        raise RuntimeError(
            f"{method_name} left the base model's weights changed after restoring them "
            f"({num_edits} edits); the remaining results would be invalid"
        )


def _run_setting(
    method: Method,
    setting: Setting,
    config: BenchmarkConfig,
    harness: Harness,
    *,
    stream: _EditStream | None = None,
) -> dict[str, Any]:
    """Apply the setting's edits with ``method``, evaluate, and undo them (unless ``stream`` goes on).

    With a ``stream`` (sequential mode), only the edits beyond those the stream already applied are applied,
    the edit time and editor statistics accumulate over the stream, and the edits stay in for the next,
    larger setting; the caller undoes them at the end. On an error the edits are undone at once.
    """
    n = setting.num_edits
    run: dict[str, Any] = {"method": method.name, "num_edits": n, "mode": config.mode}
    keep = False
    try:
        if stream is None or stream.applied == 0:
            _seed_everything(config.seed)
        start = time.perf_counter()
        new_edits = setting.edits if stream is None else setting.edits[stream.applied :]
        if stream is not None and setting.edits[: stream.applied] != stream.edits:
            raise RuntimeError("a sequential setting does not extend the previous one's edits")
        generator, info = method.apply(new_edits, config.mode, config.progress)
        edit_seconds = time.perf_counter() - start
        if stream is not None:
            stream.extend(new_edits, edit_seconds, info)
            edit_seconds, info = stream.seconds, stream.info()
            run["continued_from"] = n - len(new_edits)
        run.update(info)
        run["metrics"] = evaluate(method, generator, setting, config, harness, run)
        if method.name == BASE_METHOD:
            timing = {"edit_seconds_total": None, "edit_setup_seconds": None, "edit_seconds_per_edit": None}
        else:
            # One-time precomputation (the key statistics of ROME and MEMIT, cached on disk afterwards) is
            # reported apart, as in the MEMIT paper: it would otherwise dominate whichever setting runs first.
            setup = float((info.get("editor_stats") or {}).get("stats_seconds") or 0.0)
            setup = min(max(setup, 0.0), edit_seconds)
            timing = {
                "edit_seconds_total": edit_seconds,
                "edit_setup_seconds": setup,
                "edit_seconds_per_edit": (edit_seconds - setup) / max(n, 1),
            }
        run["metrics"].update(timing)
        keep = stream is not None
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as error:
        # One failing editor must not cost the other methods' results; the error is reported in the run.
        logger.exception("%s failed at %d edits", method.name, n)
        run["error"] = f"{type(error).__name__}: {error}"
        run.setdefault("metrics", None)
    finally:
        if not keep:
            method.reset()
    return run


@dataclass
class _EditStream:
    """The edits a sequential run has applied so far, with their accumulated cost."""

    edits: list[Edit] = field(default_factory=list)
    seconds: float = 0.0
    stats: list[dict[str, Any]] = field(default_factory=list)
    last_info: dict[str, Any] = field(default_factory=dict)

    @property
    def applied(self) -> int:
        return len(self.edits)

    def extend(self, edits: Sequence[Edit], seconds: float, info: Mapping[str, Any]) -> None:
        self.edits.extend(edits)
        self.seconds += seconds
        if "editor_stats" in info:
            self.stats.append(dict(info["editor_stats"]))
        self.last_info = dict(info)

    def info(self) -> dict[str, Any]:
        info = dict(self.last_info)
        if self.stats:
            info["editor_stats"] = sum_stats(self.stats)
        return info
