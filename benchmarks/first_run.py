"""A new user's first run: how long training the default parts takes, for the shipped recipe and the one before.

Run: ``python benchmarks/first_run.py [--recipes 7,6] [--output first_run.json]``

Each recipe runs as ``default_parts_dir()`` does on a first run, in a fresh process with an empty
``$SERAC_CACHE`` (so the GGUF conversion of the base model is included), one after the other: run it on an
otherwise idle machine. Printed per recipe: the wall-clock seconds, the estimate the run announced before
training, whether standard output stayed empty, and the held-out figures of the training reports. Keep the
trained folders with ``--keep DIR`` (``DIR/default-v<version>``) to measure their quality.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serac.training.recipe import DEFAULT_PARTS_VERSION

#: Earlier recipes, as they were, by version (see ``serac.training.recipe.DefaultRecipe``).
_VERSION_5_COUNTERFACTUAL_DATA = {
    "counterfactual_answer_style": "voice",
    "counterfactual_unusual_target_fraction": 0.0,
    "counterfactual_question_fraction": 0.0,
}
#: Up to version 7 the counterfactual model's top blocks were trained whole.
_BLOCKS_TRAINED_WHOLE = {"counterfactual_low_rank": None, "counterfactual_learning_rate": 3e-4}
EARLIER_RECIPES = {
    "7": {"version": 7, **_BLOCKS_TRAINED_WHOLE},
    "6": {"version": 6, "indirect_phrasings": 0, **_BLOCKS_TRAINED_WHOLE},
    "5": {"version": 5, "indirect_phrasings": 0, **_BLOCKS_TRAINED_WHOLE, **_VERSION_5_COUNTERFACTUAL_DATA},
    "4": {
        "version": 4,
        "counterfactual_low_rank": None,
        "scope_steps": 800,
        "scope_learning_rate": 3e-5,
        "scope_beta": 0.5,
        "scope_eval_steps": 200,
        "counterfactual_steps": 120,
        "counterfactual_learning_rate": 1e-4,
        "counterfactual_blocks": None,
        "counterfactual_eval_generations": 200,
        "counterfactual_eval_steps": 200,
        "indirect_phrasings": 0,
        **_VERSION_5_COUNTERFACTUAL_DATA,
    },
}

RUN = """
import json, sys
from dataclasses import replace
from serac.training.recipe import DEFAULT_RECIPE, default_parts_dir
recipe = replace(DEFAULT_RECIPE, **json.loads(sys.argv[1]))
default_parts_dir(recipe=recipe)
"""


def run_recipe(fields: dict, keep: Path | None) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="serac-first-run-"))
    environment = {**os.environ, "SERAC_CACHE": str(cache)}
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", RUN, json.dumps(fields)],
        env=environment,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"recipe {fields} failed:\n{completed.stderr[-4000:]}")
    announced = next(
        (line for line in completed.stderr.splitlines() if line.startswith("serac: training")), ""
    )
    estimate = re.search(r"About (\d+) (min|s)", announced)
    parts = next((cache / "parts").glob("default-v*"))
    reports = {
        part: json.loads((parts / part / "training_report.json").read_text())
        for part in ("scope_classifier", "counterfactual_model")
    }
    result = {
        "recipe": fields,
        "seconds": round(seconds, 1),
        "announced": announced,
        "estimate_seconds": None
        if estimate is None
        else int(estimate.group(1)) * (60 if estimate.group(2) == "min" else 1),
        "stdout": completed.stdout,
        "stderr_lines": len(completed.stderr.splitlines()),
        "scope_held_out": reports["scope_classifier"]["held_out_metrics"],
        "scope_threshold": reports["scope_classifier"]["threshold_choice"]["threshold"],
        "counterfactual_held_out": reports["counterfactual_model"]["held_out_metrics"],
    }
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(keep / parts.name, ignore_errors=True)
        shutil.copytree(parts, keep / parts.name)
    shutil.rmtree(cache, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--recipes", default="7,6", help="recipe versions, in order (7: shipped; 6, 5 and 4: earlier)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="copy each trained folder here")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    versions = [version.strip() for version in args.recipes.split(",")]
    known = {str(DEFAULT_PARTS_VERSION), *EARLIER_RECIPES}
    if unknown := [version for version in versions if version not in known]:
        parser.error(f"unknown recipe versions {unknown}; known: {sorted(known)}")
    results = []
    for version in versions:
        fields = EARLIER_RECIPES.get(version, {})
        result = run_recipe(fields, args.keep)
        results.append(result)
        held_out = result["counterfactual_held_out"]
        print(
            f"recipe v{fields.get('version', DEFAULT_PARTS_VERSION)}: {result['seconds'] / 60:.1f} min "
            f"(announced: {result['estimate_seconds']} s); stdout {len(result['stdout'])} chars; "
            f"scope held-out recall {result['scope_held_out']['recall']:.3f}, "
            f"false positives {result['scope_held_out']['false_positive_rate']:.3f} "
            f"(threshold {result['scope_threshold']:.3f}); counterfactual held-out answer match "
            f"{held_out.get('answer_match', float('nan')):.3f} of {held_out.get('pairs', 0)}",
            flush=True,
        )
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
