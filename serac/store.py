"""The edit store: every edit kept explicitly, with stable ids, indexed in FAISS.

The store knows nothing about language models. It holds :class:`~serac.edits.Edit` objects, embeds their
text with a sentence embedder, and answers nearest-neighbour queries. Small stores use an exact
inner-product index; past :attr:`EditStoreConfig.exact_max_size` edits the store moves to an inverted-file
(IVF) index so search stays fast at millions of edits. Embeddings are L2-normalized, so scores are cosine
similarities.

Saving writes one safetensors file through a temporary file and an atomic rename: a crash in the middle of
a save leaves the previous file intact, and a truncated or corrupted file fails its checksum on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from serac._version import __version__
from serac.edits import Edit, name_words, named_keys
from serac.files import write_bytes_atomic
from serac.offline import embed

logger = logging.getLogger(__name__)

STORE_FORMAT = "serac.edit_store"
STORE_FORMAT_VERSION = 1
STORE_FILE_NAME = "edit_store.safetensors"

__all__ = [
    "STORE_FILE_NAME",
    "EditStore",
    "EditStoreConfig",
    "EditStoreError",
    "Embedder",
    "UnknownEditError",
]


class EditStoreError(ValueError):
    """A store file that cannot be loaded: truncated, corrupted, or of an incompatible version."""


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
    """

    embedder_name_or_path: str | None = None
    exact_max_size: int = field(default=50_000, metadata={"help": "largest store searched exactly"})
    ivf_nprobe: int = field(default=16, metadata={"help": "IVF lists probed per query"})
    encode_batch_size: int = field(default=128, metadata={"help": "embedder batch size"})

    def __post_init__(self) -> None:
        if self.exact_max_size < 1:
            raise ValueError(f"exact_max_size must be >= 1, got {self.exact_max_size}")
        if self.ivf_nprobe < 1:
            raise ValueError(f"ivf_nprobe must be >= 1, got {self.ivf_nprobe}")
        if self.encode_batch_size < 1:
            raise ValueError(f"encode_batch_size must be >= 1, got {self.encode_batch_size}")


def _ivf_list_count(size: int) -> int:
    # About 4 * sqrt(n) lists is FAISS's usual advice; a power of two keeps k-means balanced.
    return int(2 ** round(math.log2(max(64.0, 4 * math.sqrt(size)))))


class EditStore:
    """Edits with stable integer ids and a FAISS index over their embeddings.

    Re-editing the same prompt (same :attr:`Edit.key`) supersedes the older edit: the newest wins and the
    older id is retired. All methods are thread-safe; one :meth:`add` or :meth:`remove` call is atomic for
    concurrent readers.

    Example:
        >>> from serac.offline import load_embedder
        >>> store = EditStore(load_embedder())
        >>> ids = store.add([Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")])
        >>> store.search(["What sport does LeBron James play?"], k=1)[0][0][0] == ids[0]
        True
    """

    def __init__(self, embedder: Embedder | None = None, config: EditStoreConfig | None = None) -> None:
        self.config = config or EditStoreConfig()
        if embedder is None:
            from serac.offline import DEFAULT_EMBEDDER, load_embedder

            embedder = load_embedder(self.config.embedder_name_or_path)
            if self.config.embedder_name_or_path is None:
                self.config.embedder_name_or_path = DEFAULT_EMBEDDER
        self.embedder = embedder
        self.dimension = int(self._encode(["dimension probe"]).shape[1])
        self.lock = threading.RLock()
        self._edits: dict[int, Edit] = {}
        self._key_to_id: dict[str, int] = {}
        # Edit ids by the words of their subject: every edit about an entity, for the scope classifier.
        self._by_subject: dict[tuple[str, ...], set[int]] = {}
        self._longest_subject = 0
        self._next_id = 0
        self._index: faiss.Index = self._new_exact_index()
        self._ivf_trained_size = 0

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._edits)

    def __contains__(self, edit_id: object) -> bool:
        return edit_id in self._edits

    def __iter__(self) -> Iterator[int]:
        with self.lock:
            return iter(list(self._edits))

    def items(self) -> list[tuple[int, Edit]]:
        """``(id, edit)`` pairs in insertion order (a snapshot)."""
        with self.lock:
            return list(self._edits.items())

    def get(self, edit_id: int) -> Edit:
        """The edit with this id; :class:`UnknownEditError` if there is none."""
        try:
            return self._edits[edit_id]
        except KeyError:
            raise UnknownEditError(f"no edit with id {edit_id!r} in the store") from None

    def get_many(self, edit_ids: Iterable[int]) -> list[Edit]:
        with self.lock:
            return [self.get(edit_id) for edit_id in edit_ids]

    def id_of(self, edit: Edit) -> int | None:
        """The id of the stored edit with the same prompt as ``edit``, if any."""
        return self._key_to_id.get(edit.key)

    @property
    def index_kind(self) -> str:
        """``"exact"`` or ``"ivf"``."""
        return "ivf" if isinstance(self._index, faiss.IndexIVF) else "exact"

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
        is already stored supersedes the stored one (so does a later duplicate within ``edits``).
        ``embeddings`` (shape ``(len(edits), dimension)``, from the same embedder, e.g. computed in bulk
        elsewhere) skips the embedding step; they are L2-normalized here.
        """
        edits = self._check_edits(edits)
        if not edits:
            return []
        if embeddings is not None:
            vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
            if vectors.shape != (len(edits), self.dimension):
                raise ValueError(
                    f"embeddings must have shape ({len(edits)}, {self.dimension}), got {tuple(vectors.shape)}"
                )
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        else:
            if show_progress is None:
                show_progress = len(edits) >= 10 * self.config.encode_batch_size
            vectors = self._encode([edit.text for edit in edits], show_progress=show_progress)
        with self.lock:
            superseded = [self._key_to_id[e.key] for e in edits if e.key in self._key_to_id]
            ids = np.arange(self._next_id, self._next_id + len(edits), dtype=np.int64)
            # Later duplicates inside one call supersede earlier ones, as separate calls would.
            last_for_key = {edit.key: i for i, edit in enumerate(edits)}
            keep = np.array([last_for_key[edit.key] == i for i, edit in enumerate(edits)])
            superseded.extend(int(i) for i in ids[~keep])
            self._index_add(vectors[keep], ids[keep])
            self._next_id += len(edits)
            for edit_id, edit, kept in zip(ids.tolist(), edits, keep.tolist(), strict=True):
                if kept:
                    self._edits[edit_id] = edit
                    self._key_to_id[edit.key] = edit_id
                    self._index_subjects(edit_id, edit, add=True)
            old = [edit_id for edit_id in superseded if edit_id in self._edits]
            for edit_id in old:
                self._index_subjects(edit_id, self._edits.pop(edit_id), add=False)
            if old:
                self._index.remove_ids(np.asarray(old, dtype=np.int64))
            if superseded:
                logger.info("%d edit(s) superseded by newer edits of the same prompt", len(superseded))
        return ids.tolist()

    def remove(self, edit_ids: Iterable[int]) -> None:
        """Remove edits by id. Every id is checked first: one unknown id removes nothing."""
        edit_ids = list(edit_ids)
        with self.lock:
            for edit_id in edit_ids:
                if isinstance(edit_id, bool) or not isinstance(edit_id, (int, np.integer)):
                    raise TypeError(f"edit ids are integers, got {type(edit_id).__name__}")
                if edit_id not in self._edits:
                    raise UnknownEditError(f"no edit with id {edit_id!r} in the store")
            unique = sorted(set(int(i) for i in edit_ids))
            for edit_id in unique:
                edit = self._edits.pop(edit_id)
                self._index_subjects(edit_id, edit, add=False)
                if self._key_to_id.get(edit.key) == edit_id:
                    del self._key_to_id[edit.key]
            if unique:
                self._index.remove_ids(np.asarray(unique, dtype=np.int64))

    def update(self, edit_id: int, edit: Edit) -> None:
        """Replace the edit stored under ``edit_id``, keeping the id."""
        (edit,) = self._check_edits([edit])
        vector = self._encode([edit.text])
        with self.lock:
            old = self.get(edit_id)
            other = self._key_to_id.get(edit.key)
            if other is not None and other != edit_id:
                raise ValueError(f"edit {other} already holds the prompt {edit.query!r}; remove it first")
            self._index.remove_ids(np.asarray([edit_id], dtype=np.int64))
            self._index_add(vector, np.asarray([edit_id], dtype=np.int64))
            del self._key_to_id[old.key]
            self._index_subjects(edit_id, old, add=False)
            self._index_subjects(edit_id, edit, add=True)
            self._edits[edit_id] = edit
            self._key_to_id[edit.key] = edit_id

    def clear(self) -> None:
        """Remove every edit (ids are never reused)."""
        with self.lock:
            self._edits.clear()
            self._by_subject.clear()
            self._key_to_id.clear()
            self._index = self._new_exact_index()
            self._ivf_trained_size = 0

    # ------------------------------------------------------------------ search
    def ids_named_in(self, text: str, limit: int | None = None) -> list[int]:
        """Ids of the stored edits whose subject ``text`` names (:func:`~serac.edits.mentions_subject`).

        A lookup by exact words, independent of embedding similarity: it finds every edit about an entity
        however many other edits sit nearer in embedding space. With ``limit``, the newest ones.
        """
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
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        vectors = queries if isinstance(queries, np.ndarray) else self._encode(list(queries))
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise ValueError(f"query embeddings must have shape (n, {self.dimension}), got {vectors.shape}")
        with self.lock:
            if not self._edits:
                return [[] for _ in range(len(vectors))]
            scores, ids = self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write the store to one file, atomically. A directory gets ``edit_store.safetensors`` inside."""
        from safetensors.numpy import save as safetensors_save

        path = Path(path)
        if path.is_dir():
            path = path / STORE_FILE_NAME
        with self.lock:
            records = [{"id": edit_id, **edit.to_dict()} for edit_id, edit in self._edits.items()]
            edits_bytes = np.frombuffer(
                json.dumps(records, ensure_ascii=False).encode("utf-8"), dtype=np.uint8
            )
            index_bytes = faiss.serialize_index(self._index)
            metadata = {
                "format": STORE_FORMAT,
                "format_version": str(STORE_FORMAT_VERSION),
                "serac_version": __version__,
                "config": json.dumps(asdict(self.config), sort_keys=True),
                "dimension": str(self.dimension),
                "next_id": str(self._next_id),
                "size": str(len(self._edits)),
                "ivf_trained_size": str(self._ivf_trained_size),
                "edits_sha256": hashlib.sha256(edits_bytes.tobytes()).hexdigest(),
                "index_sha256": hashlib.sha256(index_bytes.tobytes()).hexdigest(),
            }
            payload = safetensors_save({"edits": edits_bytes, "index": index_bytes}, metadata=metadata)
        write_bytes_atomic(path, payload)
        logger.info("Saved %d edits to %s", len(records), path)
        return path

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, embedder: Embedder | None = None, config: EditStoreConfig | None = None
    ) -> EditStore:
        """Open a store written by :meth:`save_pretrained`; :class:`EditStoreError` if the file is unusable."""
        from safetensors import SafetensorError
        from safetensors.numpy import load as safetensors_load

        path = Path(path)
        if path.is_dir():
            path = path / STORE_FILE_NAME
        if not path.exists():
            raise FileNotFoundError(f"no edit store at {path}")
        raw = path.read_bytes()
        try:
            tensors = safetensors_load(raw)
            metadata = _read_metadata(raw)
        except (SafetensorError, ValueError, json.JSONDecodeError) as error:
            raise EditStoreError(
                f"{path} is not a readable edit store (truncated or corrupt): {error}"
            ) from None
        if metadata.get("format") != STORE_FORMAT:
            raise EditStoreError(f"{path} is not an edit store (format {metadata.get('format')!r})")
        if metadata.get("format_version") != str(STORE_FORMAT_VERSION):
            raise EditStoreError(
                f"{path} has store format version {metadata.get('format_version')}, "
                f"this serac reads version {STORE_FORMAT_VERSION}"
            )
        for name in ("edits", "index"):
            if name not in tensors or hashlib.sha256(tensors[name].tobytes()).hexdigest() != metadata.get(
                f"{name}_sha256"
            ):
                raise EditStoreError(f"{path}: the {name} section fails its checksum (corrupt file)")
        saved_config = EditStoreConfig(**json.loads(metadata["config"]))
        store = cls(embedder, config or saved_config)
        if store.dimension != int(metadata["dimension"]):
            raise EditStoreError(
                f"{path} holds {metadata['dimension']}-d embeddings, the embedder gives {store.dimension}-d"
            )
        records = json.loads(tensors["edits"].tobytes().decode("utf-8"))
        store._index = faiss.deserialize_index(tensors["index"])
        if isinstance(store._index, faiss.IndexIVF):
            store._index.nprobe = store.config.ivf_nprobe
        for record in records:
            edit_id = record.pop("id")
            edit = Edit.from_dict(record)
            store._edits[edit_id] = edit
            store._index_subjects(edit_id, edit, add=True)
            store._key_to_id[edit.key] = edit_id
        store._next_id = int(metadata["next_id"])
        store._ivf_trained_size = int(metadata["ivf_trained_size"])
        if store._index.ntotal != len(store._edits):
            raise EditStoreError(
                f"{path}: index holds {store._index.ntotal} vectors for {len(records)} edits"
            )
        return store

    def save(self, path: str | os.PathLike) -> Path:
        """Deprecated name of :meth:`save_pretrained`, kept so that code using the old name still runs."""
        warnings.warn("EditStore.save is deprecated; use save_pretrained", DeprecationWarning, stacklevel=2)
        return self.save_pretrained(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, embedder: Embedder | None = None, config: EditStoreConfig | None = None
    ) -> EditStore:
        """Deprecated name of :meth:`from_pretrained`, kept so that code using the old name still runs."""
        warnings.warn("EditStore.load is deprecated; use from_pretrained", DeprecationWarning, stacklevel=2)
        return cls.from_pretrained(path, embedder, config)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _check_edits(edits: Sequence[Edit]) -> list[Edit]:
        if isinstance(edits, Edit):
            edits = [edits]
        edits = list(edits)
        for edit in edits:
            if not isinstance(edit, Edit):
                raise TypeError(f"expected serac.Edit objects, got {type(edit).__name__}")
        return edits

    def _encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        return embed(
            self.embedder, texts, batch_size=self.config.encode_batch_size, show_progress=show_progress
        )

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
        if needs_rebuild:
            old_vectors, old_ids = self._all_vectors()
            self._index = self._build_ivf(
                np.concatenate([old_vectors, vectors]), np.concatenate([old_ids, ids])
            )
        else:
            self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.fromiter(self._edits.keys(), dtype=np.int64, count=len(self._edits))
        vectors = np.empty((len(ids), self.dimension), dtype=np.float32)
        if len(ids):
            self._index.reconstruct_batch(ids, vectors)
        return vectors, ids

    def _build_ivf(self, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
        lists = _ivf_list_count(len(ids))
        logger.info("Building an IVF index with %d lists over %d edits", lists, len(ids))
        quantizer = faiss.IndexFlatIP(self.dimension)
        index = faiss.IndexIVFFlat(quantizer, self.dimension, lists, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(len(vectors), size=min(len(vectors), 64 * lists), replace=False)]
        index.train(sample)
        # A hash-table direct map lets the index reconstruct and remove vectors by arbitrary id.
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        index.nprobe = self.config.ivf_nprobe
        self._ivf_trained_size = len(ids)
        return index


def _read_metadata(raw: bytes) -> dict[str, str]:
    if len(raw) < 8:
        raise ValueError("file too short")
    header_length = int.from_bytes(raw[:8], "little")
    if 8 + header_length > len(raw):
        raise ValueError("header runs past the end of the file")
    return json.loads(raw[8 : 8 + header_length]).get("__metadata__", {})
