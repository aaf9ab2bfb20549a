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

import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from serac.edits import Edit, mask_subject, mentions_subject, same_entity, shared_name
from serac.files import JsonConfigMixin
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
class ScopeClassifierConfig(JsonConfigMixin):
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
        subject_match: an edit that names its subject (a prompt edit with ``subject``) is a candidate only for
            queries that name that subject (:func:`~serac.edits.mentions_subject`). What an edit is about is
            then decided by exact text, which no learned score confuses with a look-alike name or another
            entity of the same relation; the classifier is left to judge the relation.
        last_sentence: a query of several sentences is also retrieved and scored by its last sentence, and
            the better of the two scores counts, so a question asked after some unrelated context still
            reaches its edit.
        subject_candidates: besides the ``top_k`` nearest edits, up to this many edits whose subject the
            query names (the newest first; found by exact words in the edit store's subject index) are
            scored, so an edit is reached however many others sit nearer in embedding space; 0: none.
        mask_subject: the cross-encoder reads an edit with a subject, and the query, with the subject's
            mentions replaced by a placeholder (:meth:`pair`): which entity is meant is settled by the
            subject match, and the classifier judges what is asked of it, whatever the entity's name.
        same_fact_threshold: the lowest score, in both directions, at which two edits about the same entity
            state the same fact, so that the newer retires the older (:meth:`ScopeClassifier.same_fact`).
            Higher than ``threshold``: routing a query to the wrong edit costs one answer, retiring an edit
            costs every answer it gave. For the embedding variant the score is the cosine of the two edits'
            queries with the entity masked (MiniLM: 0.98 for "Who is the mayor of X?" against "Which person
            is the mayor of X?", 0.64 for "X was born in" against "X died in").
        similarity_weight: how much the cosine similarity of the pair as the cross-encoder reads it (the
            subject masked, embedded by the edit store's embedder) moves a cross-encoder's score: the score is
            ``sigmoid(logit(p) + similarity_weight * (cosine - similarity_center))``. The embedder was trained
            on paraphrases of every kind, the cross-encoder on a few phrasings per relation, so the cosine
            vouches for wordings of a relation the cross-encoder never saw ("Which university educated X?"
            against "Where did X go to college?"). ``0``: the cross-encoder's probability alone.
        similarity_center: the cosine at which the similarity term is zero; above it a pair gains, below it
            loses.
    """

    kind: str = "cross_encoder"
    threshold: float = field(default=0.5, metadata={"help": "lowest in-scope score"})
    top_k: int = field(default=8, metadata={"help": "candidate edits scored per query"})
    retrieval_threshold: float = field(default=0.2, metadata={"help": "minimum cosine to be scored"})
    cross_encoder_name_or_path: str | None = None
    max_length: int = 128
    batch_size: int = 32
    edit_input: str = field(default="query", metadata={"help": "'query' (edit without target) or 'text'"})
    subject_match: bool = field(default=True, metadata={"help": "queries must name an edit's subject"})
    last_sentence: bool = field(default=True, metadata={"help": "also score a query's last sentence"})
    mask_subject: bool = field(default=True, metadata={"help": "hide the subject's name from the scorer"})
    subject_candidates: int = field(default=32, metadata={"help": "edits found by subject, scored per query"})
    same_fact_threshold: float = field(
        default=0.9, metadata={"help": "lowest score for one edit to retire another"}
    )
    similarity_weight: float = field(default=0.0, metadata={"help": "weight of the masked pair's cosine"})
    similarity_center: float = field(default=0.6, metadata={"help": "cosine at which that term is zero"})

    KINDS: ClassVar[tuple[str, ...]] = ("cross_encoder", "embedding")
    EDIT_INPUTS: ClassVar[tuple[str, ...]] = ("query", "text")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {self.kind!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.subject_candidates < 0:
            raise ValueError(f"subject_candidates must be >= 0, got {self.subject_candidates}")
        if not -1.0 <= self.retrieval_threshold <= 1.0:
            raise ValueError(
                f"retrieval_threshold is a cosine similarity in [-1, 1], got {self.retrieval_threshold}"
            )
        if self.edit_input not in self.EDIT_INPUTS:
            raise ValueError(f"edit_input must be one of {self.EDIT_INPUTS}, got {self.edit_input!r}")
        if self.kind == "cross_encoder" and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"a cross-encoder threshold is a probability in [0, 1], got {self.threshold}")
        if self.similarity_weight < 0:
            raise ValueError(f"similarity_weight must be >= 0, got {self.similarity_weight}")
        if not -1.0 <= self.similarity_center <= 1.0:
            raise ValueError(
                f"similarity_center is a cosine similarity in [-1, 1], got {self.similarity_center}"
            )
        low = 0.0 if self.kind == "cross_encoder" else -1.0
        if not low <= self.same_fact_threshold <= 1.0:
            raise ValueError(f"same_fact_threshold must be in [{low:g}, 1], got {self.same_fact_threshold}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScopeClassifierConfig:
        # Classifiers saved before these settings existed keep the behaviour they were measured with.
        data.setdefault("edit_input", "text")
        data.setdefault("subject_match", False)
        data.setdefault("last_sentence", False)
        data.setdefault("mask_subject", False)
        data.setdefault("subject_candidates", 0)
        return cls(**data)

    def edit_view(self, edit: Edit) -> str:
        """The text of ``edit`` the classifier reads, per :attr:`edit_input`."""
        return edit.query if self.edit_input == "query" else edit.text

    def pair(self, edit_view: str, subject: str | None, query: str) -> tuple[str, str]:
        """The two texts a cross-encoder reads for an edit (its :meth:`edit_view` and subject) and a query."""
        if self.mask_subject and not subject:
            # An edit that names no subject: the name it shares with the query stands in for one, so the
            # cross-encoder reads the pair as it was trained to.
            subject = shared_name(edit_view, query)
        if self.mask_subject and subject:
            return mask_subject(subject, edit_view), mask_subject(subject, query)
        return edit_view, query


@dataclass(frozen=True)
class ScopeDecision:
    """The routing of one query: in scope of which edit (if any), with what score.

    ``edit`` is the edit as it was when the decision was taken, so a concurrent removal cannot change
    what the counterfactual model is given. ``score`` is the best candidate's score, in scope or not
    (``None`` when no candidate was scored). For a conversation, ``query`` is the text that was routed
    (the question, completed from earlier turns: :mod:`serac.conversation`) and ``turn`` the index of the
    message whose question it is; both are ``None`` for a single query, which is routed as it is. ``linked``
    holds the stored edits that follow from ``edit`` which an in-context counterfactual model reads with it
    (:attr:`serac.in_context.InContextConfig.linked_edits`; empty otherwise).
    """

    in_scope: bool
    edit_id: int | None = None
    score: float | None = None
    edit: Edit | None = None
    query: str | None = None
    turn: int | None = None
    linked: tuple[Edit, ...] = ()


class ScopeClassifier(ABC):
    """Base class: retrieval from the edit store, scoring of (edit, query) pairs, the threshold rule."""

    def __init__(self, config: ScopeClassifierConfig) -> None:
        self.config = config

    @abstractmethod
    def _score_candidates(
        self,
        views: Sequence[Sequence[str]],
        candidates: list[list[tuple[int, float, Edit]]],
        store: EditStore,
        pairwise: bool = False,
    ) -> list[list[float]]:
        """One score per candidate of each query; ``views`` holds each query's texts (the query first).

        With ``pairwise``, ``views[i][j]`` is the one text candidate ``j`` of row ``i`` is scored against.
        """

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
        views = [self._views(query) for query in queries]
        flat = [view for row in views for view in row]
        vectors = store.encode(flat)
        # Search and edit lookup happen under the store lock: the decisions see one consistent store.
        with store.lock:
            hits = store.search(vectors, k=self.config.top_k)
            named = [self._named(query, store) for query in queries]
            edits = {edit_id: store.get(edit_id) for row in hits for edit_id, _ in row}
            edits.update((edit_id, store.get(edit_id)) for row in named for edit_id in row)
        candidates, start = [], 0
        for query, row_views, row_named in zip(queries, views, named, strict=True):
            # One candidate per edit, with its best similarity over the query's views.
            best: dict[int, float] = {}
            for row in hits[start : start + len(row_views)]:
                for edit_id, similarity in row:
                    best[edit_id] = max(similarity, best.get(edit_id, -np.inf))
            start += len(row_views)
            for edit_id in row_named:
                # Named by exact words: it passes the similarity filter whatever its embedding says.
                best[edit_id] = np.inf
            ranked = sorted(best.items(), key=lambda item: -item[1])
            row = [(edit_id, similarity, edits[edit_id]) for edit_id, similarity in ranked]
            candidates.append(self._prefilter(query, row))
        scores = self._score_candidates(views, candidates, store)
        decisions = []
        for row, row_scores in zip(candidates, scores, strict=True):
            if not row:
                decisions.append(ScopeDecision(in_scope=False))
                continue
            best_index = int(np.argmax(row_scores))
            edit_id, _, edit = row[best_index]
            score = float(row_scores[best_index])
            if score >= self.config.threshold:
                decisions.append(ScopeDecision(in_scope=True, edit_id=edit_id, score=score, edit=edit))
            else:
                decisions.append(ScopeDecision(in_scope=False, edit_id=None, score=score))
        return decisions

    def same_fact(
        self,
        edit_ids: Sequence[int],
        store: EditStore,
        *,
        query_vectors: Mapping[int, np.ndarray] | None = None,
    ) -> dict[int, list[int]]:
        """For each stored edit in ``edit_ids``, the older stored edits that state the same fact.

        Two edits state the same fact when they are about the same entity (the same subject, or for edits
        without one the same names: :func:`~serac.edits.same_entity`) and ask the same of it: each one's
        query scores at least :attr:`ScopeClassifierConfig.same_fact_threshold` against the other ("Who
        designed X?" and "Which architect built X?"). A correction of a fact, whatever its wording, then
        replaces the earlier correction instead of competing with it; edits about other entities, or other
        relations of the same entity, are never taken for one fact. An older edit is one with a smaller id.
        ``query_vectors`` (edit id -> the embedding of its query) spares embedding queries the caller has
        embedded already.

        Example:
            >>> ids = store.add([Edit(prompt="Who designed {}?", subject="X", target="A"),
            ...                  Edit(prompt="Which architect built {}?", subject="X", target="B")])  # doctest: +SKIP
            >>> classifier.same_fact(ids, store)  # doctest: +SKIP
            {1: [0]}
        """
        with store.lock:
            edits = {edit_id: store.get(edit_id) for edit_id in edit_ids}
        if not edits:
            return {}
        newer_ids = list(edits)
        queries = [edits[edit_id].query for edit_id in newer_ids]
        if query_vectors is not None and all(edit_id in query_vectors for edit_id in newer_ids):
            vectors = np.stack([query_vectors[edit_id] for edit_id in newer_ids])  # embedded by the caller
        else:
            vectors = store.encode(queries)
        pairs: list[tuple[int, int, Edit, Edit, str]] = []
        with store.lock:
            hits = store.search(vectors, k=self.config.top_k)
            for edit_id, query, row in zip(newer_ids, queries, hits, strict=True):
                similar = dict(row)
                similar.update((other, np.inf) for other in self._named(query, store))
                candidates = [
                    (other, value, store.get(other)) for other, value in similar.items() if other < edit_id
                ]
                for other, _, older in self._prefilter(query, candidates):
                    entity = same_entity(edits[edit_id], older)
                    if entity is not None:
                        pairs.append((edit_id, other, edits[edit_id], older, entity))
        if not pairs:
            return {}
        scores = self._same_fact_scores(
            [(newer, older, entity) for _, _, newer, older, entity in pairs], store
        )
        found: dict[int, list[int]] = {}
        for (edit_id, other, _, _, _), score in zip(pairs, scores, strict=True):
            if score >= self.config.same_fact_threshold:
                found.setdefault(edit_id, []).append(other)
        return found

    def _same_fact_scores(self, pairs: Sequence[tuple[Edit, Edit, str]], store: EditStore) -> list[float]:
        """For each (newer, older, entity) pair, the lower of its two scores: the newer edit's query against
        the older edit, and the older edit's query against the newer one."""
        forward = self._score_candidates(
            [[newer.query for newer, _, _ in pairs]],
            [[(0, 1.0, older) for _, older, _ in pairs]],
            store,
            pairwise=True,
        )[0]
        # The other direction only where the first holds: most candidates fail it.
        passing = [index for index, score in enumerate(forward) if score >= self.config.same_fact_threshold]
        backward = self._score_candidates(
            [[pairs[index][1].query for index in passing]],
            [[(0, 1.0, pairs[index][0]) for index in passing]],
            store,
            pairwise=True,
        )[0]
        scores = list(forward)
        for index, score in zip(passing, backward, strict=True):
            scores[index] = min(forward[index], score)
        return scores

    def _named(self, query: str, store: EditStore) -> list[int]:
        if not (self.config.subject_match and self.config.subject_candidates):
            return []
        return store.ids_named_in(query, limit=self.config.subject_candidates)

    def _views(self, query: str) -> list[str]:
        """The texts a query is retrieved and scored by: itself, and its last sentence if it has several."""
        if self.config.last_sentence:
            last = last_sentence(query)
            if last and last != query.strip():
                return [query, last]
        return [query]

    def _prefilter(self, query: str, row: list[tuple[int, float, Edit]]) -> list[tuple[int, float, Edit]]:
        if not self.config.subject_match:
            return row
        return [
            candidate
            for candidate in row
            if candidate[2].subject is None or mentions_subject(candidate[2].subject, query)
        ]

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

    def _score_candidates(self, views, candidates, store, pairwise=False):
        if pairwise:
            return [
                self.score_pairs([edit.text for _, _, edit in row], list(texts), store).tolist()
                if row
                else []
                for texts, row in zip(views, candidates, strict=True)
            ]
        scores = []
        for row_views, row in zip(views, candidates, strict=True):
            # An edit found through the subject index has no similarity yet: embed the pair to get one.
            missing = [index for index, (_, similarity, _) in enumerate(row) if not np.isfinite(similarity)]
            row_scores = [similarity for _, similarity, _ in row]
            if missing:
                filled = self.score_pairs(
                    [row[i][2].text for i in missing], [row_views[0]] * len(missing), store
                )
                for index, value in zip(missing, filled.tolist(), strict=True):
                    row_scores[index] = value
            scores.append(row_scores)
        return scores

    def _same_fact_scores(self, pairs, store):
        # Two edits about one entity are near each other in embedding space whatever they ask of it (the
        # name dominates short texts): compare what they ask, with the entity masked in both.
        newer = [mask_subject(entity, first.query) for first, _, entity in pairs]
        older = [mask_subject(entity, second.query) for _, second, entity in pairs]
        return self.score_pairs(newer, older, store).tolist()

    def score_pairs(self, edit_texts: Sequence[str], queries: Sequence[str], store: EditStore) -> np.ndarray:
        """Cosine similarity of each (edit text, query) pair, embedded with the store's embedder."""
        if len(edit_texts) != len(queries):
            raise ValueError(f"{len(edit_texts)} edit texts for {len(queries)} queries")
        return pair_cosines(store, list(zip(edit_texts, queries, strict=True)))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_json(directory / SCOPE_CONFIG_NAME)


class CrossEncoderScopeClassifier(ScopeClassifier):
    """Scope by a cross-encoder over (edit text, query) pairs, as in the SERAC paper.

    Args:
        cross_encoder: a ``sentence_transformers.CrossEncoder`` with one output (a logit; its activation
            turns it into a probability), or a name or path to load one from.
        config: threshold, top-k and retrieval filter.

    Example:
        >>> classifier = load_scope_classifier("my-serac/scope_classifier")  # doctest: +SKIP
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

    def with_similarity(
        self, probabilities: np.ndarray, pairs: Sequence[tuple[str, str]], store: EditStore
    ) -> np.ndarray:
        """``probabilities`` of the cross-encoder moved by each pair's cosine (:attr:`~ScopeClassifierConfig.similarity_weight`).

        ``pairs`` are the texts the cross-encoder read, :meth:`ScopeClassifierConfig.pair` of each.
        """
        probabilities = np.asarray(probabilities, dtype=np.float64)
        cosine = pair_cosines(store, pairs).astype(np.float64)
        clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
        logits = np.log(clipped) - np.log1p(-clipped)
        logits += self.config.similarity_weight * (cosine - self.config.similarity_center)
        return 1.0 / (1.0 + np.exp(-logits))

    def _prefilter(self, query, row):
        row = [candidate for candidate in row if candidate[1] >= self.config.retrieval_threshold]
        return super()._prefilter(query, row)

    def _score_candidates(self, views, candidates, store, pairwise=False):
        # The texts each candidate is scored against: its own one (pairwise) or all of its query's views.
        texts = [
            [[text] for text in row_views] if pairwise else [list(row_views)] * len(row)
            for row_views, row in zip(views, candidates, strict=True)
        ]
        pairs = [
            self.config.pair(self.config.edit_view(edit), edit.subject, text)
            for row, row_texts in zip(candidates, texts, strict=True)
            for (_, _, edit), candidate_texts in zip(row, row_texts, strict=True)
            for text in candidate_texts
        ]
        flat = self.score_pairs([p[0] for p in pairs], [p[1] for p in pairs])
        if self.config.similarity_weight:
            flat = self.with_similarity(flat, pairs, store)
        flat = flat.tolist()
        scores, start = [], 0
        for row_texts in texts:
            # Each candidate counts with its best score over its texts.
            row_scores = []
            for candidate_texts in row_texts:
                row_scores.append(max(flat[start : start + len(candidate_texts)]))
                start += len(candidate_texts)
            scores.append(row_scores)
        return scores

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.cross_encoder.save(str(directory / CROSS_ENCODER_FOLDER))
        self.config.save_json(directory / SCOPE_CONFIG_NAME)


def load_scope_classifier(directory: str | os.PathLike) -> ScopeClassifier:
    """Load a scope classifier saved by ``save_pretrained``."""
    directory = Path(directory)
    config_path = directory / SCOPE_CONFIG_NAME
    if not config_path.exists():
        raise FileNotFoundError(f"no scope classifier in {directory} (missing {SCOPE_CONFIG_NAME})")
    config = ScopeClassifierConfig.load_json(config_path)
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


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def pair_cosines(store: EditStore, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The cosine similarity of each pair of texts, embedded by ``store``'s embedder, each distinct text once."""
    if not pairs:
        return np.zeros(0, dtype=np.float32)
    texts = list(dict.fromkeys(text for pair in pairs for text in pair))
    index = {text: position for position, text in enumerate(texts)}
    vectors = store.encode(texts)
    first = vectors[[index[text] for text, _ in pairs]]
    second = vectors[[index[text] for _, text in pairs]]
    return np.sum(first * second, axis=1)


def last_sentence(text: str) -> str:
    """The last sentence (or line) of ``text``, stripped; ``text`` itself when it is one sentence.

    Example:
        >>> last_sentence("Paris hosted the Games. The mother tongue of Danielle Darrieux is")
        'The mother tongue of Danielle Darrieux is'
    """
    parts = [part.strip() for part in _SENTENCE_END.split(text.strip()) if part and part.strip()]
    return parts[-1] if parts else text.strip()


def _check_queries(queries: Sequence[str]) -> list[str]:
    if isinstance(queries, str):
        raise TypeError("queries must be a sequence of strings, not one string")
    queries = list(queries)
    for query in queries:
        if not isinstance(query, str):
            raise TypeError(f"queries must be strings, got {type(query).__name__}")
    return queries
