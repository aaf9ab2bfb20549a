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

__all__ = ["Route", "expand_rows", "merge_rows", "select_rows", "split_by_scope"]


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
