"""Unusual new answers, for training a counterfactual model to copy an edit's answer exactly as written.

Real edits carry answers that no fluent sentence would produce: full dates ("19 July 1809"), long official names
("Charles Lennox, 1st Earl of Richmond"), numbered names ("1 FC Nürnberg"), and the typos of the people who wrote
them ("United States States Railroad Administration", "mezzo-oprano"). A small model trained only on clean,
short answers writes what it expects instead (the year it knows, the spelling it knows), and the edit is lost.
:func:`with_unusual_targets` gives a share of the training edits such answers, replaced everywhere the example
states them, so the model learns that the edit's answer is copied, not corrected.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from serac.data.schema import EditExample

__all__ = ["unusual_target", "with_unusual_targets"]

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_TITLES = ("Earl", "Duke", "Baron", "Count", "Bishop")
_ORDINALS = ("1st", "2nd", "3rd", "4th")
_SUFFIXES = ("Administration", "Company", "University", "Records", "Society", "species")
_STRAY = ("-- ", "-", "'", ". ")


def unusual_target(target: str, rng: random.Random, others: Sequence[str]) -> str:
    """A variant of ``target`` of one of the kinds real edits hold; ``others`` are answers to borrow words from.

    Example:
        >>> unusual_target("Croatia", random.Random(1), ["Paris"])
        '28 February 1761'
        >>> unusual_target("Croatia", random.Random(6), ["Paris"])
        'Croatia, 1st Count of Paris'
    """
    words = target.split()
    draw = rng.random()
    if draw < 0.15:
        return f"{rng.randint(1, 28)} {rng.choice(_MONTHS)} {rng.randint(1500, 2024)}"
    if draw < 0.3 and len(words) >= 2:  # a doubled word
        index = rng.randrange(len(words))
        return " ".join([*words[: index + 1], words[index], *words[index + 1 :]])
    if draw < 0.45 and len(target) > 5:  # stray punctuation inside a word or between words
        index = rng.randrange(2, len(target) - 1)
        return target[:index] + rng.choice(_STRAY) + target[index:]
    if draw < 0.6 and len(target) > 6:  # the last letters cut off
        return target[: rng.randrange(len(target) - 3, len(target))]
    if draw < 0.7 and len(target) > 4:  # a letter dropped
        index = rng.randrange(1, len(target) - 1)
        return target[:index] + target[index + 1 :]
    if draw < 0.8:
        return f"{target}, {rng.choice(_ORDINALS)} {rng.choice(_TITLES)} of {rng.choice(others)}"
    if draw < 0.9:
        return f"{rng.randint(1, 9)} {target}"
    return f"{target} {rng.choice(others)} {rng.choice(_SUFFIXES)}"


def with_unusual_targets(
    examples: Sequence[EditExample], fraction: float, seed: int = 0
) -> list[EditExample]:
    """``examples`` with the new answer of about ``fraction`` of them replaced by :func:`unusual_target`'s.

    The replacement goes everywhere the example states the answer: the edit's target and statement, the
    example's statement, and the in-scope queries whose answer it is. Only examples whose edit has a target equal
    to their answer change; their multi-hop questions, whose answers the old target led to, are dropped.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    examples = list(examples)
    if fraction == 0.0:
        return examples
    rng = random.Random(f"unusual-targets:{seed}")
    others = [example.answer for example in examples if example.answer]
    changed = []
    for example in examples:
        target = example.answer
        if not target or example.edit.target != target or rng.random() >= fraction:
            changed.append(example)
            continue
        new = unusual_target(target, rng, others)
        edit = replace(example.edit, target=new, statement=_restate(example.edit.statement, target, new))
        in_scope = tuple(
            replace(query, answer=new) if query.answer == target else query for query in example.in_scope
        )
        statement = _restate(example.statement, target, new)
        changed.append(replace(example, edit=edit, in_scope=in_scope, statement=statement, portability=()))
    return changed


def _restate(text: str | None, old: str, new: str) -> str | None:
    return text.replace(old, new) if text else text
