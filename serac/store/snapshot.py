"""The edit store's snapshot file: one safetensors file that a store is saved to and opened from.

Format 3 holds the ids, the unit embeddings, the edits as JSON and the embedder's fingerprint, the same for
the history of retired edits (with the id of the edit that retired each), and one SHA-256 over every byte
(metadata included). Format 2 is format 3 without the history; format 1 (serac 0.1.0) held a serialized
FAISS index instead. Both are still read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from serac._version import __version__
from serac.edits import Edit
from serac.files import write_bytes_atomic
from serac.store.config import EditStoreConfig, EditStoreError
from serac.store.database import RetiredRow, dumps_edit

STORE_FORMAT = "serac.edit_store"
STORE_FORMAT_VERSION = 3
READABLE_FORMAT_VERSIONS = (1, 2, 3)
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

__all__ = ["STORE_FILE_NAME", "History", "Snapshot", "read_snapshot", "write_snapshot"]


@dataclass
class Snapshot:
    """A validated store file: edits with ids, their unit embeddings, the id counter, and the history of
    retired edits (``retired_by`` is -1 where no retiring edit was recorded; empty before format 3)."""

    ids: np.ndarray
    edits: list[Edit]
    vectors: np.ndarray
    next_id: int
    config: EditStoreConfig
    dimension: int
    probe: np.ndarray | None
    retired_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    retired_edits: list[Edit] = field(default_factory=list)
    retired_vectors: np.ndarray | None = None
    retired_by: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if self.retired_vectors is None:
            self.retired_vectors = np.zeros((0, self.dimension), dtype=np.float32)

    def retired_rows(self) -> list[RetiredRow]:
        """The history as the database holds it."""
        vectors = np.ascontiguousarray(self.retired_vectors, dtype=np.float32)
        return [
            RetiredRow(
                int(edit_id), dumps_edit(edit.to_dict()), vector.tobytes(), None if by < 0 else int(by)
            )
            for edit_id, edit, vector, by in zip(
                self.retired_ids.tolist(), self.retired_edits, vectors, self.retired_by.tolist(), strict=True
            )
        ]


@dataclass
class History:
    """The retired edits a snapshot holds: ids, unit embeddings, edit records, and who retired each (-1:
    not recorded)."""

    ids: np.ndarray
    vectors: np.ndarray
    records: list[dict[str, Any]]
    retired_by: np.ndarray

    @classmethod
    def from_rows(cls, rows: list[RetiredRow], dimension: int) -> History:
        """The history the database holds (rows read with their embeddings), to write."""
        return cls(
            np.asarray([row.id for row in rows], dtype=np.int64),
            np.frombuffer(b"".join(row.embedding for row in rows), dtype=np.float32).reshape(-1, dimension),
            [json.loads(row.edit) for row in rows],
            np.asarray([-1 if row.retired_by is None else row.retired_by for row in rows], dtype=np.int64),
        )


def write_snapshot(
    path: Path,
    ids: np.ndarray,
    vectors: np.ndarray,
    records: list[dict[str, Any]],
    probe: np.ndarray,
    config: EditStoreConfig,
    dimension: int,
    next_id: int,
    history: History | None = None,
) -> None:
    """Write a format-3 snapshot atomically (a temporary file, fsync, one rename)."""
    from safetensors.numpy import save as safetensors_save

    if history is None:
        empty = np.zeros(0, dtype=np.int64)
        history = History(empty, np.zeros((0, dimension), dtype=np.float32), [], empty)
    tensors = {
        "ids": ids.astype(np.int64),
        "embeddings": np.ascontiguousarray(vectors, dtype=np.float32),
        "edits": _json_bytes(records),
        "embedder_probe": probe,
        "retired_ids": history.ids.astype(np.int64),
        "retired_embeddings": np.ascontiguousarray(history.vectors, dtype=np.float32).reshape(-1, dimension),
        "retired_edits": _json_bytes(history.records),
        "retired_by": history.retired_by.astype(np.int64),
    }
    metadata = {
        "format": STORE_FORMAT,
        "format_version": str(STORE_FORMAT_VERSION),
        "serac_version": __version__,
        "config": json.dumps(asdict(config), sort_keys=True),
        "dimension": str(dimension),
        "next_id": str(next_id),
        "size": str(len(records)),
    }
    metadata["sha256"] = snapshot_digest(metadata, tensors)
    write_bytes_atomic(path, safetensors_save(tensors, metadata=metadata))


def _json_bytes(records: list[dict[str, Any]]) -> np.ndarray:
    return np.frombuffer(json.dumps(records, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def snapshot_digest(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({k: v for k, v in metadata.items() if k != "sha256"}, sort_keys=True).encode())
    for name in sorted(tensors):
        array = tensors[name]
        digest.update(f"\n{name}:{array.dtype.str}:{array.shape}\n".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def read_snapshot(path: Path) -> Snapshot:
    """Parse and check a store file of any readable format version; every failure is an EditStoreError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as safetensors_load

    raw = path.read_bytes()
    try:
        metadata = read_metadata(raw)
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
        snapshot = _parse_v1(metadata, tensors) if version == 1 else _parse_v2(metadata, tensors, version)
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


def _parse_v1(metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> Snapshot:
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
    return Snapshot(np.asarray(ids, dtype=np.int64), edits, vectors, next_id, config, dimension, None)


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


def _parse_v2(metadata: dict[str, str], tensors: dict[str, np.ndarray], version: int) -> Snapshot:
    """Formats 2 and 3 (format 3 adds the history)."""
    expected = {"ids", "embeddings", "edits", "embedder_probe"}
    if version >= 3:
        expected |= {"retired_ids", "retired_embeddings", "retired_edits", "retired_by"}
    if set(tensors) != expected:
        raise EditStoreError(f"sections {sorted(tensors)} instead of {sorted(expected)}")
    if snapshot_digest(metadata, tensors) != metadata.get("sha256"):
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
    snapshot = Snapshot(ids.copy(), edits, vectors.copy(), next_id, config, dimension, probe.copy())
    if version >= 3:
        retired_ids, retired_by = tensors["retired_ids"], tensors["retired_by"]
        retired_vectors = tensors["retired_embeddings"]
        count = len(retired_ids)
        if retired_ids.dtype != np.int64 or retired_ids.ndim != 1:
            raise EditStoreError("the retired_ids section is not int64 ids")
        if retired_by.dtype != np.int64 or retired_by.shape != (count,):
            raise EditStoreError(f"the retired_by section is not {count} int64 ids")
        if retired_vectors.dtype != np.float32 or retired_vectors.shape != (count, dimension):
            raise EditStoreError(f"the retired_embeddings section is not ({count}, {dimension}) float32")
        retired_records = json.loads(tensors["retired_edits"].tobytes().decode("utf-8"))
        if not isinstance(retired_records, list) or len(retired_records) != count:
            raise EditStoreError(f"the retired_edits section does not hold {count} records")
        snapshot.retired_ids = retired_ids.copy()
        snapshot.retired_by = retired_by.copy()
        snapshot.retired_vectors = retired_vectors.copy()
        snapshot.retired_edits = [_edit_from_record(record) for record in retired_records]
    return snapshot


def _edit_from_record(record: Any) -> Edit:
    if not isinstance(record, dict):
        raise EditStoreError(f"an edit record is not an object: {record!r:.80}")
    try:
        return Edit.from_dict(record)
    except (KeyError, TypeError, ValueError) as error:
        raise EditStoreError(f"an invalid edit record {record!r:.80}: {error}") from None


def _validate_snapshot(snapshot: Snapshot) -> None:
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
    retired = snapshot.retired_ids
    if len(retired):
        if int(retired.min()) < 0 or len(np.unique(retired)) != len(retired):
            raise EditStoreError("retired edit ids are negative or repeated")
        if np.intersect1d(retired, ids).size:
            raise EditStoreError("an edit id is both live and retired")
        if snapshot.next_id <= int(retired.max()) or snapshot.next_id <= int(snapshot.retired_by.max()):
            raise EditStoreError(
                f"next_id {snapshot.next_id} is not past every retired edit id (ids would be reused)"
            )
        if int(snapshot.retired_by.min()) < -1:
            raise EditStoreError("a retired edit names a negative id as the edit that retired it")
    for vectors in (snapshot.vectors, snapshot.retired_vectors):
        if not np.all(np.isfinite(vectors)):
            raise EditStoreError("embeddings hold NaN or infinite values")
        if len(vectors) and float(np.max(np.abs(np.linalg.norm(vectors, axis=1) - 1.0))) > NORM_TOLERANCE:
            raise EditStoreError("embeddings are not unit vectors")


def read_metadata(raw: bytes) -> dict[str, str]:
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
