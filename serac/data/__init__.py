"""Edit datasets: one schema, loaders for public benchmarks, a synthetic generator, hard-negative mining.

* :mod:`serac.data.schema`: :class:`EditExample` and its query types;
* :mod:`serac.data.loaders`: MQuAKE, zsRE, CounterFact and this package's JSON-lines format;
* :mod:`serac.data.synthetic`: a deterministic generator of invented-entity edit data (no download), with
  the relations it phrases in :mod:`serac.data.relations`;
* :mod:`serac.data.mining`: nearest-neighbour hard negatives from the sentence embedder;
* :mod:`serac.data.pairs`: ``datasets.Dataset`` views for training the scope classifier and the
  counterfactual model.

Example:
    >>> from serac.data import generate_synthetic_examples, scope_pairs
    >>> examples = generate_synthetic_examples(20, seed=0)
    >>> pairs = scope_pairs(examples, seed=0)
    >>> sorted(pairs.column_names)
    ['edit_query', 'edit_text', 'kind', 'label', 'query']
"""

from serac.data.loaders import (
    DATA_KINDS,
    load_counterfact,
    load_examples,
    load_examples_jsonl,
    load_mquake,
    load_zsre,
    save_examples_jsonl,
)
from serac.data.mining import mine_hard_negatives
from serac.data.pairs import (
    COUNTERFACTUAL_KINDS,
    counterfactual_pairs,
    edits_from_column,
    examples_to_dataset,
    scope_pairs,
)
from serac.data.relations import RELATIONS, Relation
from serac.data.schema import (
    HARD_OUT_OF_SCOPE_KINDS,
    IN_SCOPE_KINDS,
    OUT_OF_SCOPE_KINDS,
    EditExample,
    InScopeQuery,
    OutOfScopeQuery,
    PortabilityQuestion,
)
from serac.data.splits import held_out_subject, split_by_subject
from serac.data.synthetic import SyntheticDataConfig, generate_synthetic_examples

__all__ = [
    "COUNTERFACTUAL_KINDS",
    "DATA_KINDS",
    "HARD_OUT_OF_SCOPE_KINDS",
    "IN_SCOPE_KINDS",
    "OUT_OF_SCOPE_KINDS",
    "RELATIONS",
    "EditExample",
    "InScopeQuery",
    "OutOfScopeQuery",
    "PortabilityQuestion",
    "Relation",
    "SyntheticDataConfig",
    "counterfactual_pairs",
    "edits_from_column",
    "examples_to_dataset",
    "generate_synthetic_examples",
    "held_out_subject",
    "load_counterfact",
    "load_examples",
    "load_examples_jsonl",
    "load_mquake",
    "load_zsre",
    "mine_hard_negatives",
    "save_examples_jsonl",
    "scope_pairs",
    "split_by_subject",
]
