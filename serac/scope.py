"""The scope classifier: does some stored edit apply to this query, and which one?

For each query the classifier retrieves the ``top_k`` nearest edits from the edit store, then scores each
(edit, query) pair. The best-scoring edit wins if its score reaches ``threshold``; otherwise the query is
out of scope and the base model answers it.

Two variants:

* :class:`CrossEncoderScopeClassifier` (the SERAC paper's choice): a cross-encoder reads the edit text and
  the query together and gives the probability that the query is in the edit's scope. Candidates whose
  embedding similarity is below ``retrieval_threshold`` are dropped before the cross-encoder runs: on an
  unrelated query that skips the costly part entirely.
* :class:`EmbeddingScopeClassifier`: the score is the cosine similarity of the embeddings alone.
"""

from __future__ import annotations

import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from serac.edits import Edit
from serac.store import EditStore

logger = logging.getLogger(__name__)

SCOPE_CONFIG_NAME = "scope_config.json"
CROSS_ENCODER_FOLDER = "cross_encoder"

__all__ = [
    "CrossEncoderScopeClassifier",
    "EmbeddingScopeClassifier",
    "ScopeClassifier",
    "ScopeClassifierConfig",
    "ScopeDecision",
    "load_scope_classifier",
]


@dataclass
class ScopeClassifierConfig:
    """Settings of a scope classifier, saved with it.

    Args:
        kind: ``"cross_encoder"`` or ``"embedding"``.
        threshold: the lowest score that puts a query in an edit's scope (a probability for the
            cross-encoder, a cosine similarity for the embedding variant). Chosen on held-out data by
            training.
        top_k: edits retrieved from the store per query and scored.
        retrieval_threshold: candidates whose embedding cosine similarity is below this never reach the
            cross-encoder (only used by the cross-encoder variant; ``-1`` disables the filter).
        cross_encoder_name_or_path: where the cross-encoder came from, for reference.
        max_length: token limit of a cross-encoder (edit, query) pair.
        batch_size: pairs per cross-encoder batch.
        edit_input: what the cross-encoder reads of an edit: ``"query"``, the edit without its target (the
            prompt with its subject, or the statement), or ``"text"``, the edit with its target. Whether a
            query is in scope depends on what it asks, not on the new answer; with the target in its input a
            classifier learns to doubt edits whose answer looks implausible, which an edit often is.
    """

    kind: str = "cross_encoder"
    threshold: float = field(default=0.5, metadata={"help": "lowest in-scope score"})
    top_k: int = field(default=4, metadata={"help": "candidate edits scored per query"})
    retrieval_threshold: float = field(default=0.2, metadata={"help": "minimum cosine to be scored"})
    cross_encoder_name_or_path: str | None = None
    max_length: int = 128
    batch_size: int = 32
    edit_input: str = field(default="query", metadata={"help": "'query' (edit without target) or 'text'"})

    KINDS: ClassVar[tuple[str, ...]] = ("cross_encoder", "embedding")
    EDIT_INPUTS: ClassVar[tuple[str, ...]] = ("query", "text")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {self.kind!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not -1.0 <= self.retrieval_threshold <= 1.0:
            raise ValueError(
                f"retrieval_threshold is a cosine similarity in [-1, 1], got {self.retrieval_threshold}"
            )
        if self.edit_input not in self.EDIT_INPUTS:
            raise ValueError(f"edit_input must be one of {self.EDIT_INPUTS}, got {self.edit_input!r}")
        if self.kind == "cross_encoder" and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"a cross-encoder threshold is a probability in [0, 1], got {self.threshold}")

    def to_json(self) -> str:
        from serac import __version__

        return json.dumps({**asdict(self), "serac_version": __version__}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ScopeClassifierConfig:
        data = json.loads(text)
        data.pop("serac_version", None)
        # Classifiers saved before ``edit_input`` existed read the edit with its target.
        data.setdefault("edit_input", "text")
        return cls(**data)

    def edit_view(self, edit: Edit) -> str:
        """The text of ``edit`` the classifier reads, per :attr:`edit_input`."""
        return edit.query if self.edit_input == "query" else edit.text


@dataclass(frozen=True)
class ScopeDecision:
    """The routing of one query: in scope of which edit (if any), with what score.

    ``edit`` is the edit as it was when the decision was taken, so a concurrent removal cannot change
    what the counterfactual model is given. ``score`` is the best candidate's score, in scope or not
    (``None`` when no candidate was scored).
    """

    in_scope: bool
    edit_id: int | None = None
    score: float | None = None
    edit: Edit | None = None


class ScopeClassifier(ABC):
    """Base class: retrieval from the edit store, scoring of (edit, query) pairs, the threshold rule."""

    def __init__(self, config: ScopeClassifierConfig) -> None:
        self.config = config

    @abstractmethod
    def _score_candidates(
        self, queries: Sequence[str], candidates: list[list[tuple[int, float, Edit]]]
    ) -> list[list[float]]:
        """One score per candidate of each query."""

    @abstractmethod
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the classifier to ``directory``; :func:`load_scope_classifier` reads it back."""

    def classify(self, queries: Sequence[str], store: EditStore) -> list[ScopeDecision]:
        """Decide, for each query on its own, whether it is in the scope of a stored edit."""
        queries = _check_queries(queries)
        if not queries:
            return []
        if len(store) == 0:
            return [ScopeDecision(in_scope=False) for _ in queries]
        vectors = store.encode(queries)
        # Search and edit lookup happen under the store lock: the decisions see one consistent store.
        with store.lock:
            hits = store.search(vectors, k=self.config.top_k)
            candidates = [
                [(edit_id, similarity, store.get(edit_id)) for edit_id, similarity in row] for row in hits
            ]
        candidates = [self._prefilter(row) for row in candidates]
        scores = self._score_candidates(queries, candidates)
        decisions = []
        for row, row_scores in zip(candidates, scores, strict=True):
            if not row:
                decisions.append(ScopeDecision(in_scope=False))
                continue
            best = int(np.argmax(row_scores))
            edit_id, _, edit = row[best]
            score = float(row_scores[best])
            if score >= self.config.threshold:
                decisions.append(ScopeDecision(in_scope=True, edit_id=edit_id, score=score, edit=edit))
            else:
                decisions.append(ScopeDecision(in_scope=False, edit_id=None, score=score))
        return decisions

    def _prefilter(self, row: list[tuple[int, float, Edit]]) -> list[tuple[int, float, Edit]]:
        return row

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ScopeClassifier:
        return load_scope_classifier(directory)


class EmbeddingScopeClassifier(ScopeClassifier):
    """Scope by embedding similarity alone: the nearest edit is in scope if its cosine reaches the threshold.

    Example:
        >>> classifier = EmbeddingScopeClassifier(ScopeClassifierConfig(kind="embedding", threshold=0.7))
    """

    def __init__(self, config: ScopeClassifierConfig | None = None) -> None:
        config = config or ScopeClassifierConfig(kind="embedding", threshold=0.7, top_k=1)
        if config.kind != "embedding":
            raise ValueError(f"EmbeddingScopeClassifier needs kind='embedding', got {config.kind!r}")
        super().__init__(config)

    def _score_candidates(self, queries, candidates):
        return [[similarity for _, similarity, _ in row] for row in candidates]

    def score_pairs(self, edit_texts: Sequence[str], queries: Sequence[str], store: EditStore) -> np.ndarray:
        """Cosine similarity of each (edit text, query) pair, embedded with the store's embedder."""
        if len(edit_texts) != len(queries):
            raise ValueError(f"{len(edit_texts)} edit texts for {len(queries)} queries")
        if not queries:
            return np.zeros(0, dtype=np.float32)
        return np.sum(store.encode(list(edit_texts)) * store.encode(list(queries)), axis=1)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SCOPE_CONFIG_NAME).write_text(self.config.to_json())


class CrossEncoderScopeClassifier(ScopeClassifier):
    """Scope by a cross-encoder over (edit text, query) pairs, as in the SERAC paper.

    Args:
        cross_encoder: a ``sentence_transformers.CrossEncoder`` with one output (a logit; its activation
            turns it into a probability), or a name or path to load one from.
        config: threshold, top-k and retrieval filter.

    Example:
        >>> classifier = load_scope_classifier("my-editor/scope_classifier")  # doctest: +SKIP
        >>> classifier.score_pairs(["Ellie Kemper is a citizen of Croatia"], ["Where is Ellie Kemper from?"])
    """

    def __init__(self, cross_encoder: Any, config: ScopeClassifierConfig | None = None) -> None:
        config = config or ScopeClassifierConfig()
        if config.kind != "cross_encoder":
            raise ValueError(f"CrossEncoderScopeClassifier needs kind='cross_encoder', got {config.kind!r}")
        if isinstance(cross_encoder, (str, os.PathLike)):
            from sentence_transformers import CrossEncoder

            config.cross_encoder_name_or_path = str(cross_encoder)
            cross_encoder = CrossEncoder(str(cross_encoder), num_labels=1, max_length=config.max_length)
        if not hasattr(cross_encoder, "predict"):
            raise TypeError(
                f"cross_encoder must be a sentence_transformers.CrossEncoder, got {type(cross_encoder)}"
            )
        super().__init__(config)
        self.cross_encoder = cross_encoder

    def score_pairs(self, edit_texts: Sequence[str], queries: Sequence[str]) -> np.ndarray:
        """The in-scope probability of each (edit text, query) pair.

        ``edit_texts`` are taken as given: pass :meth:`ScopeClassifierConfig.edit_view` of each edit.
        """
        if len(edit_texts) != len(queries):
            raise ValueError(f"{len(edit_texts)} edit texts for {len(queries)} queries")
        if not queries:
            return np.zeros(0, dtype=np.float32)
        scores = self.cross_encoder.predict(
            list(zip(edit_texts, queries, strict=True)),
            batch_size=self.config.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(len(queries))

    def _prefilter(self, row):
        return [candidate for candidate in row if candidate[1] >= self.config.retrieval_threshold]

    def _score_candidates(self, queries, candidates):
        pairs = [
            (self.config.edit_view(edit), query)
            for query, row in zip(queries, candidates, strict=True)
            for _, _, edit in row
        ]
        flat = self.score_pairs([p[0] for p in pairs], [p[1] for p in pairs]).tolist()
        scores, start = [], 0
        for row in candidates:
            scores.append(flat[start : start + len(row)])
            start += len(row)
        return scores

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.cross_encoder.save(str(directory / CROSS_ENCODER_FOLDER))
        (directory / SCOPE_CONFIG_NAME).write_text(self.config.to_json())


def load_scope_classifier(directory: str | os.PathLike) -> ScopeClassifier:
    """Load a scope classifier saved by ``save_pretrained``."""
    directory = Path(directory)
    config_path = directory / SCOPE_CONFIG_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"no scope classifier in {directory} (missing {SCOPE_CONFIG_NAME})")
    config = ScopeClassifierConfig.from_json(config_path.read_text())
    if config.kind == "embedding":
        return EmbeddingScopeClassifier(config)
    import sentence_transformers
    from packaging.version import Version

    # Before 6.0, a crafted modules.json in the folder runs code while the cross-encoder loads.
    if Version(sentence_transformers.__version__) < Version("6.0"):
        raise ImportError(
            f"loading a cross-encoder scope classifier needs sentence-transformers>=6.0 (installed: "
            f"{sentence_transformers.__version__}): pip install -U 'sentence-transformers>=6.0'"
        )
    from sentence_transformers import CrossEncoder

    cross_encoder = CrossEncoder(
        str(directory / CROSS_ENCODER_FOLDER), num_labels=1, max_length=config.max_length
    )
    return CrossEncoderScopeClassifier(cross_encoder, config)


def _check_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, str):
        raise TypeError("queries must be a sequence of strings, not one string")
    queries = list(queries)
    for query in queries:
        if not isinstance(query, str):
            raise TypeError(f"queries must be strings, got {type(query).__name__}")
    return queries
