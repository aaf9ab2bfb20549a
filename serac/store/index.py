"""The FAISS indexes of an edit store: exact inner product for small stores, IVF past a size limit."""

from __future__ import annotations

import logging
import math

import faiss
import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["build_ivf_index", "ivf_list_count", "new_exact_index"]


def ivf_list_count(size: int) -> int:
    # About 4 * sqrt(n) lists is FAISS's usual advice; a power of two keeps k-means balanced. k-means needs
    # ~39 points per list, so a small store (exact_max_size below 64) gets fewer lists, down to one.
    wanted = 2 ** round(math.log2(max(64.0, 4 * math.sqrt(size))))
    affordable = 2 ** int(math.floor(math.log2(max(1.0, size / 39))))
    return int(max(1, min(wanted, affordable)))


def new_exact_index(dimension: int) -> faiss.Index:
    """An exact inner-product index addressed by edit id."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def build_ivf_index(vectors: np.ndarray, ids: np.ndarray, dimension: int, nprobe: int) -> faiss.Index:
    """An IVF index over ``vectors`` (unit rows) with ``ids``, about ``4 * sqrt(n)`` lists."""
    lists = ivf_list_count(len(ids))
    logger.info("Building an IVF index with %d lists over %d edits", lists, len(ids))
    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFFlat(quantizer, dimension, lists, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(len(vectors), size=min(len(vectors), 64 * lists), replace=False)]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    # A hash-table direct map lets the index reconstruct and remove vectors by arbitrary id.
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids))
    index.nprobe = nprobe
    return index
