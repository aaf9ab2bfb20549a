"""The edit store: every edit kept explicitly, with stable ids, indexed in FAISS.

The store knows nothing about language models. It holds :class:`~serac.edits.Edit` objects, embeds their
text with a sentence embedder, and answers nearest-neighbour queries. Small stores use an exact
inner-product index; past :attr:`EditStoreConfig.exact_max_size` edits the store moves to an inverted-file
(IVF) index so search stays fast at millions of edits. Embeddings are L2-normalized, so scores are cosine
similarities.

The source of truth is a database (:mod:`serac.store_backends`): a private in-memory SQLite database by
default, a SQLite file or a PostgreSQL server when ``url`` is given. Every :meth:`EditStore.add`,
:meth:`~EditStore.remove` and :meth:`~EditStore.update` is one transaction, durable when it returns for a
file or server. The FAISS index is this process's copy, brought up to date from the database's change log
at most :attr:`EditStoreConfig.sync_interval_s` after another process writes.

:meth:`EditStore.save` also writes a portable snapshot: one safetensors file, written through a temporary
file and an atomic rename, whose every byte (metadata included) is covered by one checksum.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from serac._version import __version__
from serac.edits import Edit, name_words, named_keys
from serac.files import write_bytes_atomic
from serac.offline import embed
from serac.store_backends import DATABASE_FORMAT_VERSION, EditDatabase, StoreChanges, dumps_edit

logger = logging.getLogger(__name__)

STORE_FORMAT = "serac.edit_store"
STORE_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
STORE_FILE_NAME = "edit_store.safetensors"
# Embedded at store creation and compared on every open: two embedders of the same width give different
# vectors for these, so a store is never searched with an embedder it was not built with.
PROBE_SENTENCES = (
    "What sport does LeBron James play?",
    "Paris is the capital of France.",
    "serac embedder fingerprint 0123456789",
)
PROBE_MIN_COSINE = 0.99
# Stored embeddings are unit vectors; anything further off than this was not written by this library.
NORM_TOLERANCE = 1e-3

__all__ = [
    "STORE_FILE_NAME",
    "EditStore",
    "EditStoreConfig",
    "EditStoreError",
    "Embedder",
    "UnknownEditError",
]


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


def _ivf_list_count(size: int) -> int:
    # About 4 * sqrt(n) lists is FAISS's usual advice; a power of two keeps k-means balanced. k-means needs
    # ~39 points per list, so a small store (exact_max_size below 64) gets fewer lists, down to one.
    wanted = 2 ** round(math.log2(max(64.0, 4 * math.sqrt(size))))
    affordable = 2 ** int(math.floor(math.log2(max(1.0, size / 39))))
    return int(max(1, min(wanted, affordable)))


def _check_vectors(vectors: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"{what} hold NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1)
    if len(norms) and float(norms.min()) < 1e-6:
        raise ValueError(
            f"{what} hold an all-zero vector (an embedding with no direction cannot be searched)"
        )


@dataclass
class _Snapshot:
    """A validated store file: edits with ids, their unit embeddings, the id counter."""

    ids: np.ndarray
    edits: list[Edit]
    vectors: np.ndarray
    next_id: int
    config: EditStoreConfig
    dimension: int
    probe: np.ndarray | None


class EditStore:
    """Edits with stable integer ids and a FAISS index over their embeddings.

    Re-editing the same prompt (same :attr:`Edit.key`) supersedes the older edit: the newest wins and the
    older id is retired. All methods are thread-safe; one :meth:`add` or :meth:`remove` call is atomic for
    concurrent readers, in this process and in any other process sharing the database.

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
        self._db = EditDatabase(url)
        self._check_database()
        self._load_database()

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
    ) -> list[int]:
        """Store edits and return their ids, in order.

        Embedding runs before the store is touched, so a failure leaves it unchanged. An edit whose prompt
        is already stored supersedes the stored one; of several edits of one prompt within ``edits`` the last
        is stored, and every one of them gets its id. ``embeddings`` (shape ``(len(edits), dimension)``, from
        the same embedder, e.g. computed in bulk elsewhere) skips the embedding step; they are L2-normalized
        here. The edits are in the database, durably, when this returns.
        """
        edits = self._check_edits(edits)
        if not edits:
            return []
        if embeddings is not None:
            vectors = np.asarray(embeddings)
            if vectors.dtype.kind not in "fiu":
                raise TypeError(f"embeddings must be a numeric array, got dtype {vectors.dtype}")
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if vectors.shape != (len(edits), self.dimension):
                raise ValueError(
                    f"embeddings must have shape ({len(edits)}, {self.dimension}), got {tuple(vectors.shape)}"
                )
            _check_vectors(vectors, "embeddings")
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        else:
            if show_progress is None:
                show_progress = len(edits) >= 10 * self.config.encode_batch_size
            vectors = self._encode([edit.text for edit in edits], show_progress=show_progress)
            _check_vectors(vectors, "the embedder's vectors")
        # Of several edits of one prompt in this call, the last is the one stored.
        last_for_key = {edit.key: i for i, edit in enumerate(edits)}
        kept = sorted(last_for_key.values())
        with self.lock:
            ids, start_seq, changes = self._db.add(
                [edits[i].key for i in kept], [dumps_edit(edits[i].to_dict()) for i in kept], vectors[kept]
            )
            self._after_write(start_seq, changes)
        id_for_key = {edits[i].key: edit_id for i, edit_id in zip(kept, ids, strict=True)}
        superseded = len(changes.removed) + len(edits) - len(kept)
        if superseded:
            logger.info("%d edit(s) superseded by newer edits of the same prompt", superseded)
        return [id_for_key[edit.key] for edit in edits]

    def remove(self, edit_ids: int | Iterable[int]) -> None:
        """Remove edits by id. Every id is checked first: one unknown id removes nothing."""
        unique = sorted(set(_check_ids(edit_ids)))
        if not unique:
            return
        with self.lock:
            try:
                start_seq, changes = self._db.remove(unique)
            except KeyError as error:
                missing = error.args[0]
                raise UnknownEditError(f"no edit with id {missing[0]!r} in the store") from None
            self._after_write(start_seq, changes)

    def update(self, edit_id: int, edit: Edit) -> None:
        """Replace the edit stored under ``edit_id``, keeping the id."""
        (edit_id,) = _check_ids([edit_id])
        (edit,) = self._check_edits([edit])
        vector = self._encode([edit.text])
        _check_vectors(vector, "the embedder's vectors")
        with self.lock:
            try:
                start_seq, changes = self._db.replace(edit_id, edit.key, dumps_edit(edit.to_dict()), vector)
            except KeyError:
                raise UnknownEditError(f"no edit with id {edit_id!r} in the store") from None
            except ValueError as error:
                raise ValueError(f"{error}: {edit.query!r}") from None
            self._after_write(start_seq, changes)

    def clear(self) -> None:
        """Remove every edit (ids are never reused)."""
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
        from safetensors.numpy import save as safetensors_save

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
        tensors = {
            "ids": ids.astype(np.int64),
            "embeddings": np.ascontiguousarray(vectors, dtype=np.float32),
            "edits": np.frombuffer(json.dumps(records, ensure_ascii=False).encode("utf-8"), dtype=np.uint8),
            "embedder_probe": self._probe,
        }
        metadata = {
            "format": STORE_FORMAT,
            "format_version": str(STORE_FORMAT_VERSION),
            "serac_version": __version__,
            "config": json.dumps(asdict(self.config), sort_keys=True),
            "dimension": str(self.dimension),
            "next_id": str(next_id),
            "size": str(len(records)),
        }
        metadata["sha256"] = _snapshot_digest(metadata, tensors)
        write_bytes_atomic(path, safetensors_save(tensors, metadata=metadata))
        logger.info("Saved %d edits to %s", len(records), path)
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
        snapshot = _read_snapshot(path)
        if embedder is None:
            from serac.offline import DEFAULT_EMBEDDER

            recorded = snapshot.config.embedder_name_or_path
            if recorded not in (None, DEFAULT_EMBEDDER):
                raise EditStoreError(
                    f"{path} was built with the embedder {recorded!r}; load that embedder yourself and pass "
                    "it as embedder= (a name recorded in a file is not followed)"
                )
        store = cls(embedder, config or snapshot.config, url=url)
        store._check_snapshot_embedder(snapshot, path)
        imported = store._db.import_snapshot(
            snapshot.ids.tolist(),
            [edit.key for edit in snapshot.edits],
            [dumps_edit(edit.to_dict()) for edit in snapshot.edits],
            snapshot.vectors,
            snapshot.next_id,
        )
        if not imported:
            raise EditStoreError(
                f"the database at {store._db.url} already holds edits; open it with EditStore(url=...) "
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

    def _check_snapshot_embedder(self, snapshot: _Snapshot, path: Path) -> None:
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
                    edits[edit_id] = _trusted_edit(text)
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
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))

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
        lists = _ivf_list_count(len(ids))
        logger.info("Building an IVF index with %d lists over %d edits", lists, len(ids))
        quantizer = faiss.IndexFlatIP(self.dimension)
        index = faiss.IndexIVFFlat(quantizer, self.dimension, lists, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(len(vectors), size=min(len(vectors), 64 * lists), replace=False)]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        # A hash-table direct map lets the index reconstruct and remove vectors by arbitrary id.
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids))
        index.nprobe = self.config.ivf_nprobe
        return index


def _edit_from_json(text: str) -> Edit:
    return Edit.from_dict(json.loads(text))


def _trusted_edit(text: str) -> Edit:
    """An edit read back from the database, where only validated edits are written: skip re-validating
    (at a million edits, validation is most of the time a process takes to open the store)."""
    record = json.loads(text)
    edit = object.__new__(Edit)
    for name in ("prompt", "target", "subject", "statement"):
        object.__setattr__(edit, name, record.get(name))
    return edit


def _check_ids(edit_ids: Any) -> list[int]:
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


def _snapshot_digest(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({k: v for k, v in metadata.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        array = tensors[name]
        digest.update(f"\n{name}:{array.dtype.str}:{array.shape}\n".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _read_snapshot(path: Path) -> _Snapshot:
    """Parse and check a store file of any readable format version; every failure is an EditStoreError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as safetensors_load

    raw = path.read_bytes()
    try:
        metadata = _read_metadata(raw)
        tensors = safetensors_load(raw)
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError, TypeError) as error:
        raise EditStoreError(f"{path} is not a readable edit store (truncated or corrupt): {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != STORE_FORMAT:
        raise EditStoreError(f"{path} is not an edit store (format {metadata.get('format')!r})")
    version_text = metadata.get("format_version")
    version = int(version_text) if isinstance(version_text, str) and version_text.isdigit() else None
    if version not in READABLE_FORMAT_VERSIONS:
        newer = version is not None and version > STORE_FORMAT_VERSION
        raise EditStoreError(
            f"{path} has store format version {version_text!r}"
            + (", written by a newer serac" if newer else "")
            + f"; this serac reads versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}"
        )
    try:
        snapshot = _parse_v1(metadata, tensors) if version == 1 else _parse_v2(metadata, tensors)
        _validate_snapshot(snapshot)
    except EditStoreError as error:
        raise EditStoreError(f"{path}: {error}") from None
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, RuntimeError, OverflowError) as error:
        # RuntimeError: FAISS refusing a malformed index; the others: malformed metadata or records.
        raise EditStoreError(f"{path} is not a valid edit store: {type(error).__name__}: {error}") from None
    return snapshot


def _int_field(metadata: dict[str, str], name: str) -> int:
    text = metadata.get(name)
    if not isinstance(text, str) or not text.isdigit() or len(text) > 18:
        raise EditStoreError(f"the metadata field {name!r} is not a non-negative integer: {text!r}")
    return int(text)


def _parse_config(metadata: dict[str, str]) -> EditStoreConfig:
    try:
        return EditStoreConfig.from_dict(json.loads(metadata["config"]))
    except (KeyError, ValueError, TypeError) as error:
        raise EditStoreError(f"unreadable store config: {error}") from None


def _parse_v1(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> _Snapshot:
    for name in ("edits", "index"):
        if name not in tensors or tensors[name].dtype != np.uint8 or tensors[name].ndim != 1:
            raise EditStoreError(f"the {name} section is missing or malformed")
        if hashlib.sha256(tensors[name].tobytes()).hexdigest() != metadata.get(f"{name}_sha256"):
            raise EditStoreError(f"the {name} section fails its checksum (corrupt file)")
    config = _parse_config(metadata)
    dimension = _int_field(metadata, "dimension")
    next_id = _int_field(metadata, "next_id")
    records = json.loads(tensors["edits"].tobytes().decode("utf-8"))
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise EditStoreError("the edits section is not a list of records")
    ids = []
    edits = []
    for record in records:
        record = dict(record)
        edit_id = record.pop("id", None)
        if isinstance(edit_id, bool) or not isinstance(edit_id, int):
            raise EditStoreError(f"an edit record has no integer id: {edit_id!r}")
        ids.append(edit_id)
        edits.append(_edit_from_record(record))
    index = faiss.deserialize_index(np.ascontiguousarray(tensors["index"]))
    index_ids, vectors = _index_contents(index, dimension)
    order = {edit_id: row for row, edit_id in enumerate(index_ids.tolist())}
    if len(order) != len(index_ids) or set(order) != set(ids):
        raise EditStoreError(f"the index holds vectors for ids other than the {len(ids)} stored edits")
    vectors = vectors[[order[edit_id] for edit_id in ids]] if ids else vectors[:0]
    return _Snapshot(np.asarray(ids, dtype=np.int64), edits, vectors, next_id, config, dimension, None)


def _index_contents(index: faiss.Index, dimension: int) -> tuple[np.ndarray, np.ndarray]:
    """The ids and vectors of an index in one of the two layouts format 1 wrote."""
    if index.d != dimension or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise EditStoreError("the index has the wrong width or metric")
    if isinstance(index, faiss.IndexIDMap2) or type(index).__name__ == "IndexIDMap2":
        index = faiss.downcast_index(index)
        inner = faiss.downcast_index(index.index)
        if not isinstance(inner, faiss.IndexFlatIP):
            raise EditStoreError(f"unexpected inner index {type(inner).__name__}")
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        if len(ids) != index.ntotal:
            raise EditStoreError("the index's id map does not match its size")
        vectors = (
            inner.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, dimension), np.float32)
        )
        return ids, np.ascontiguousarray(vectors, dtype=np.float32)
    if isinstance(index, faiss.IndexIVFFlat):
        invlists = index.invlists
        ids, vectors = [], []
        for list_no in range(index.nlist):
            size = invlists.list_size(list_no)
            if size == 0:
                continue
            ids.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
            codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * invlists.code_size).copy()
            vectors.append(codes.view(np.float32).reshape(size, dimension))
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, dimension), np.float32)
        return np.concatenate(ids).astype(np.int64), np.concatenate(vectors)
    raise EditStoreError(f"unexpected index type {type(index).__name__}")


def _parse_v2(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> _Snapshot:
    expected = {"ids", "embeddings", "edits", "embedder_probe"}
    if set(tensors) != expected:
        raise EditStoreError(f"sections {sorted(tensors)} instead of {sorted(expected)}")
    if _snapshot_digest(metadata, tensors) != metadata.get("sha256"):
        raise EditStoreError("the file fails its checksum (corrupt or edited)")
    config = _parse_config(metadata)
    dimension = _int_field(metadata, "dimension")
    next_id = _int_field(metadata, "next_id")
    size = _int_field(metadata, "size")
    ids, vectors, probe = tensors["ids"], tensors["embeddings"], tensors["embedder_probe"]
    if ids.dtype != np.int64 or ids.shape != (size,):
        raise EditStoreError(f"the ids section is not {size} int64 ids")
    if vectors.dtype != np.float32 or vectors.shape != (size, dimension):
        raise EditStoreError(f"the embeddings section is not ({size}, {dimension}) float32")
    if probe.dtype != np.float32 or probe.shape != (len(PROBE_SENTENCES), dimension):
        raise EditStoreError("the embedder fingerprint is malformed")
    records = json.loads(tensors["edits"].tobytes().decode("utf-8"))
    if not isinstance(records, list) or len(records) != size:
        raise EditStoreError(f"the edits section does not hold {size} records")
    edits = [_edit_from_record(record) for record in records]
    return _Snapshot(ids.copy(), edits, vectors.copy(), next_id, config, dimension, probe.copy())


def _edit_from_record(record: Any) -> Edit:
    if not isinstance(record, dict):
        raise EditStoreError(f"an edit record is not an object: {record!r:.80}")
    try:
        return Edit.from_dict(record)
    except (KeyError, TypeError, ValueError) as error:
        raise EditStoreError(f"an invalid edit record {record!r:.80}: {error}") from None


def _validate_snapshot(snapshot: _Snapshot) -> None:
    """Reject what :meth:`EditStore.save` would never have written, before anything uses it."""
    ids = snapshot.ids
    if snapshot.dimension < 1:
        raise EditStoreError("the embedding width is 0")
    if len(ids) and (int(ids.min()) < 0 or len(np.unique(ids)) != len(ids)):
        raise EditStoreError("edit ids are negative or repeated")
    if len(ids) and snapshot.next_id <= int(ids.max()):
        raise EditStoreError(
            f"next_id {snapshot.next_id} is not past the largest edit id {int(ids.max())} (ids would be reused)"
        )
    keys = [edit.key for edit in snapshot.edits]
    if len(set(keys)) != len(keys):
        raise EditStoreError("two stored edits have the same prompt (one should have superseded the other)")
    vectors = snapshot.vectors
    if not np.all(np.isfinite(vectors)):
        raise EditStoreError("embeddings hold NaN or infinite values")
    if len(vectors) and float(np.max(np.abs(np.linalg.norm(vectors, axis=1) - 1.0))) > NORM_TOLERANCE:
        raise EditStoreError("embeddings are not unit vectors")


def _read_metadata(raw: bytes) -> dict[str, str]:
    if len(raw) < 8:
        raise ValueError("file too short")
    header_length = int.from_bytes(raw[:8], "little")
    if 8 + header_length > len(raw):
        raise ValueError("header runs past the end of the file")
    header = json.loads(raw[8 : 8 + header_length])
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("the header holds no string metadata")
    return metadata
