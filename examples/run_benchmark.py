"""Compare SERAC with other editors on the same edits with `serac bench`, and print its table.

    python examples/run_benchmark.py                                  # offline defaults, synthetic edits
    python examples/run_benchmark.py --base-model PATH --editor PATH --methods base,cache,serac,ft,rome

The full runs and their measured results are in benchmarks/README.md; this one is small enough for a laptop.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", help="Hugging Face id or path (default: the offline SmolLM2)")
    parser.add_argument("--editor", help="a SERAC folder (default: the offline default parts)")
    parser.add_argument("--methods", default="base,cache,serac", help="comma list (see serac bench --help)")
    parser.add_argument("--num-edits", default="1,10", help="comma list of edit counts")
    parser.add_argument("--limit-queries", type=int, default=10, help="queries per metric and setting")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--output", default="benchmark-results/results.json", help="results JSON")
    args = parser.parse_args()

    output = Path(args.output)
    command = [
        sys.executable, "-m", "serac", "bench",  # the same as `serac bench`
        "--dataset", "synthetic",  # invented entities: no download; mquake, zsre, counterfact read files
        "--methods", args.methods,
        "--num-edits", args.num_edits,
        "--limit-queries", str(args.limit_queries),
        "--max-new-tokens", str(args.max_new_tokens),
        "--output", str(output),
        "--no-plots", "--no-progress",  # without --no-plots: one PNG per metric beside the JSON
    ]  # fmt: skip
    command += ["--model", args.base_model] if args.base_model else []
    command += ["--serac-path", args.editor] if args.editor else []
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)

    # serac bench printed its table; the same table is in results.md beside the JSON, which holds every
    # metric of every run (here: efficacy, locality and the median query time).
    result = json.loads(output.read_text())
    for run in result["runs"]:
        metrics = run["metrics"]
        print(
            f"{run['method']:>6} x {run['num_edits']:>3} edits: efficacy {metrics['efficacy']}, "
            f"locality {metrics['locality']}, p50 {metrics['query_ms_p50']:.1f} ms"
        )


if __name__ == "__main__":
    main()
