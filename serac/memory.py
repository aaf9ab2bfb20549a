"""EditMemory: the edit side of SERAC, with no base model: the edit store, the scope classifier and the
counterfactual model, and the SERAC folder they are saved in.

:class:`EditMemory` stores and removes edits, routes queries (which stored edit, if any, each one falls
under) and answers in-scope queries with the counterfactual model. :class:`~serac.modeling.EditableModel`
wraps a base model around one to make a drop-in model; the server routes with one in local and proxy mode;
training writes the folder it loads. As in PEFT, saving writes only SERAC's own parts and a reference to
the base model, never the base model's weights.

Example:
    >>> memory = EditMemory.from_pretrained("my-serac-folder")  # doctest: +SKIP
    >>> memory.edit(Edit(prompt="{} plays the sport of", subject="LeBron James", target="football"))  # doctest: +SKIP
    [0]
    >>> memory.retired()  # edits superseded by newer ones, kept for restore()  # doctest: +SKIP
    []
    >>> memory.route(["What sport does LeBron James play?"])[0].in_scope  # doctest: +SKIP
    True
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from serac.conversation import Turn, as_turns, routing_query, routing_query_of_text
from serac.counterfactual import CounterfactualModel
from serac.edits import Edit
from serac.folder import (
    CONFIG_NAME,
    COUNTERFACTUAL_FOLDER,
    SCOPE_FOLDER,
    SeracConfig,
    read_folder,
)
from serac.in_context import (
    InContextCounterfactual,
    counterfactual_kind,
    decision_edits,
    linked_edits,
    load_counterfactual_model,
)
from serac.scope import ScopeClassifier, ScopeDecision, load_scope_classifier
from serac.store import STORE_FILE_NAME, EditResult, EditStore, EditStoreError

logger = logging.getLogger(__name__)

__all__ = ["EditMemory"]


class EditMemory:
    """The edit store, the scope classifier and the counterfactual model, as one object.

    Args:
        scope_classifier: decides which stored edit, if any, a query falls under.
        counterfactual_model: answers in-scope queries given the edit: a trained
            :class:`~serac.counterfactual.CounterfactualModel`, or the base model itself reading the edit
            in its prompt (:class:`~serac.in_context.InContextCounterfactual`, bound by the wrapper).
        store: the edit store, or where it lives (anything :meth:`EditStore.open` takes: a SQLite path or
            URL, a PostgreSQL URL, a snapshot file). Default: a new, empty store in memory.
        base_model_name_or_path: the base model the edits were made for, as recorded in a loaded folder.
    """

    def __init__(
        self,
        scope_classifier: ScopeClassifier,
        counterfactual_model: CounterfactualModel | InContextCounterfactual,
        store: EditStore | str | os.PathLike | None = None,
        *,
        base_model_name_or_path: str | None = None,
    ) -> None:
        if not isinstance(scope_classifier, ScopeClassifier):
            raise TypeError(
                f"scope_classifier must be a ScopeClassifier, got {type(scope_classifier).__name__}"
            )
        if not isinstance(counterfactual_model, (CounterfactualModel, InContextCounterfactual)):
            raise TypeError(
                "counterfactual_model must be a CounterfactualModel or an InContextCounterfactual, got "
                f"{type(counterfactual_model).__name__}"
            )
        if store is not None and not isinstance(store, (EditStore, str, os.PathLike)):
            raise TypeError(
                f"store must be an EditStore or a database URL or path, got {type(store).__name__}"
            )
        self.scope_classifier = scope_classifier
        self.counterfactual_model = counterfactual_model
        self.store = store if isinstance(store, EditStore) else EditStore.open(store)
        self.base_model_name_or_path = base_model_name_or_path
        # Where each part was loaded from, for save_pretrained(save_parts=False).
        self.sources: dict[str, str] = {}

    # ------------------------------------------------------------------ edits
    def edit(self, edits: Edit | Sequence[Edit], *, supersede: bool = True) -> EditResult:
        """Store edits; returns their ids, one per edit given (an :class:`~serac.store.EditResult`: a list of
        ids whose ``retired`` attribute lists the edits this call retired).

        A newer edit of the same prompt supersedes the older one. With ``supersede`` (the default), so does
        a newer edit of the same fact in other words: the same entity, and each edit's query in the other's
        scope by the scope classifier (:meth:`~serac.scope.ScopeClassifier.same_fact`), so the newest
        correction answers every phrasing of the fact. Superseding never deletes: the older edit is retired
        to the store's history (:meth:`retired`), where :meth:`restore` finds it. Every returned id is live:
        an edit superseded by another edit of the same call gets the id of the one that stands for it.
        """
        edits = [edits] if isinstance(edits, Edit) else list(edits)
        query_vectors = None
        if (
            supersede
            and edits
            and all(isinstance(edit, Edit) for edit in edits)
            and (2 * len(edits) <= self.store.config.encode_batch_size)
        ):
            # A few edits (a server's write): their texts and their queries in one pass of the embedder.
            vectors = self.store.encode([edit.text for edit in edits] + [edit.query for edit in edits])
            result = self.store.add(edits, embeddings=vectors[: len(edits)])
            query_vectors = {edit_id: vectors[len(edits) + i] for i, edit_id in enumerate(result)}
        else:
            result = self.store.add(edits)
        if not supersede or not result:
            return result
        with self.store.lock:
            live = sorted({edit_id for edit_id in result if edit_id in self.store})
        # Outside the store's lock (same_fact takes it only to read): its embeddings and classifier passes
        # must not hold routing back. Edits removed meanwhile are left out below.
        same = self.scope_classifier.same_fact(live, self.store, query_vectors=query_vectors)
        with self.store.lock:
            retiring: dict[int, int] = {}
            for newer, older_ids in sorted(same.items()):
                for older in older_ids:
                    if newer in self.store and older in self.store:
                        # The newest edit of the fact stands for it.
                        retiring[older] = max(newer, retiring.get(older, newer))
            retired = self.store.retire(retiring) if retiring else []
        if retired:
            logger.warning(
                "%d edit(s) retired to the store's history, superseded by newer edits of the same fact "
                "(retired id -> superseding id: %s); EditMemory.retired() lists them, restore(ids) brings "
                "them back, edit(..., supersede=False) keeps both",
                len(retired),
                {edit_id: retiring[edit_id] for edit_id in retired},
            )
        return EditResult(
            [_standing_for(edit_id, retiring) for edit_id in result], retired=[*result.retired, *retired]
        )

    def remove_edits(self, edit_ids: int | Sequence[int]) -> None:
        """Remove stored edits by id (Python or NumPy integers); an unknown id raises ``KeyError`` and removes
        nothing. Removing deletes: removed edits do not go to the history of retired ones."""
        self.store.remove(edit_ids)

    def retired(self) -> list[tuple[int, Edit, int | None]]:
        """The edits superseding retired, kept in the store's history: ``(id, edit, retired_by)``, where
        ``retired_by`` is the id of the edit that superseded it (see :meth:`EditStore.retired
        <serac.store.EditStore.retired>`)."""
        return self.store.retired()

    def restore(self, edit_ids: int | Sequence[int]) -> EditResult:
        """Bring retired edits back under their ids (see :meth:`EditStore.restore
        <serac.store.EditStore.restore>`): an undo of superseding. A live edit of the same prompt is retired
        in each one's place; the returned result lists those in ``retired``."""
        return self.store.restore(edit_ids)

    @property
    def edits(self) -> list[tuple[int, Edit]]:
        """The stored ``(id, edit)`` pairs."""
        return self.store.items()

    def __len__(self) -> int:
        return len(self.store)

    # ------------------------------------------------------------------ routing and answering
    def route(self, queries: Sequence[str | Sequence[Mapping[str, Any] | Turn]]) -> list[ScopeDecision]:
        """The scope decision for each query: in scope of which edit, with what score.

        A query is a text, or a conversation (chat messages, ``{"role": ..., "content": ...}``, or
        :class:`~serac.conversation.Turn` objects), routed by its last user turn completed from the turns
        before it (:func:`~serac.conversation.routing_query`); its decision records the text routed and the
        turn it came from. A text of several sentences whose last one leans on the ones before it is read
        the same way, sentence by sentence (:func:`~serac.conversation.routing_query_of_text`). With an
        in-context counterfactual model whose config asks for ``linked_edits``, an in-scope decision also
        carries the stored edits its edit leads to (:func:`~serac.in_context.linked_edits`).
        """
        texts, sources = [], []
        for query in queries:
            found = (
                routing_query_of_text(query, self.store)
                if isinstance(query, str)
                else routing_query(as_turns(query), self.store)
            )
            texts.append(query if found is None else found.text)
            sources.append(found)
        if len(self.store) == 0:
            decisions = [ScopeDecision(in_scope=False) for _ in texts]
        else:
            decisions = self.scope_classifier.classify(texts, self.store)
        decisions = [
            decision if source is None else dataclasses.replace(decision, query=source.text, turn=source.turn)
            for decision, source in zip(decisions, sources, strict=True)
        ]
        linked = getattr(self.counterfactual_model.config, "linked_edits", 0)
        if isinstance(self.counterfactual_model, InContextCounterfactual) and linked:
            decisions = [
                dataclasses.replace(decision, linked=linked_edits(decision.edit, self.store, linked))
                if decision.in_scope and decision.edit is not None
                else decision
                for decision in decisions
            ]
        return decisions

    def answer(
        self, decisions: Sequence[ScopeDecision], queries: Sequence[str], **generation_kwargs: Any
    ) -> list[str]:
        """The counterfactual model's answer to each in-scope query under its decision's edit.

        The edit is the one the decision captured, so an edit removed meanwhile still answers the query
        that was routed to it. ``generation_kwargs`` go to the counterfactual model's ``generate()``.
        """
        if len(decisions) != len(queries):
            raise ValueError(f"{len(decisions)} decisions for {len(queries)} queries")
        if any(not decision.in_scope or decision.edit is None for decision in decisions):
            raise ValueError("answer() needs in-scope decisions (route the queries first)")
        edits = [decision_edits(decision) if decision.linked else decision.edit for decision in decisions]
        return self.counterfactual_model.generate(edits, list(queries), **generation_kwargs)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(
        self,
        directory: str | os.PathLike,
        *,
        save_parts: bool = True,
        base_model_name_or_path: str | None = None,
    ) -> None:
        """Write the edit store, the config and (unless ``save_parts=False``) both trained parts.

        The base model is recorded by name only (``base_model_name_or_path``, default: the one this memory
        was loaded with). The folder is written in a staging sibling, fsynced, and put in place with one
        rename (an atomic exchange when ``directory`` exists, on Linux): a crash at any moment leaves the
        previous save or the new one, and the next save deletes what a killed save left behind. With
        ``save_parts=False`` the config points at the parts' current locations instead of copying them;
        parts that live inside ``directory`` itself are carried over. A folder whose parts live elsewhere
        loads only with ``from_pretrained(..., allow_external_parts=True)``.
        """
        from serac.durable_folder import staging_folder

        directory = Path(directory)
        config = SeracConfig(
            base_model_name_or_path=base_model_name_or_path or self.base_model_name_or_path,
            store=self.store.config,
            store_file=STORE_FILE_NAME,
        )
        sources = {}
        if not save_parts:
            sources = {
                part: Path(self._part_source(part)) for part in ("scope_classifier", "counterfactual_model")
            }
        target = directory.absolute().resolve() if directory.exists() else None
        with staging_folder(directory) as staging:
            self.store.save_pretrained(staging / STORE_FILE_NAME)
            if save_parts:
                self.scope_classifier.save_pretrained(staging / SCOPE_FOLDER)
                self.counterfactual_model.save_pretrained(staging / COUNTERFACTUAL_FOLDER)
            else:
                for part, source in sources.items():
                    if target is not None and source.is_relative_to(target):
                        # The folder being replaced holds this part: carry it over, or the swap deletes it.
                        relative = source.relative_to(target)
                        shutil.copytree(source, staging / relative)
                        setattr(config, f"{part}_path", relative.as_posix())
                    else:
                        setattr(config, f"{part}_path", str(source))
            (staging / CONFIG_NAME).write_text(config.to_json())
        logger.info("Saved %d edits and the SERAC config to %s", len(self.store), directory)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        embedder: Any = None,
        store: str | os.PathLike | None = None,
        allow_external_parts: bool = False,
        revision: str | None = None,
        token: str | None = None,
        counterfactual: str | None = None,
        counterfactual_dtype: str | torch.dtype | None = None,
    ) -> EditMemory:
        """Load the SERAC folder in ``name_or_path`` (a local folder or a Hub repository id; see
        :func:`~serac.folder.read_folder` for the checks).

        ``counterfactual`` is the kind of counterfactual model: ``None``, the one the folder holds;
        ``"in-context"``, the base model itself reading the edit in its prompt
        (:class:`~serac.in_context.InContextCounterfactual`, unbound until a wrapper or a proxy uses it; a
        trained model in the folder is not loaded); ``"trained"``, the folder's trained model.
        ``counterfactual_dtype`` loads a trained model's weights in that type (``"bfloat16"``: half the memory,
        and faster where the hardware computes in it) instead of the one they were saved in.

        ``store`` is where to keep the edits (anything :meth:`EditStore.open` takes): a store never written
        before is filled with the folder's saved edits, one that holds edits already is used as it is.
        Default: in memory, filled with the folder's edits. A folder with no saved edits (as written by
        training) gives an empty store. Nothing is written to ``store`` unless both parts and the saved edits
        load.
        """
        folder = read_folder(
            name_or_path, allow_external_parts=allow_external_parts, revision=revision, token=token
        )
        if embedder is None:
            from serac.offline import DEFAULT_EMBEDDER

            recorded = folder.config.store.embedder_name_or_path
            if recorded not in (None, DEFAULT_EMBEDDER):
                raise EditStoreError(
                    f"the SERAC folder {folder.directory} was built with the embedder {recorded!r}; load it "
                    "yourself and pass it as embedder= (a name recorded in a file is not followed)"
                )
        # The parts first: a folder whose parts do not load must not fill a new database with its edits.
        scope_classifier = load_scope_classifier(folder.scope_classifier_path)
        counterfactual_model = load_counterfactual_model(
            folder.counterfactual_model_path, counterfactual, dtype=counterfactual_dtype
        )
        edit_store = EditStore.open(
            store, embedder=embedder, config=folder.config.store, seed=folder.store_file
        )
        memory = cls(
            scope_classifier,
            counterfactual_model,
            edit_store,
            base_model_name_or_path=folder.config.base_model_name_or_path,
        )
        memory.sources = {
            "scope_classifier": str(folder.scope_classifier_path.resolve()),
            "counterfactual_model": str(folder.counterfactual_model_path.resolve()),
        }
        if counterfactual not in (None, counterfactual_kind(folder.counterfactual_model_path)):
            # Another kind than the folder's: its part was not loaded from there.
            del memory.sources["counterfactual_model"]
        return memory

    def model_card(self, base_model_name_or_path: str | None = None) -> str:
        """A Hugging Face model card: the base model the edits are for, the edit count, how to load it."""
        base = base_model_name_or_path or self.base_model_name_or_path
        metadata = ["---", "library_name: serac-memory", "tags:", "- serac", "- model-editing"]
        # The Hub reads base_model as a repository id; a local path there would be rejected.
        if base and not Path(base).is_absolute() and not Path(base).exists():
            metadata.append(f"base_model: {base}")
        metadata.append("---")
        loading = (
            "```python\nfrom serac import EditableModel\n\n"
            f'model = EditableModel.from_pretrained("{base or "BASE_MODEL"}", "REPO_ID")\n```'
        )
        body = [
            f"# SERAC editor for {base or 'an unnamed base model'}",
            "",
            f"This repository holds a [SERAC](https://arxiv.org/abs/2206.06520) editor with {len(self.store)} "
            "edits: the edit store, the scope classifier, the counterfactual model and their config. It does "
            f"not contain the base model ({base or 'not recorded'}), whose weights are never modified.",
            "",
            loading,
            "",
        ]
        return "\n".join(metadata + [""] + body)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        base_model_name_or_path: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
    ) -> Any:
        """Upload the folder (edit store, both parts, config and a model card) to a Hub repository.

        Only what :meth:`save_pretrained` writes goes up, plus ``README.md``; the base model is referenced
        by name, never uploaded. Returns ``huggingface_hub``'s commit information.
        """
        if not isinstance(repo_id, str) or not repo_id.strip():
            raise ValueError(f"repo_id must be a non-empty string, got {repo_id!r}")
        from huggingface_hub import HfApi

        with tempfile.TemporaryDirectory() as staging:
            folder = Path(staging) / "editor"
            self.save_pretrained(folder, base_model_name_or_path=base_model_name_or_path)
            card = self.model_card(base_model_name_or_path).replace("REPO_ID", repo_id)
            (folder / "README.md").write_text(card)
            api = HfApi(token=token)
            api.create_repo(repo_id, private=private, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                commit_message=commit_message or f"Upload SERAC editor with {len(self.store)} edits",
                create_pr=create_pr,
            )

    def __repr__(self) -> str:
        return (
            f"EditMemory(edits={len(self.store)}, scope_classifier={type(self.scope_classifier).__name__}, "
            f"counterfactual_model={type(self.counterfactual_model.model).__name__})"
        )

    def _part_source(self, part: str) -> str:
        if part not in self.sources:
            raise ValueError(f"the {part} was not loaded from disk; save it with save_parts=True")
        return self.sources[part]


def _standing_for(edit_id: int, retiring: dict[int, int]) -> int:
    """The live edit that stands for ``edit_id``: itself, or the end of its chain of superseding edits."""
    seen = set()
    while edit_id in retiring and edit_id not in seen:
        seen.add(edit_id)
        edit_id = retiring[edit_id]
    return edit_id
