"""The history of retired edits: superseding never deletes an edit.

An edit that a newer one supersedes (the same prompt in :meth:`EditStore.add`, the same fact in
:meth:`~serac.memory.EditMemory.edit`) is *retired*: it leaves the live edits and the index, and is kept in
the database's history with the id of the edit that retired it. :meth:`HistoryMixin.retired` lists the
history and :meth:`HistoryMixin.restore` brings edits back under their own ids. :class:`EditResult` is what
an edit call returns: its ids, and the ids it retired.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from serac.edits import Edit
from serac.store.config import UnknownEditError, check_id_range, check_ids
from serac.store.database import key_digest, loads_edit

logger = logging.getLogger(__name__)

__all__ = ["EditResult", "HistoryMixin"]


class EditResult(list):
    """The ids an edit call returns, one per edit given, in order: a ``list`` of ints, as before, that also
    says which stored edits the call retired.

    Every id is that of a live edit: an edit that another edit of the same call superseded gets the id of
    the edit that now stands for it. ``retired`` lists the ids of the edits the call moved to the store's
    history (:meth:`EditStore.retired`; :meth:`EditStore.restore` undoes it).

    Example:
        >>> result = EditResult([3, 4], retired=[1])
        >>> result == [3, 4], result.retired
        (True, [1])
    """

    def __init__(self, ids: Iterable[int] = (), *, retired: Iterable[int] = ()) -> None:
        super().__init__(ids)
        self.retired: list[int] = sorted(retired)


class HistoryMixin:
    """The history methods of :class:`~serac.store.EditStore`, which holds the database (``_db``), the lock
    and ``_after_write`` they use (as ``GenerationMixin`` gives a model its ``generate``)."""

    _db: Any
    lock: Any

    def retire(self, retired_by: dict[int, int | None]) -> list[int]:
        """Move live edits to the history, each with the id of the edit that retired it (``None``: none), in
        one transaction; returns the ids retired (ids no longer live are skipped). :meth:`restore` undoes it.

        Superseding calls this; a retired edit no longer answers queries but is never deleted.
        """
        pairs = {int(edit_id): (None if by is None else int(by)) for edit_id, by in dict(retired_by).items()}
        check_ids(list(pairs))
        check_ids([by for by in pairs.values() if by is not None])
        if not pairs:
            return []
        with self.lock:
            start_seq, changes = self._db.retire(pairs)
            self._after_write(start_seq, changes)
        return changes.retired

    def retired(self) -> list[tuple[int, Edit, int | None]]:
        """The history of retired edits: ``(id, edit, retired_by)`` in id order, where ``retired_by`` is the
        id of the edit that superseded it (``None`` if none was recorded; that edit may have been removed or
        retired since)."""
        with self.lock:  # an in-memory database is one connection, shared with writers
            rows = self._db.retired()
        return [(row.id, loads_edit(row.edit), row.retired_by) for row in rows]

    def restore(self, edit_ids: int | Iterable[int]) -> EditResult:
        """Bring retired edits back under their ids, in one transaction; returns their ids, with ``retired``
        listing the live edits that had to leave for them.

        A live edit of the same prompt as a restored one is retired in its place (undoing a re-edit); a live
        edit of the same fact in other words stays, and both answer. Every id is checked first: one that is
        not in the history raises :class:`UnknownEditError` and restores nothing.
        """
        unique = sorted(set(check_ids(edit_ids)))
        if not unique:
            return EditResult()
        check_id_range(unique)
        with self.lock:
            rows = {row.id: row for row in self._db.retired(unique)}
            missing = [edit_id for edit_id in unique if edit_id not in rows]
            if missing:
                state = "live" if missing[0] in self else "not in the store"
                raise UnknownEditError(
                    f"edit {missing[0]!r} is not a retired edit (it is {state}); nothing was restored"
                )
            digests = {edit_id: key_digest(loads_edit(rows[edit_id].edit).key) for edit_id in unique}
            try:
                start_seq, changes = self._db.restore(digests)
            except KeyError as error:  # restored or purged by another process meanwhile
                raise UnknownEditError(
                    f"edit {error.args[0][0]!r} is not a retired edit; nothing was restored"
                ) from None
            self._after_write(start_seq, changes)
        if changes.retired:
            logger.warning(
                "Restoring %s retired %d live edit(s) of the same prompt to the history: %s",
                unique,
                len(changes.retired),
                changes.retired,
            )
        return EditResult(unique, retired=changes.retired)

    def _unknown(self, missing: list[int]) -> UnknownEditError:
        """The error for ids that are not live: it says which were retired, and by which edit."""
        retired = self._db.retired_ids(missing)
        if missing[0] in retired:
            by = retired[missing[0]]
            reason = f"superseded by edit {by}" if by is not None else "retired"
            return UnknownEditError(
                f"edit {missing[0]!r} is not live: it was retired ({reason}) and is kept in the store's history; "
                "restore() brings it back"
            )
        return UnknownEditError(f"no edit with id {missing[0]!r} in the store")
