"""Where the server's edits live, as ``/health`` and the start-up log describe it.

``--store`` takes anything :meth:`EditStore.open <serac.store.EditStore.open>` takes, with its one policy:

* nothing: the edits stay in memory (starting from the SERAC folder's saved edits); edits posted while the
  server runs are lost when it stops or crashes;
* a database URL (``sqlite:///edits.db``, ``postgresql://...``) or a SQLite file path: every change is one
  transaction, durable when it is acknowledged, and shared with every process that opens the same database.
  A database never written before starts with the folder's saved edits; one that holds edits is used as is;
* a snapshot file (``edits.safetensors`` or ``file://...``): read at start and rewritten atomically after
  every change, before the change is acknowledged. One process only; each write rewrites the whole file.
"""

from __future__ import annotations

from typing import Any

from serac.store import EditStore

__all__ = ["describe", "description"]

_DESCRIPTIONS = {
    "memory": "in memory: edits posted are lost when the server stops",
    "file": "a snapshot file, rewritten after every change",
    "database": "a database, one transaction per change",
}


def describe(store: EditStore) -> dict[str, Any]:
    """What ``/health`` reports about the store."""
    return {"kind": store.kind, "durable": store.durable, "edits": len(store)}


def description(store: EditStore) -> str:
    """Where the edits live, in words, for the start-up log."""
    return _DESCRIPTIONS[store.kind]
