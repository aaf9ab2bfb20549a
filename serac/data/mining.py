"""Hard-negative mining with the sentence embedder, as the SERAC paper did for its scope classifier.

For each edit, the queries of *other* edits that lie nearest to the edit's text in embedding space are
the ones the edit store will retrieve for it, so they are exactly the out-of-scope queries the scope
classifier must learn to reject. :func:`mine_hard_negatives` adds them to each example as out-of-scope
queries of kind ``embedding_neighbor``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serac import offline
from serac.data.schema import EditExample, OutOfScopeQuery
from serac.edits import mentions_subject, normalize_text

logger = logging.getLogger(__name__)

__all__ = ["mine_hard_negatives"]


@dataclass(frozen=True)
class _Candidate:
    text: str
    owner: int  # index of the example the query belongs to


def _fact_key(example: EditExample) -> tuple[str, str] | None:
    """(subject, relation) of a prompt edit when both are known: two edits of one fact are not negatives."""
    if example.edit.subject is None or example.relation is None:
        return None
    return normalize_text(example.edit.subject), example.relation


def mine_hard_negatives(
    examples: Sequence[EditExample],
    embedder: Any | None = None,
    *,
    num_negatives: int = 4,
    candidates_per_example: int | None = 3,
    seed: int = 0,
    batch_size: int = 128,
    chunk_size: int = 1024,
    subject_match: bool = False,
) -> list[EditExample]:
    """Add each edit's nearest queries of other edits as out-of-scope queries (kind ``embedding_neighbor``).

    Candidates are queries of all other examples: up to ``candidates_per_example`` of each example's in-scope
    and out-of-scope queries (a seeded sample; ``None``: all of them, which costs one embedding per query).
    A candidate is skipped when
    it is textually one of this example's own queries, or when it belongs to an example that edits the
    same prompt or the same (subject, relation) fact, since such a query is in scope, not a negative.

    Args:
        examples: the examples to enrich.
        embedder: a sentence embedder with ``encode`` (default: :func:`serac.offline.load_embedder`); use
            the one the edit store uses so the negatives are the ones retrieval will actually surface.
        num_negatives: mined negatives per example.
        candidates_per_example: queries of each example that are candidates (``None``: all).
        seed: seeds the sample of candidates.
        batch_size: sentences per ``encode`` batch.
        chunk_size: edits scored against all candidates at once (bounds memory).
        subject_match: for an edit with a subject, mine only queries that name it: with the scope
            classifier's subject match on, no other query reaches the classifier with this edit.

    Returns:
        New examples, in the same order, each with up to ``num_negatives`` more out-of-scope queries.
    """
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
    if candidates_per_example is not None and candidates_per_example < 1:
        raise ValueError(f"candidates_per_example must be >= 1 or None, got {candidates_per_example}")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be >= 1")
    examples = list(examples)
    for example in examples:
        if not isinstance(example, EditExample):
            raise TypeError(f"examples must be EditExample objects, got {type(example).__name__}")
    if num_negatives == 0 or len(examples) < 2:
        return examples
    if embedder is None:
        embedder = offline.load_embedder()

    rng = random.Random(f"mining:{seed}")
    candidates: list[_Candidate] = []
    seen: set[tuple[str, int]] = set()
    for owner, example in enumerate(examples):
        queries = [*example.in_scope, *example.out_of_scope]
        if candidates_per_example is not None and len(queries) > candidates_per_example:
            queries = rng.sample(queries, candidates_per_example)
        for query in queries:
            key = (normalize_text(query.text), owner)
            if key not in seen:
                seen.add(key)
                candidates.append(_Candidate(query.text, owner))
    if not candidates:
        return examples

    def encode(texts: list[str]) -> np.ndarray:
        return offline.embed(embedder, texts, batch_size=batch_size)

    logger.info("Mining hard negatives: %d edits against %d queries", len(examples), len(candidates))
    edit_vectors = encode([example.edit.text for example in examples])
    candidate_vectors = encode([candidate.text for candidate in candidates])
    owners = np.array([candidate.owner for candidate in candidates])
    edit_keys = [example.edit.key for example in examples]
    fact_keys = [_fact_key(example) for example in examples]

    # Look a little deeper than needed: some of the nearest candidates are filtered out below.
    # With the subject filter most neighbours are skipped, so look deeper still.
    depth = min(len(candidates), num_negatives * (32 if subject_match else 4) + 16)
    enriched: list[EditExample] = []
    for start in range(0, len(examples), chunk_size):
        scores = edit_vectors[start : start + chunk_size] @ candidate_vectors.T
        for row, similarities in enumerate(scores):
            index = start + row
            similarities[owners == index] = -np.inf
            top = (
                np.argpartition(-similarities, depth - 1)[:depth]
                if depth < len(similarities)
                else np.arange(len(similarities))
            )
            top = top[np.argsort(-similarities[top], kind="stable")]
            example = examples[index]
            own_texts = {normalize_text(query.text) for query in (*example.in_scope, *example.out_of_scope)}
            own_texts.add(example.edit.key)
            mined: list[OutOfScopeQuery] = []
            for position in top:
                if not np.isfinite(similarities[position]):
                    break
                candidate = candidates[position]
                other = candidate.owner
                if edit_keys[other] == edit_keys[index] or (
                    fact_keys[index] is not None and fact_keys[other] == fact_keys[index]
                ):
                    continue
                key = normalize_text(candidate.text)
                if key in own_texts:
                    continue
                subject = example.edit.subject
                if subject_match and subject is not None and not mentions_subject(subject, candidate.text):
                    continue
                own_texts.add(key)
                mined.append(OutOfScopeQuery(candidate.text, "embedding_neighbor"))
                if len(mined) == num_negatives:
                    break
            enriched.append(example.with_queries(out_of_scope=mined))
    return enriched
