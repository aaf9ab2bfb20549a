"""Pure routing decisions and the merging of routed outputs; no models here.

:class:`~serac.modeling.EditableModel` splits a batch by scope, sends the parts to the base model and to the
counterfactual model, and uses these functions to put the rows back together in the original order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from serac.scope import ScopeDecision

__all__ = ["AnswerForcing", "Route", "expand_rows", "merge_rows", "select_rows", "split_by_scope"]


@dataclass(frozen=True)
class Route:
    """Which rows of a batch go where: indices into the batch, each list in increasing order."""

    base_rows: list[int]
    edited_rows: list[int]

    @property
    def all_base(self) -> bool:
        return not self.edited_rows


def split_by_scope(decisions: Sequence[ScopeDecision]) -> Route:
    """Rows in scope of some edit go to the counterfactual model, the others to the base model."""
    base_rows = [row for row, decision in enumerate(decisions) if not decision.in_scope]
    edited_rows = [row for row, decision in enumerate(decisions) if decision.in_scope]
    return Route(base_rows=base_rows, edited_rows=edited_rows)


def select_rows(kwargs: Mapping[str, Any], rows: Sequence[int], batch_size: int) -> dict[str, Any]:
    """Keep ``rows`` of every per-row tensor in ``kwargs`` (first dimension == ``batch_size``)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    selected = {}
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch_size:
            selected[key] = value.index_select(0, index.to(value.device))
        else:
            selected[key] = value
    return selected


def expand_rows(rows: Sequence[int], copies: int) -> list[int]:
    """Output row indices of input rows when each input row yields ``copies`` sequences."""
    return [row * copies + copy for row in rows for copy in range(copies)]


def merge_rows(
    parts: Sequence[tuple[Sequence[int], torch.Tensor]], num_rows: int, pad_token_id: int
) -> torch.Tensor:
    """Scatter row blocks back into one ``(num_rows, width)`` tensor, right-padded with ``pad_token_id``.

    ``parts`` holds ``(row indices, sequences)`` pairs; together the indices cover ``range(num_rows)`` once.
    Right padding after the end of a sequence is what ``generate()`` itself does for rows that finish early.
    """
    seen = sorted(row for rows, _ in parts for row in rows)
    if seen != list(range(num_rows)):
        raise ValueError(f"row indices {seen} do not cover the batch of {num_rows} rows exactly once")
    nonempty = [(rows, sequences) for rows, sequences in parts if len(rows)]
    width = max(sequences.shape[1] for _, sequences in nonempty)
    reference = nonempty[0][1]
    merged = torch.full((num_rows, width), pad_token_id, dtype=reference.dtype, device=reference.device)
    for rows, sequences in nonempty:
        if len(rows) != sequences.shape[0]:
            raise ValueError(f"{len(rows)} row indices for {sequences.shape[0]} sequences")
        merged[torch.as_tensor(list(rows), device=merged.device), : sequences.shape[1]] = sequences.to(
            merged.device
        )
    return merged


class AnswerForcing:
    """A ``generate()`` logits processor that makes the edited rows of a batch write their new answers.

    Args:
        answers: for each edited input row, one or more token sequences (answer and end-of-sequence); when
            ``generate()`` expands a row into several sequences (sampling with ``num_return_sequences``,
            beams), sequence ``j`` of the row gets ``answers[row][j % len(answers[row])]``.
        batch_size: rows of the caller's input.
        pad_token_id: forced once a row's answer is written, for a generation with no end-of-sequence token.

    Every other row is left untouched, so the base model's generation loop (its lengths, stopping criteria,
    streamers, output format) applies to edited and unedited rows alike.
    """

    def __init__(self, answers: Mapping[int, Sequence[Sequence[int]]], batch_size: int, pad_token_id: int):
        if any(not copies for copies in answers.values()):
            raise ValueError("every edited row needs at least one answer")
        self.answers = {row: [list(tokens) for tokens in copies] for row, copies in answers.items()}
        self.batch_size = batch_size
        self.pad_token_id = pad_token_id
        self._start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # The first call sees the sequences as generation starts; later steps are counted from there.
        if self._start is None:
            self._start = input_ids.shape[1]
        step = input_ids.shape[1] - self._start
        factor = max(scores.shape[0] // self.batch_size, 1)
        scores = scores.clone()
        for row, copies in self.answers.items():
            for copy in range(factor):
                tokens = copies[copy % len(copies)]
                token = tokens[step] if step < len(tokens) else self.pad_token_id
                index = row * factor + copy
                scores[index, :] = -float("inf")
                scores[index, token] = 0.0
        return scores
