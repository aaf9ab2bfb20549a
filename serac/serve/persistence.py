"""Where the server's edits live, and what makes an acknowledged edit durable.

``--store`` takes:

* nothing: the edits stay in memory (starting from the editor folder's saved edits); edits posted while the
  server runs are lost when it stops or crashes;
* a database URL (``sqlite:///edits.db``, ``postgresql://...``): handed to the edit store's own constructor,
  which owns the transactions; this needs a ``serac`` whose ``EditStore`` takes a ``url``;
* a file path (or ``file://`` URL): the edit store's safetensors file, read at start and written
  atomically (``EditStore.save``) after every change, before the change is acknowledged. One process only;
  each write rewrites the whole file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serac.store import EditStore

logger = logging.getLogger(__name__)

__all__ = ["StoreBinding", "open_store"]

DATABASE_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")


@dataclass
class StoreBinding:
    """An edit store and how its changes are made durable.

    Args:
        store: the edit store the server routes with.
        kind: ``"memory"``, ``"file"`` or ``"database"``.
        path: the store file (``kind == "file"``).
    """

    store: EditStore
    kind: str
    path: Path | None = None
    description: str = field(default="")

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    def commit(self) -> None:
        """Make the store's current state durable; called after each change, before acknowledging it."""
        if self.kind == "file":
            assert self.path is not None  # set by open_store for file stores
            self.store.save_pretrained(self.path)


def open_store(spec: str | None, current: EditStore) -> StoreBinding:
    """The store named by ``--store`` (see the module docstring); ``current`` is the editor's own store.

    The new store reuses ``current``'s embedder and settings, so edits are embedded as the scope classifier
    was trained to read them.
    """
    if spec is None:
        return StoreBinding(
            current, "memory", description="in memory: edits posted are lost when the server stops"
        )
    embedder = getattr(current, "embedder", None)
    config = getattr(current, "config", None)
    if len(current):
        logger.warning("--store is given: the %d edits saved in the editor folder are not used", len(current))
    scheme, separator, rest = spec.partition("://")
    if separator and scheme.split("+")[0].lower() in DATABASE_SCHEMES:
        store = EditStore(embedder=embedder, config=config, url=spec)
        return StoreBinding(store, "database", description=f"database store ({scheme})")
    if separator and scheme.lower() != "file":
        raise ValueError(
            f"--store: unknown URL scheme {scheme!r}; use a file path or one of {DATABASE_SCHEMES}"
        )
    path = Path(rest if separator else spec).expanduser()
    if path.exists():
        store = EditStore.from_pretrained(path, embedder, config)
        logger.info("Opened the edit store file %s (%d edits)", path, len(store))
    else:
        store = EditStore(embedder, config)
        # Writing the empty store now fails early on a path the server could not write later.
        store.save_pretrained(path)
        logger.info("Created the edit store file %s", path)
    return StoreBinding(store, "file", path=path, description=f"store file {path}")


def describe(binding: StoreBinding) -> dict[str, Any]:
    """What ``/health`` reports about the store."""
    return {"kind": binding.kind, "durable": binding.durable, "edits": len(binding.store)}
