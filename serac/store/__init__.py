"""The edit store: every edit kept explicitly, with stable ids, indexed in FAISS over sentence embeddings.

One concept per module: :mod:`~serac.store.edit_store` (the :class:`EditStore`), :mod:`~serac.store.config`
(its settings and errors), :mod:`~serac.store.database` (the SQLite/PostgreSQL source of truth),
:mod:`~serac.store.index` (the FAISS indexes) and :mod:`~serac.store.snapshot` (the portable file).

Example:
    >>> from serac.store import EditStore
    >>> store = EditStore.open("sqlite:///edits.db")  # doctest: +SKIP
"""

from serac.store.config import EditStoreConfig, EditStoreError, Embedder, UnknownEditError
from serac.store.edit_store import EditResult, EditStore
from serac.store.snapshot import STORE_FILE_NAME

__all__ = [
    "STORE_FILE_NAME",
    "EditResult",
    "EditStore",
    "EditStoreConfig",
    "EditStoreError",
    "Embedder",
    "UnknownEditError",
]
