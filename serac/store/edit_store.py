"""The edit store: every edit kept explicitly, with stable ids, indexed in FAISS.

The store knows nothing about language models. It holds :class:`~serac.edits.Edit` objects, embeds their
text with a sentence embedder, and answers nearest-neighbour queries. Small stores use an exact
inner-product index; past :attr:`EditStoreConfig.exact_max_size` edits the store moves to an inverted-file
(IVF) index (:mod:`serac.store.index`) so search stays fast at millions of edits. Embeddings are
L2-normalized, so scores are cosine similarities.

The source of truth is a database (:mod:`serac.store.database`): a private in-memory SQLite database by
default, a SQLite file or a PostgreSQL server when ``url`` is given. Every :meth:`EditStore.add`,
:meth:`~EditStore.remove` and :meth:`~EditStore.update` is one transaction, durable when it returns for a
file or server. The FAISS index is this process's copy, brought up to date from the database's change log
at most :attr:`EditStoreConfig.sync_interval_s` after another process writes.

:meth:`EditStore.save_pretrained` writes a portable snapshot (:mod:`serac.store.snapshot`).

An edit is never lost by superseding: an edit that a newer one of the same prompt supersedes (or, through
:meth:`~serac.memory.EditMemory.edit`, a newer one of the same fact) is *retired*: it leaves the index but
stays in the store's history, with the id of the edit that retired it, until :meth:`EditStore.restore` brings
it back (:meth:`EditStore.retired` lists them).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np

from serac.edits import Edit, name_words, named_keys
from serac.offline import embed
from serac.store.config import (
    EditStoreConfig,
    EditStoreError,
    Embedder,
    UnknownEditError,
    check_id_range,
    check_ids,
    check_vectors,
)
from serac.store.database import (
    DATABASE_FORMAT_VERSION,
    EditDatabase,
    StoreChanges,
    dumps_edit,
    loads_edit,
)
from serac.store.history import EditResult, HistoryMixin
from serac.store.index import build_ivf_index, new_exact_index
from serac.store.location import check_location, snapshot_location
from serac.store.snapshot import (
    PROBE_MIN_COSINE,
    PROBE_SENTENCES,
    STORE_FILE_NAME,
    History,
    Snapshot,
    read_snapshot,
    write_snapshot,
)

logger = logging.getLogger(__name__)

__all__ = ["EditResult", "EditStore"]


class EditStore(HistoryMixin):
    """Edits with stable integer ids and a FAISS index over their embeddings.

    Re-editing the same prompt (same :attr:`Edit.key`) supersedes the older edit: the newest wins and the
    older one is retired to the store's history (:meth:`retired`, :meth:`restore`). All methods are
    thread-safe; one :meth:`add` or :meth:`remove` call is atomic for concurrent readers, in this process and
    in any other process sharing the database.

    Args:
        embedder: the sentence embedder (default: the one named in ``config``, else the packaged MiniLM).
        config: index and embedding settings.
        url: where the edits live: ``None`` (this process's memory), a SQLite file path or URL
            (``"sqlite:///edits.db"``), or a PostgreSQL URL (``"postgresql+psycopg://user@host/db"``). A
            store opened on an existing database loads its edits, embeddings included, without re-embedding.

    Example:
        >>> from serac.offline import load_embedder
        >>> store = EditStore(load_embedder())
        >>> ids = store.add([Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")])
        >>> store.search(["What sport does LeBron James play?"], k=1)[0][0][0] == ids[0]
        True
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        config: EditStoreConfig | None = None,
        *,
        url: str | os.PathLike | None = None,
    ) -> None:
        self._set_up(embedder, config)
        self._attach(url)

    def _set_up(self, embedder: Embedder | None, config: EditStoreConfig | None) -> None:
        """Everything but the database: the embedder and its fingerprint, the empty index."""
        self.config = config or EditStoreConfig()
        if embedder is None:
            from serac.offline import DEFAULT_EMBEDDER, load_embedder

            embedder = load_embedder(self.config.embedder_name_or_path)
            if self.config.embedder_name_or_path is None:
                self.config.embedder_name_or_path = DEFAULT_EMBEDDER
        self.embedder = embedder
        self._probe = self._encode(list(PROBE_SENTENCES))
        self.dimension = int(self._probe.shape[1])
        self.lock = threading.RLock()
        self._edits: dict[int, Edit] = {}
        # Edit ids by the words of their subject: every edit about an entity, for the scope classifier.
        self._by_subject: dict[tuple[str, ...], set[int]] = {}
        self._longest_subject = 0
        self._index: faiss.Index = self._new_exact_index()
        self._ivf_trained_size = 0
        # A large store opens on an exact index and moves to IVF once a background build is done; ids
        # changed meanwhile are re-applied to the new index before it takes over.
        self._ivf_thread: threading.Thread | None = None
        self._changed_during_build: set[int] = set()
        self._seq = 0
        self._last_sync = 0.0
        self._snapshot_file: Path | None = None

    def _attach(self, url: str | os.PathLike | None) -> None:
        """Open the database at ``url`` (checked before anything is written to it) and load its edits."""
        self._db = EditDatabase(url)
        self._check_database()
        self._load_database()

    @classmethod
    def open(
        cls,
        location: str | os.PathLike | None = None,
        *,
        embedder: Embedder | None = None,
        config: EditStoreConfig | None = None,
        seed: str | os.PathLike | None = None,
    ) -> EditStore:
        """The edit store at ``location``, opened with one policy wherever it lives.

        ``location`` is ``None`` (this process's memory), a database URL (``sqlite:///edits.db``,
        ``postgresql://user@host/db``), a SQLite file path, or a snapshot file (``*.safetensors`` or
        ``file://...``) that is read at open and rewritten, atomically, after every change before the change
        returns (for one process; a database is the way to share a store). ``seed`` is a snapshot (such as
        the one a SERAC folder holds): it fills a store that has never been written, and is not imported
        into one that already holds (or once held) edits, whose own edits win. A snapshot file that does not
        exist yet is created at once, so a path that cannot be written fails here rather than on the first
        edit. Everything that can be checked is checked before anything is created: the location's text
        (an empty string, or a URL without ``://``, raises ``ValueError``), the seed, and an existing
        database's tables.

        Example:
            >>> store = EditStore.open("sqlite:///edits.db", seed="my-editor/edit_store.safetensors")  # doctest: +SKIP
        """
        if location is not None and not isinstance(location, (str, os.PathLike)):
            raise TypeError(f"a store location is a URL or a path, got {type(location).__name__}")
        if isinstance(location, str):
            check_location(location)
        seed_path = None if seed is None else Path(seed)
        if seed_path is not None and seed_path.is_dir():
            seed_path = seed_path / STORE_FILE_NAME
        if seed_path is not None and not seed_path.is_file():
            raise FileNotFoundError(f"no edit store snapshot at {seed_path}")
        # The seed is read and checked before the location is touched: a bad seed leaves it as it was.
        seed_snapshot = None if seed_path is None else _read_trusted_snapshot(seed_path, embedder)
        file = snapshot_location(location)
        if file is not None:
            if file.is_dir():
                raise IsADirectoryError(f"the edit store file {file} is a directory; name a file in it")
            if file.exists():
                if seed_path is not None:
                    logger.info("%s already exists; the snapshot %s is not imported", file, seed_path)
                store = cls.from_pretrained(file, embedder, config)
            elif seed_snapshot is not None:
                store = cls._from_snapshot(seed_snapshot, seed_path, embedder, config)
            else:
                store = cls(embedder, config)
            store._snapshot_file = file
            store._write_snapshot_file()
            return store
        if seed_snapshot is None:
            return cls(embedder, config, url=location)
        # A database never written is filled with the seed in one transaction; one that was keeps its edits.
        return cls._from_snapshot(seed_snapshot, seed_path, embedder, config, url=location, only_if_new=True)

    @property
    def kind(self) -> str:
        """Where the edits live: ``"memory"``, ``"file"`` (a snapshot rewritten on every change) or
        ``"database"``."""
        if self._snapshot_file is not None:
            return "file"
        return "memory" if self._db.in_memory else "database"

    @property
    def durable(self) -> bool:
        """Whether an acknowledged change survives this process."""
        return self.kind != "memory"

    @property
    def url(self) -> str | None:
        """The database URL, or ``None`` for a store that lives in this process's memory."""
        return None if self._db.in_memory else self._db.url

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        self._maybe_sync()
        return len(self._edits)

    def __contains__(self, edit_id: object) -> bool:
        if edit_id not in self._edits:
            self._maybe_sync(force=True)
        return edit_id in self._edits

    def __iter__(self) -> Iterator[int]:
        self._maybe_sync()
        with self.lock:
            return iter(list(self._edits))

    def items(self) -> list[tuple[int, Edit]]:
        """``(id, edit)`` pairs in id order (a snapshot)."""
        self._maybe_sync()
        with self.lock:
            return sorted(self._edits.items())

    def get(self, edit_id: int) -> Edit:
        """The edit with this id; :class:`UnknownEditError` if there is none."""
        edit = self._edits.get(edit_id)
        if edit is None:
            # Maybe another process added it since the last look.
            self._maybe_sync(force=True)
            edit = self._edits.get(edit_id)
        if edit is None:
            raise UnknownEditError(f"no edit with id {edit_id!r} in the store")
        return edit

    def get_many(self, edit_ids: Iterable[int]) -> list[Edit]:
        with self.lock:
            return [self.get(edit_id) for edit_id in edit_ids]

    def id_of(self, edit: Edit) -> int | None:
        """The id of the stored edit with the same prompt as ``edit``, if any."""
        if not isinstance(edit, Edit):
            raise TypeError(f"expected a serac.Edit, got {type(edit).__name__}")
        with self.lock:  # an in-memory database is one connection, shared with writers
            return self._db.id_of_key(edit.key)

    @property
    def index_kind(self) -> str:
        """``"exact"`` or ``"ivf"``."""
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "exact"

    def wait_until_indexed(self, timeout: float | None = None) -> bool:
        """Wait for a background move to IVF (started when a large store is opened); ``True`` once none runs."""
        thread = self._ivf_thread
        if thread is not None:
            thread.join(timeout)
        return self._ivf_thread is None or not self._ivf_thread.is_alive()

    # ------------------------------------------------------------------ changes
    def add(
        self,
        edits: Sequence[Edit],
        *,
        embeddings: np.ndarray | None = None,
        show_progress: bool | None = None,
    ) -> EditResult:
        """Store edits and return their ids, in order (an :class:`EditResult`: a list of ids, with the ids
        this call retired in ``retired``).

        Embedding runs before the store is touched, so a failure leaves it unchanged. An edit whose prompt
        is already stored supersedes the stored one, which is retired to the history (:meth:`retired`). Of
        several edits of one prompt within ``edits`` the last is stored and every one of them gets its id; an
        earlier one that differs from it goes to the history. ``embeddings`` (shape ``(len(edits),
        dimension)``, from the same embedder, e.g. computed in bulk elsewhere) skips the embedding step; they
        are L2-normalized here. The edits are in the database, durably, when this returns.
        """
        edits = self._check_edits(edits)
        if not edits:
            return EditResult()
        if embeddings is not None:
            vectors = np.asarray(embeddings)
            if vectors.dtype.kind not in "fiu":
                raise TypeError(f"embeddings must be a numeric array, got dtype {vectors.dtype}")
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if vectors.shape != (len(edits), self.dimension):
                raise ValueError(
                    f"embeddings must have shape ({len(edits)}, {self.dimension}), got {tuple(vectors.shape)}"
                )
            check_vectors(vectors, "embeddings")
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        else:
            if show_progress is None:
                show_progress = len(edits) >= 10 * self.config.encode_batch_size
            vectors = self._encode([edit.text for edit in edits], show_progress=show_progress)
            check_vectors(vectors, "the embedder's vectors")
        # Of several edits of one prompt in this call, the last is the one stored; an earlier one that says
        # something else is kept in the history, one that repeats it is the same edit.
        last_for_key = {edit.key: i for i, edit in enumerate(edits)}
        written = [
            i
            for i, edit in enumerate(edits)
            if last_for_key[edit.key] == i or edit != edits[last_for_key[edit.key]]
        ]
        row_of = {i: row for row, i in enumerate(written)}
        superseded_by = [
            None if last_for_key[edits[i].key] == i else row_of[last_for_key[edits[i].key]] for i in written
        ]
        with self.lock:
            ids, start_seq, changes = self._db.add(
                [edits[i].key for i in written],
                [dumps_edit(edits[i].to_dict()) for i in written],
                vectors[written],
                superseded_by,
            )
            self._after_write(start_seq, changes)
        id_for_key = {edits[i].key: ids[row_of[i]] for i in last_for_key.values()}
        if changes.retired:
            # The user re-edited these prompts: the older edits go to the history, where restore() finds them.
            logger.info(
                "%d edit(s) superseded by newer edits of the same prompt and retired to the history: %s",
                len(changes.retired),
                changes.retired,
            )
        return EditResult([id_for_key[edit.key] for edit in edits], retired=changes.retired)

    def remove(self, edit_ids: int | Iterable[int]) -> None:
        """Remove edits by id. Every id is checked first: one unknown id removes nothing.

        Removing deletes; it is not retiring (retired edits are not live and cannot be removed: an id of one
        raises, naming the edit that retired it).
        """
        ids = check_ids(edit_ids)
        unique = sorted(set(ids))
        if not unique:
            return
        check_id_range(unique)
        with self.lock:
            try:
                start_seq, changes = self._db.remove(unique)
            except KeyError as error:
                raise self._unknown(error.args[0]) from None
            self._after_write(start_seq, changes)

    def update(self, edit_id: int, edit: Edit) -> None:
        """Replace the edit stored under ``edit_id``, keeping the id."""
        (edit_id,) = check_ids([edit_id])
        check_id_range([edit_id])
        (edit,) = self._check_edits([edit])
        vector = self._encode([edit.text])
        check_vectors(vector, "the embedder's vectors")
        with self.lock:
            try:
                start_seq, changes = self._db.replace(edit_id, edit.key, dumps_edit(edit.to_dict()), vector)
            except KeyError:
                raise self._unknown([edit_id]) from None
            except ValueError as error:
                raise ValueError(f"{error}: {edit.query!r}") from None
            self._after_write(start_seq, changes)

    def clear(self) -> None:
        """Remove every live edit; the history of retired edits stays (ids are never reused)."""
        with self.lock:
            start_seq, changes = self._db.clear()
            self._after_write(start_seq, changes)

    def sync(self) -> int:
        """Apply every change other processes made to the database since the last look; returns how many
        edits changed."""
        with self.lock:
            changes = self._db.changes_since(self._seq)
            self._last_sync = time.monotonic()
            if changes is None:
                return 0
            self._apply(changes)
            return len(changes.removed) + len(changes.added)

    # ------------------------------------------------------------------ search
    def ids_named_in(self, text: str, limit: int | None = None) -> list[int]:
        """Ids of the stored edits whose subject ``text`` names (:func:`~serac.edits.mentions_subject`).

        A lookup by exact words, independent of embedding similarity: it finds every edit about an entity
        however many other edits sit nearer in embedding space. With ``limit``, the newest ones.
        """
        self._maybe_sync()
        with self.lock:
            if not self._by_subject:
                return []
            found: set[int] = set()
            for key in named_keys(text, self._longest_subject):
                found.update(self._by_subject.get(key, ()))
        ids = sorted(found, reverse=True)
        return ids if limit is None else ids[:limit]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Normalized float32 embeddings of ``texts``, shape ``(len(texts), dimension)``."""
        return self._encode(list(texts))

    def search(self, queries: Sequence[str] | np.ndarray, k: int = 1) -> list[list[tuple[int, float]]]:
        """For each query, up to ``k`` ``(edit id, cosine similarity)`` pairs, best first.

        ``queries`` are strings, or their embeddings from :meth:`encode`.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        vectors = queries if isinstance(queries, np.ndarray) else self._encode(list(queries))
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ValueError(f"query embeddings must have shape (n, {self.dimension}), got {vectors.shape}")
        self._maybe_sync()
        with self.lock:
            if not self._edits:
                return [[] for _ in range(len(vectors))]
            scores, ids = self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), int(k))
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write a snapshot of the store to one file, atomically. A directory gets ``edit_store.safetensors``
        inside."""
        path = Path(path)
        if path.is_dir():
            path = path / STORE_FILE_NAME
        self._maybe_sync(force=True)
        with self.lock:
            next_id, _, _ = self._db.state()
            ids, vectors = self._all_vectors()
            order = np.argsort(ids)
            ids, vectors = ids[order], vectors[order]
            records = [self._edits[int(edit_id)].to_dict() for edit_id in ids]
            retired = self._db.retired(with_embeddings=True)
        history = History.from_rows(retired, self.dimension)
        write_snapshot(
            path, ids, vectors, records, self._probe, self.config, self.dimension, next_id, history
        )
        logger.info("Saved %d edits and %d retired ones to %s", len(records), len(retired), path)
        return path

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        embedder: Embedder | None = None,
        config: EditStoreConfig | None = None,
        *,
        url: str | os.PathLike | None = None,
    ) -> EditStore:
        """Open a snapshot written by :meth:`save_pretrained` (any readable format version); :class:`EditStoreError` if
        the file is unusable, :class:`FileNotFoundError` if it is missing.

        The snapshot fills the database at ``url`` (default: this process's memory), which must never have
        been written. Without ``embedder``, only the default embedder is loaded: a store file naming another
        one is refused rather than followed (a path or Hub id in a file is not something to load blindly).
        """
        path = Path(path)
        if path.is_dir():
            path = path / STORE_FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no edit store at {path}")
        return cls._from_snapshot(_read_trusted_snapshot(path, embedder), path, embedder, config, url=url)

    @classmethod
    def _from_snapshot(
        cls,
        snapshot: Snapshot,
        path: Path,
        embedder: Embedder | None,
        config: EditStoreConfig | None,
        *,
        url: str | os.PathLike | None = None,
        only_if_new: bool = False,
    ) -> EditStore:
        """A store filled from a read snapshot. The embedder is checked against it before the database is
        opened; with ``only_if_new``, a database that was written before keeps its edits instead of
        failing."""
        store = cls.__new__(cls)
        store._set_up(embedder, config or snapshot.config)
        store._check_snapshot_embedder(snapshot, path)
        store._attach(url)
        imported = store._db.import_snapshot(
            snapshot.ids.tolist(),
            [edit.key for edit in snapshot.edits],
            [dumps_edit(edit.to_dict()) for edit in snapshot.edits],
            snapshot.vectors,
            snapshot.next_id,
            snapshot.retired_rows(),
        )
        if not imported:
            if only_if_new:
                logger.info(
                    "The edit store at %s already holds edits; the snapshot %s is not imported",
                    store._db.where,
                    path,
                )
                return store
            raise EditStoreError(
                f"the database at {store._db.where} already holds edits; open it with EditStore(url=...) "
                f"instead of filling it from {path}"
            )
        store._load_database()
        return store

    def save(self, path: str | os.PathLike) -> Path:
        """Deprecated name of :meth:`save_pretrained`, kept so that code using the old name still runs."""
        warnings.warn("EditStore.save is deprecated; use save_pretrained", DeprecationWarning, stacklevel=2)
        return self.save_pretrained(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        embedder: Embedder | None = None,
        config: EditStoreConfig | None = None,
        *,
        url: str | os.PathLike | None = None,
    ) -> EditStore:
        """Deprecated name of :meth:`from_pretrained`, kept so that code using the old name still runs."""
        warnings.warn("EditStore.load is deprecated; use from_pretrained", DeprecationWarning, stacklevel=2)
        return cls.from_pretrained(path, embedder, config, url=url)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _check_edits(edits: Sequence[Edit]) -> list[Edit]:
        if isinstance(edits, Edit):
            edits = [edits]
        if isinstance(edits, (str, bytes)):
            raise TypeError("expected serac.Edit objects, got a string")
        edits = list(edits)
        for edit in edits:
            if not isinstance(edit, Edit):
                raise TypeError(f"expected serac.Edit objects, got {type(edit).__name__}")
        return edits

    def _encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        return embed(
            self.embedder, texts, batch_size=self.config.encode_batch_size, show_progress=show_progress
        )

    def _check_database(self) -> None:
        """Record this embedder in a new database, or check that an existing one was built with it."""
        meta = self._db.init_meta(
            {
                "format_version": str(DATABASE_FORMAT_VERSION),
                "dimension": str(self.dimension),
                "embedder_name_or_path": self.config.embedder_name_or_path or "",
                "embedder_probe": json.dumps(self._probe.tolist()),
            }
        )
        where = self._db.url
        try:
            version = int(meta["format_version"])
            dimension = int(meta["dimension"])
            probe = np.asarray(json.loads(meta["embedder_probe"]), dtype=np.float32)
        except (KeyError, ValueError, TypeError) as error:
            raise EditStoreError(f"the edit store at {where} has unreadable metadata ({error})") from None
        if version > DATABASE_FORMAT_VERSION:
            raise EditStoreError(
                f"the edit store at {where} has format version {version}, written by a newer serac; this "
                f"one reads up to version {DATABASE_FORMAT_VERSION}"
            )
        if dimension != self.dimension:
            raise EditStoreError(
                f"the edit store at {where} holds {dimension}-d embeddings, the embedder gives {self.dimension}-d"
            )
        self._compare_probe(probe, f"the edit store at {where}")

    def _compare_probe(self, probe: np.ndarray, what: str) -> None:
        if probe.shape != self._probe.shape or not np.all(np.isfinite(probe)):
            raise EditStoreError(f"{what} has an unreadable embedder fingerprint")
        agreement = float(np.min(np.sum(probe * self._probe, axis=1)))
        if agreement < PROBE_MIN_COSINE:
            raise EditStoreError(
                f"{what} was built with a different embedder (fingerprint cosine {agreement:.3f}); searching "
                "it with this one would route queries to the wrong edits"
            )

    def _check_snapshot_embedder(self, snapshot: Snapshot, path: Path) -> None:
        if snapshot.dimension != self.dimension:
            raise EditStoreError(
                f"{path} holds {snapshot.dimension}-d embeddings, the embedder gives {self.dimension}-d"
            )
        if snapshot.probe is not None:
            self._compare_probe(snapshot.probe, str(path))
        elif len(snapshot.edits):
            # Files of format 1 carry no fingerprint: re-embed a few stored edits and compare.
            sample = np.linspace(0, len(snapshot.edits) - 1, num=min(8, len(snapshot.edits))).astype(int)
            fresh = self._encode([snapshot.edits[i].text for i in sample])
            agreement = float(np.min(np.sum(fresh * snapshot.vectors[sample], axis=1)))
            if agreement < PROBE_MIN_COSINE:
                raise EditStoreError(
                    f"{path} was built with a different embedder (cosine {agreement:.3f} on stored edits)"
                )

    def _load_database(self) -> None:
        """Replace this process's copy with the database's edits (their stored embeddings, no re-embedding)."""
        with self.lock:
            _, last_seq, chunks = self._db.load_all()
            all_ids, all_vectors = [], []
            edits: dict[int, Edit] = {}
            for chunk in chunks:
                ids = np.fromiter((row[0] for row in chunk), dtype=np.int64, count=len(chunk))
                vectors = np.frombuffer(b"".join(row[2] for row in chunk), dtype=np.float32)
                all_ids.append(ids)
                all_vectors.append(vectors.reshape(len(chunk), self.dimension))
                for edit_id, text, _ in chunk:
                    edits[edit_id] = loads_edit(text)
            self._edits = edits
            self._by_subject, self._longest_subject = {}, 0
            for edit_id, edit in edits.items():
                self._index_subjects(edit_id, edit, add=True)
            self._index = self._new_exact_index()
            self._ivf_trained_size = 0
            if all_ids:
                ids = np.concatenate(all_ids)
                del all_ids
                vectors = np.concatenate(all_vectors)
                del all_vectors
                self._index.add_with_ids(vectors, ids)
                del vectors
            self._seq = last_seq
            self._last_sync = 0.0
            if len(self._edits) > self.config.exact_max_size:
                # Serve at once from the exact index (slower per query, same answers) while IVF is built.
                self._changed_during_build = set()
                self._ivf_thread = threading.Thread(
                    target=self._move_to_ivf, name="serac-ivf-build", daemon=True
                )
                self._ivf_thread.start()
        self.sync()

    def _move_to_ivf(self) -> None:
        with self.lock:
            ids, vectors = self._all_vectors()
        try:
            index = self._build_ivf(vectors, ids)
        except Exception:  # pragma: no cover - the exact index keeps serving; nothing is lost
            logger.exception("Building the IVF index failed; the store keeps its exact index")
            with self.lock:
                self._ivf_thread = None
            return
        del vectors
        with self.lock:
            built = set(ids.tolist())
            current = set(self._edits)
            stale = (built - current) | (self._changed_during_build & built)
            fresh = (current - built) | (self._changed_during_build & current)
            if stale:
                index.remove_ids(np.fromiter(stale, dtype=np.int64, count=len(stale)))
            if fresh:
                fresh_ids = np.fromiter(fresh, dtype=np.int64, count=len(fresh))
                fresh_vectors = np.empty((len(fresh_ids), self.dimension), dtype=np.float32)
                self._index.reconstruct_batch(fresh_ids, fresh_vectors)
                index.add_with_ids(fresh_vectors, fresh_ids)
            self._index = index
            self._ivf_trained_size = len(ids)
            self._changed_during_build = set()
            self._ivf_thread = None
        logger.info("The store moved to an IVF index over %d edits", len(current))

    def _maybe_sync(self, force: bool = False) -> None:
        # A private in-memory database has no other writer.
        if self._db.in_memory:
            return
        if force or time.monotonic() - self._last_sync >= self.config.sync_interval_s:
            self.sync()

    def _after_write(self, start_seq: int, changes: StoreChanges) -> None:
        # If nobody else wrote since our last look, our own changes are all there is to apply; otherwise
        # catch up through the change log, which includes ours.
        if start_seq == self._seq:
            self._apply(changes)
        else:
            self.sync()
        if self._snapshot_file is not None:
            self._write_snapshot_file()

    def _write_snapshot_file(self) -> None:
        """Rewrite the store file (a store opened on a snapshot file): the change is durable once this returns."""
        assert self._snapshot_file is not None
        self.save_pretrained(self._snapshot_file)

    def _apply(self, changes: StoreChanges) -> None:
        with self.lock:
            gone = [edit_id for edit_id in changes.removed if edit_id in self._edits]
            gone += [
                edit_id for edit_id, _, _ in changes.added if edit_id in self._edits and edit_id not in gone
            ]
            for edit_id in gone:
                self._index_subjects(edit_id, self._edits.pop(edit_id), add=False)
            if self._ivf_thread is not None:
                self._changed_during_build.update(gone)
                self._changed_during_build.update(edit_id for edit_id, _, _ in changes.added)
            if gone:
                self._index.remove_ids(np.asarray(gone, dtype=np.int64))
            if changes.added:
                ids = np.asarray([edit_id for edit_id, _, _ in changes.added], dtype=np.int64)
                vectors = np.frombuffer(b"".join(row[2] for row in changes.added), dtype=np.float32)
                parsed = [_edit_from_json(text) for _, text, _ in changes.added]
                # Index first: a move to IVF reconstructs the vectors of the edits already held.
                self._index_add(vectors.reshape(len(ids), self.dimension), ids)
                for (edit_id, _, _), edit in zip(changes.added, parsed, strict=True):
                    self._edits[edit_id] = edit
                    self._index_subjects(edit_id, edit, add=True)
            self._seq = max(self._seq, changes.last_seq)

    def _index_subjects(self, edit_id: int, edit: Edit, add: bool) -> None:
        if edit.subject is None:
            return
        key = name_words(edit.subject)
        if add:
            self._by_subject.setdefault(key, set()).add(edit_id)
            self._longest_subject = max(self._longest_subject, len(key))
        else:
            ids = self._by_subject.get(key)
            if ids is not None:
                ids.discard(edit_id)
                if not ids:
                    del self._by_subject[key]

    def _new_exact_index(self) -> faiss.Index:
        return new_exact_index(self.dimension)

    def _index_add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        size_after = self._index.ntotal + len(ids)
        # Move to IVF when the exact index grows past its limit, and retrain the IVF lists when the store
        # has grown 8-fold since they were trained, so the lists stay about sqrt(n)-sized.
        needs_rebuild = (self.index_kind == "exact" and size_after > self.config.exact_max_size) or (
            self.index_kind == "ivf" and size_after > 8 * self._ivf_trained_size
        )
        if needs_rebuild and self._ivf_thread is None:
            old_ids, old_vectors = self._all_vectors()
            self._index = self._build_ivf(
                np.concatenate([old_vectors, vectors]), np.concatenate([old_ids, ids])
            )
            self._ivf_trained_size = self._index.ntotal
        else:
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of every indexed edit."""
        ids = np.fromiter(self._edits.keys(), dtype=np.int64, count=len(self._edits))
        vectors = np.empty((len(ids), self.dimension), dtype=np.float32)
        if len(ids):
            self._index.reconstruct_batch(ids, vectors)
        return ids, vectors

    def _build_ivf(self, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
        return build_ivf_index(vectors, ids, self.dimension, self.config.ivf_nprobe)


def _edit_from_json(text: str) -> Edit:
    return Edit.from_dict(json.loads(text))


def _read_trusted_snapshot(path: Path, embedder: Embedder | None) -> Snapshot:
    """Read and check a snapshot; without an embedder, one that names an embedder other than the default is
    refused rather than followed (a path or Hub id in a file is not something to load blindly)."""
    snapshot = read_snapshot(path)
    if embedder is None:
        from serac.offline import DEFAULT_EMBEDDER

        recorded = snapshot.config.embedder_name_or_path
        if recorded not in (None, DEFAULT_EMBEDDER):
            raise EditStoreError(
                f"{path} was built with the embedder {recorded!r}; load that embedder yourself and pass "
                "it as embedder= (a name recorded in a file is not followed)"
            )
    return snapshot
