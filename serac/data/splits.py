"""Splitting edit examples by subject, so that a held-out edit's entity was never seen in training."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from serac.data.schema import EditExample
from serac.edits import name_words

__all__ = ["held_out_subject", "split_by_subject"]


def held_out_subject(example: EditExample, fraction: float, seed: int = 0) -> bool:
    """Whether ``example`` falls on the held-out side of a subject split.

    The side depends only on the subject's words (case and accents folded), the fraction and the seed, so
    one entity lands on the same side in every file and every run. An edit without a subject is split by
    its query instead.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    key = " ".join(name_words(example.edit.subject or example.edit.query))
    digest = hashlib.sha256(f"serac-subject-split:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_by_subject(
    examples: Sequence[EditExample], fraction: float = 0.2, seed: int = 0
) -> tuple[list[EditExample], list[EditExample]]:
    """``(train, held_out)``: about ``fraction`` of the subjects, with all their edits, held out.

    Example:
        >>> from serac.data import generate_synthetic_examples
        >>> train, held_out = split_by_subject(generate_synthetic_examples(200), 0.2)
        >>> {e.edit.subject for e in train} & {e.edit.subject for e in held_out}
        set()
    """
    train, held_out = [], []
    for example in examples:
        (held_out if held_out_subject(example, fraction, seed) else train).append(example)
    return train, held_out
