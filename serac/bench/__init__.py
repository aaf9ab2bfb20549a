"""The benchmark comparing SERAC with weight editors on the same base model, edits and queries.

* :mod:`~serac.bench.config`: the settings (:class:`BenchmarkConfig`), checked before any model loads;
* :mod:`~serac.bench.data`: the data views: examples in edit order, and per setting its edits and queries;
* :mod:`~serac.bench.methods`: the compared methods behind the :class:`~serac.editors.Editor` interface,
  SERAC (:class:`SeracEditor`) and the unedited model among them;
* :mod:`~serac.bench.generation`, :mod:`~serac.bench.evaluation`, :mod:`~serac.bench.latency`: answering and
  scoring the queries, and the latency relative to the base model;
* :mod:`~serac.bench.runner`: :func:`run_benchmark`;
* :mod:`~serac.bench.report`: the Markdown table and the plots; :mod:`~serac.bench.cli`: ``serac bench``.

The studies behind the README's numbers are scripts outside the package, in the repository's ``benchmarks/``
folder (``python benchmarks/parts_quality.py`` and so on).

Example:
    >>> from serac.bench import BenchmarkConfig, run_benchmark
    >>> result = run_benchmark(BenchmarkConfig(methods=("base", "serac", "rome"), num_edits=(1, 10)))  # doctest: +SKIP
"""

from serac.bench.config import BenchmarkConfig, BenchmarkError, available_methods
from serac.bench.methods import SeracEditor, UneditedModel
from serac.bench.runner import run_benchmark

__all__ = [
    "BenchmarkConfig",
    "BenchmarkError",
    "SeracEditor",
    "UneditedModel",
    "available_methods",
    "run_benchmark",
]
