"""Settings, errors and argument checks of the edit store."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

__all__ = [
    "MAX_EDIT_ID",
    "EditStoreConfig",
    "EditStoreError",
    "Embedder",
    "UnknownEditError",
    "check_id_range",
    "check_ids",
    "check_vectors",
]

#: Edit ids are stored as signed 64-bit integers; nothing outside this range can name an edit.
MAX_EDIT_ID = 2**63 - 1


class EditStoreError(ValueError):
    """A store that cannot be opened: a truncated, corrupted, hand-made or newer file, a database built
    for another embedder."""


class UnknownEditError(KeyError):
    """An edit id that the store does not hold."""


class Embedder(Protocol):
    """What the store needs from a sentence embedder (a ``SentenceTransformer`` satisfies it)."""

    def encode(self, sentences: list[str], **kwargs: Any) -> np.ndarray: ...


@dataclass
class EditStoreConfig:
    """Settings of an edit store, saved with it.

    Args:
        embedder_name_or_path: the sentence embedder, recorded so a saved store can be reopened with it.
        exact_max_size: up to this many edits the index is exact (flat inner product); beyond it, IVF.
        ivf_nprobe: inverted lists visited per query once the index is IVF (recall/speed trade-off).
        encode_batch_size: sentences per embedder batch when adding edits or encoding queries.
        sync_interval_s: for a store shared through a file or server, the longest a read waits before
            looking for other processes' changes (0: look on every read).
    """

    embedder_name_or_path: str | None = None
    exact_max_size: int = field(default=50_000, metadata={"help": "largest store searched exactly"})
    ivf_nprobe: int = field(default=16, metadata={"help": "IVF lists probed per query"})
    encode_batch_size: int = field(default=128, metadata={"help": "embedder batch size"})
    sync_interval_s: float = field(default=0.05, metadata={"help": "staleness bound of a shared store"})

    def __post_init__(self) -> None:
        for name in ("exact_max_size", "ivf_nprobe", "encode_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.embedder_name_or_path is not None and not isinstance(self.embedder_name_or_path, str):
            raise ValueError(f"embedder_name_or_path must be a string, got {self.embedder_name_or_path!r}")
        if (
            isinstance(self.sync_interval_s, bool)
            or not isinstance(self.sync_interval_s, (int, float))
            or not math.isfinite(self.sync_interval_s)
            or self.sync_interval_s < 0
        ):
            raise ValueError(f"sync_interval_s must be a finite number >= 0, got {self.sync_interval_s!r}")

    @classmethod
    def from_dict(cls, data: Any) -> EditStoreConfig:
        """Inverse of ``asdict``; unknown or badly typed fields raise ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"an edit store config is a JSON object, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown edit store settings {sorted(unknown)} (written by a newer serac?)")
        try:
            return cls(**data)
        except TypeError as error:
            raise ValueError(str(error)) from None


def check_vectors(vectors: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"{what} hold NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1)
    if len(norms) and float(norms.min()) < 1e-6:
        raise ValueError(
            f"{what} hold an all-zero vector (an embedding with no direction cannot be searched)"
        )


def check_ids(edit_ids: Any) -> list[int]:
    """Edit ids as Python ints: one id or an iterable of them, NumPy integers included."""
    if isinstance(edit_ids, np.ndarray):
        if edit_ids.dtype.kind not in "iu":
            raise TypeError(f"edit ids are integers, got an array of {edit_ids.dtype}")
        edit_ids = edit_ids.reshape(-1).tolist()
    elif isinstance(edit_ids, (int, np.integer)) and not isinstance(edit_ids, bool):
        edit_ids = [edit_ids]
    elif isinstance(edit_ids, (str, bytes)):
        raise TypeError("edit ids are integers, got a string")
    try:
        edit_ids = list(edit_ids)
    except TypeError:
        raise TypeError(f"edit ids are integers, got {type(edit_ids).__name__}") from None
    for edit_id in edit_ids:
        if isinstance(edit_id, bool) or not isinstance(edit_id, (int, np.integer)):
            raise TypeError(f"edit ids are integers, got {type(edit_id).__name__}")
    return [int(edit_id) for edit_id in edit_ids]


def check_id_range(edit_ids: list[int]) -> None:
    """Ids no database can hold are unknown ids, reported as such rather than as a driver's OverflowError."""
    for edit_id in edit_ids:
        if not 0 <= edit_id <= MAX_EDIT_ID:
            raise UnknownEditError(
                f"no edit with id {edit_id!r} in the store (edit ids run from 0 to 2**63 - 1)"
            )
