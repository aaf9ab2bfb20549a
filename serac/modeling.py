"""EditableModel: a frozen base model, an edit store, a scope classifier and a counterfactual model.

The wrapper is a drop-in replacement for the base model's ``generate()``. Each row of a batch is routed on
its own: rows in the scope of a stored edit are answered by the counterfactual model, conditioned on that
edit; every other row goes to the base model, unchanged. The base model's weights are never modified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from serac._version import __version__
from serac.chat import chat_markers, last_user_turn
from serac.counterfactual import CounterfactualModel
from serac.edits import Edit
from serac.files import JsonConfigMixin
from serac.routing import expand_rows, merge_rows, select_rows, split_by_scope
from serac.scope import ScopeClassifier, ScopeDecision, load_scope_classifier
from serac.store import STORE_FILE_NAME, EditStore, EditStoreConfig, EditStoreError

logger = logging.getLogger(__name__)

CONFIG_NAME = "serac_config.json"
SCOPE_FOLDER = "scope_classifier"
COUNTERFACTUAL_FOLDER = "counterfactual_model"

CONFIG_FORMAT_VERSION = 1

__all__ = ["EditableModel", "SeracConfig", "SeracConfigError"]


class SeracConfigError(ValueError):
    """An editor folder whose config cannot be used: newer, malformed, or pointing outside the folder."""


@dataclass
class SeracConfig(JsonConfigMixin):
    """What an :class:`EditableModel` directory records besides its parts.

    Args:
        base_model_name_or_path: the base model the edits were made for (a reference; its weights are never
            saved).
        scope_classifier_path: where the scope classifier is, relative to the directory or absolute.
        counterfactual_model_path: where the counterfactual model is, relative to the directory or absolute.
        store: the edit store's settings.
        store_file: the edit store snapshot saved with the editor (``None``: none was saved, as in a folder
            written by training), so a deleted snapshot is an error rather than an empty store.
    """

    base_model_name_or_path: str | None = None
    scope_classifier_path: str = SCOPE_FOLDER
    counterfactual_model_path: str = COUNTERFACTUAL_FOLDER
    store: EditStoreConfig = field(default_factory=EditStoreConfig)
    store_file: str | None = None

    def to_json(self) -> str:
        data = {
            **dataclasses.asdict(self),
            "serac_version": __version__,
            "format_version": CONFIG_FORMAT_VERSION,
        }
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SeracConfig:
        """Parse a saved config; :class:`SeracConfigError` for a newer or malformed one."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SeracConfigError(f"the editor config is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise SeracConfigError("the editor config is not a JSON object")
        written_by = data.pop("serac_version", None)
        version = data.pop("format_version", 1)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if (
            isinstance(version, bool)
            or not isinstance(version, int)
            or version > CONFIG_FORMAT_VERSION
            or unknown
        ):
            raise SeracConfigError(
                f"this editor config (format {version!r}, fields {unknown}) was written by a newer serac "
                f"({written_by}); this is serac {__version__}: upgrade serac to load it"
            )
        for name in ("base_model_name_or_path", "store_file"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise SeracConfigError(f"{name} must be a string, got {data[name]!r}")
        for name in ("scope_classifier_path", "counterfactual_model_path"):
            if name in data and not isinstance(data[name], str):
                raise SeracConfigError(f"{name} must be a string, got {data[name]!r}")
        try:
            store = EditStoreConfig.from_dict(data.pop("store", {}))
        except ValueError as error:
            raise SeracConfigError(f"bad edit store settings: {error}") from None
        return cls(**data, store=store)


class EditableModel:
    """A base model whose answers can be corrected by edits, without touching its weights.

    Args:
        base_model: any Hugging Face causal or seq2seq LM; it is used as is and never modified.
        tokenizer: the base model's tokenizer (decodes queries, encodes edited answers).
        scope_classifier: decides which stored edit, if any, a query falls under.
        counterfactual_model: answers in-scope queries given the edit.
        store: the edit store, or where it lives: a SQLite path or URL, a PostgreSQL URL (see
            :class:`~serac.store.EditStore`). Default: a new, empty one in memory with the default embedder.

    Example:
        >>> model = EditableModel.from_defaults()  # doctest: +SKIP
        >>> ids = model.edit([Edit(prompt="{} plays the sport of", subject="LeBron James", target="football")])
        >>> batch = model.tokenizer(["LeBron James plays the sport of"], return_tensors="pt")
        >>> model.tokenizer.decode(model.generate(**batch, max_new_tokens=4)[0], skip_special_tokens=True)
        'LeBron James plays the sport of football'
    """

    def __init__(
        self,
        base_model: Any,
        tokenizer: Any,
        *,
        scope_classifier: ScopeClassifier,
        counterfactual_model: CounterfactualModel,
        store: EditStore | str | os.PathLike | None = None,
    ) -> None:
        if not hasattr(base_model, "generate") or not hasattr(base_model, "config"):
            raise TypeError(
                f"base_model must be a Hugging Face generative model, got {type(base_model).__name__}"
            )
        if not isinstance(scope_classifier, ScopeClassifier):
            raise TypeError(
                f"scope_classifier must be a ScopeClassifier, got {type(scope_classifier).__name__}"
            )
        if not isinstance(counterfactual_model, CounterfactualModel):
            raise TypeError(
                f"counterfactual_model must be a CounterfactualModel, got {type(counterfactual_model).__name__}"
            )
        # Set through __dict__: __getattr__ forwards unknown names to the base model.
        self.__dict__["base_model"] = base_model
        self.tokenizer = tokenizer
        self.scope_classifier = scope_classifier
        self.counterfactual_model = counterfactual_model
        if store is not None and not isinstance(store, (EditStore, str, os.PathLike)):
            raise TypeError(f"store must be an EditStore or a database URL, got {type(store).__name__}")
        self.store = store if isinstance(store, EditStore) else EditStore(url=store)
        self._local = threading.local()
        self._routing_lock = threading.Lock()
        self._last_routing: list[ScopeDecision] = []
        self._chat_markers = chat_markers(tokenizer)

    # ------------------------------------------------------------------ edits
    def edit(self, edits: Edit | Sequence[Edit], *, supersede: bool = True) -> list[int]:
        """Store edits; returns their ids.

        A newer edit of the same prompt supersedes the older one. With ``supersede`` (the default), so does
        a newer edit of the same fact in other words: when the scope classifier puts each edit's query in
        the other's scope (:meth:`~serac.scope.ScopeClassifier.same_fact`), the older edit is removed, so
        the newest correction answers every phrasing of the fact.
        """
        ids = self.store.add([edits] if isinstance(edits, Edit) else edits)
        if supersede and ids:
            with self.store.lock:
                live = [edit_id for edit_id in ids if edit_id in self.store]
                older = {
                    other
                    for others in self.scope_classifier.same_fact(live, self.store).values()
                    for other in others
                }
                older = sorted(other for other in older if other in self.store)
                if older:
                    logger.info("%d edit(s) superseded by newer edits of the same fact", len(older))
                    self.store.remove(older)
        return ids

    def remove_edits(self, edit_ids: int | Sequence[int]) -> None:
        """Remove stored edits by id (Python or NumPy integers); an unknown id raises ``KeyError`` and removes
        nothing."""
        self.store.remove(edit_ids)

    @property
    def edits(self) -> list[tuple[int, Edit]]:
        """The stored ``(id, edit)`` pairs."""
        return self.store.items()

    @contextlib.contextmanager
    def disable_edits(self) -> Iterator[None]:
        """Within this block (in this thread), ``generate()`` is exactly the base model's."""
        depth = getattr(self._local, "disabled", 0)
        self._local.disabled = depth + 1
        try:
            yield
        finally:
            self._local.disabled = depth

    @property
    def edits_enabled(self) -> bool:
        return getattr(self._local, "disabled", 0) == 0

    @property
    def last_routing(self) -> list[ScopeDecision]:
        """Per row of the last ``generate()`` call: in scope or not, which edit, the score."""
        with self._routing_lock:
            return list(self._last_routing)

    # ------------------------------------------------------------------ inference
    def route(self, queries: Sequence[str]) -> list[ScopeDecision]:
        """The scope decision for each query text, without generating."""
        if not self.edits_enabled or len(self.store) == 0:
            return [ScopeDecision(in_scope=False) for _ in queries]
        return self.scope_classifier.classify(queries, self.store)

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Drop-in for ``base_model.generate()``: same arguments, same return type.

        Rows out of every edit's scope are generated by the base model with the arguments given; rows in
        scope get the counterfactual model's answer, tokenized with the base tokenizer and appended to the
        row's input (decoder-only) or after the decoder start token (seq2seq), followed by the end-of-sequence
        token. Rows come back in the input order, right-padded with the pad token as ``generate()`` pads.
        With ``return_dict_in_generate=True`` the base model's output class is returned; when some rows were
        edited, its per-step fields (scores, logits, attentions, hidden states) are ``None``.
        """
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        input_ids, attention_mask = self._check_inputs(input_ids, kwargs.get("attention_mask"))
        if input_ids is None or not self.edits_enabled or len(self.store) == 0:
            self._set_routing([ScopeDecision(in_scope=False)] * (0 if input_ids is None else len(input_ids)))
            return self._base_generate(input_ids, kwargs)

        queries = self._queries(input_ids, attention_mask)
        decisions = self.scope_classifier.classify(queries, self.store)
        self._set_routing(decisions)
        route = split_by_scope(decisions)
        if route.all_base:
            return self._base_generate(input_ids, kwargs)

        batch_size = input_ids.shape[0]
        copies = int(kwargs.get("num_return_sequences") or 1)
        parts: list[tuple[list[int], torch.Tensor]] = []
        base_output = None
        if route.base_rows:
            subset = select_rows({"input_ids": input_ids, **kwargs}, route.base_rows, batch_size)
            base_output = self._base_generate(subset.pop("input_ids"), subset)
            sequences = base_output.sequences if hasattr(base_output, "sequences") else base_output
            parts.append((expand_rows(route.base_rows, copies), sequences))
        edited = self._edited_sequences(input_ids, route.edited_rows, queries, decisions, kwargs)
        parts.append((expand_rows(route.edited_rows, copies), edited.repeat_interleave(copies, dim=0)))
        merged = merge_rows(parts, batch_size * copies, self._pad_token_id(kwargs))
        if not kwargs.get("return_dict_in_generate", False):
            return merged
        return self._wrap_output(base_output, merged)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike, *, save_parts: bool = True) -> None:
        """Write the edit store, the config and (unless ``save_parts=False``) both trained parts.

        The base model is recorded by name only, never copied. The folder is written in a staging sibling,
        fsynced, and put in place with one rename (an atomic exchange when ``directory`` exists, on Linux):
        a crash at any moment leaves the previous save or the new one, and the next save deletes what a
        killed save left behind. With ``save_parts=False`` the config points at the parts' current locations
        instead of copying them; parts that live inside ``directory`` itself are carried over. A folder whose
        parts live elsewhere loads only with ``from_pretrained(..., allow_external_parts=True)``.
        """
        from serac.durable_folder import staging_folder

        directory = Path(directory)
        config = SeracConfig(
            base_model_name_or_path=getattr(self.base_model, "name_or_path", None) or None,
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
        logger.info("Saved %d edits and the editor config to %s", len(self.store), directory)

    @classmethod
    def from_pretrained(
        cls,
        base_model: Any,
        directory: str | os.PathLike,
        *,
        tokenizer: Any = None,
        embedder: Any = None,
        store: str | os.PathLike | None = None,
        allow_external_parts: bool = False,
    ) -> EditableModel:
        """Wrap ``base_model`` with the SERAC folder saved in ``directory`` (its edits, scope classifier, parts).

        ``base_model`` may be a loaded model or a name or path to load. A directory with no edit store (as
        written by training) gives an empty store. ``store`` is a database to keep the edits in (a SQLite
        path or URL, a PostgreSQL URL): a database never written before is filled from the saved edits, one
        that holds edits already is used as it is. Parts are only loaded from inside ``directory`` unless
        ``allow_external_parts=True`` (a config may name any path; following one silently is how a folder
        from elsewhere would make this process load code or weights it was never meant to).
        """
        from serac.offline import DEFAULT_BASE_MODEL, load_base_model, resolve_base_model

        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.exists():
            raise FileNotFoundError(f"no SERAC folder in {directory} (missing {CONFIG_NAME})")
        config = SeracConfig.from_json(config_path.read_text())
        part_paths = {
            part: _part_path(directory, getattr(config, f"{part}_path"), part, allow_external_parts)
            for part in ("scope_classifier", "counterfactual_model")
        }
        store_path = _store_file_path(directory, config)
        if isinstance(base_model, (str, os.PathLike)) or base_model is None:
            base_model, loaded_tokenizer = load_base_model(base_model)
            tokenizer = tokenizer or loaded_tokenizer
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(base_model.name_or_path)
        base_name = getattr(base_model, "name_or_path", None)
        recorded = config.base_model_name_or_path
        if recorded == DEFAULT_BASE_MODEL and base_name not in (None, DEFAULT_BASE_MODEL):
            # The default base model is recorded by name; once loaded it is named by its cached checkpoint.
            recorded = str(resolve_base_model(recorded))
        if recorded and base_name and base_name != recorded:
            logger.warning(
                "This SERAC folder was saved for base model %s; it now wraps %s",
                config.base_model_name_or_path,
                base_name,
            )
        edit_store = _open_store(store_path, config.store, embedder, store)
        scope_classifier = load_scope_classifier(part_paths["scope_classifier"])
        counterfactual_model = CounterfactualModel.from_pretrained(part_paths["counterfactual_model"])
        model = cls(
            base_model,
            tokenizer,
            scope_classifier=scope_classifier,
            counterfactual_model=counterfactual_model,
            store=edit_store,
        )
        model._sources = {part: str(path.resolve()) for part, path in part_paths.items()}
        return model

    @classmethod
    def from_defaults(cls, base_model: Any = None, *, tokenizer: Any = None, train_if_missing: bool = True):
        """SmolLM2-135M-Instruct (or ``base_model``) wrapped with the default trained parts, offline.

        The default parts are trained from the embedded synthetic data on first use (a progress bar shows
        it; under 20 minutes on two CPU cores) and cached; later calls load them in seconds.
        """
        # The one upward import of the library: the default parts are trained by serac.training, which
        # itself builds EditableModels, so the recipe is imported here, when called, and not at module
        # level (as PEFT does for its one circular import).
        try:
            from serac.training.recipe import default_parts_dir
        except ImportError as error:
            raise ImportError(
                "EditableModel.from_defaults() trains the default parts on first use and needs the training "
                f"extras: pip install 'serac-memory[train]' ({error})"
            ) from error

        return cls.from_pretrained(
            base_model, default_parts_dir(train_if_missing=train_if_missing), tokenizer=tokenizer
        )

    # ------------------------------------------------------------------ forwarding
    def __getattr__(self, name: str) -> Any:
        # Only called for names not found normally: forward them to the base model (config, device, ...).
        if name.startswith("__") or "base_model" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["base_model"], name)

    def __repr__(self) -> str:
        return (
            f"EditableModel(base_model={type(self.base_model).__name__}, edits={len(self.store)}, "
            f"scope_classifier={type(self.scope_classifier).__name__}, "
            f"counterfactual_model={type(self.counterfactual_model.model).__name__})"
        )

    # ------------------------------------------------------------------ internals
    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.base_model.config, "is_encoder_decoder", False))

    def _check_inputs(
        self, input_ids: Any, attention_mask: Any
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if input_ids is None:
            return None, attention_mask
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor):
                raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
                )
            if attention_mask.dtype.is_floating_point and not torch.all(
                (attention_mask == 0) | (attention_mask == 1)
            ):
                raise ValueError("attention_mask must hold only 0 and 1")
        return input_ids, attention_mask

    def _base_generate(self, input_ids: torch.Tensor | None, kwargs: dict[str, Any]) -> Any:
        if input_ids is None:
            return self.base_model.generate(**kwargs)
        return self.base_model.generate(input_ids=input_ids, **kwargs)

    def _queries(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[str]:
        """The query text of each row: the last user turn of a chat-formatted row, else the whole row."""
        rows = []
        for row, ids in enumerate(input_ids):
            if attention_mask is not None:
                ids = ids[attention_mask[row].bool()]
            rows.append(ids.tolist())
        plain = [text.strip() for text in self.tokenizer.batch_decode(rows, skip_special_tokens=True)]
        markers = self._chat_markers
        if markers is None:
            return plain
        # Rows are parsed one by one: a batch may mix chat-formatted rows with raw prompts.
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=False)
        turns = [last_user_turn(text, *markers) for text in texts]
        return [plain_text if turn is None else turn for plain_text, turn in zip(plain, turns, strict=True)]

    def _edited_sequences(
        self,
        input_ids: torch.Tensor,
        rows: list[int],
        queries: Sequence[str],
        decisions: Sequence[ScopeDecision],
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        """Each edited row as ``generate()`` would return it: prompt (decoder-only) + answer + eos."""
        max_new_tokens = kwargs.get("max_new_tokens") or self._generation_setting("max_new_tokens") or 20
        edits = [decisions[row].edit for row in rows]
        answers = self.counterfactual_model.generate(
            edits, [queries[row] for row in rows], max_new_tokens=max_new_tokens
        )
        eos = self._eos_token_id(kwargs)
        pad = self._pad_token_id(kwargs)
        pieces = []
        for row, answer in zip(rows, answers, strict=True):
            # A leading space makes the answer a continuation of the prompt, as the base model would write it.
            answer_ids = self.tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
            new_tokens = (answer_ids + ([eos] if eos is not None else []))[:max_new_tokens]
            if self.is_encoder_decoder:
                start = self.base_model.generation_config.decoder_start_token_id
                if start is None:
                    start = self.base_model.config.decoder_start_token_id
                prefix = [start] if start is not None else []
            else:
                prefix = input_ids[row].tolist()
            pieces.append(prefix + new_tokens)
        width = max(len(piece) for piece in pieces)
        sequences = torch.full((len(pieces), width), pad, dtype=input_ids.dtype, device=input_ids.device)
        for i, piece in enumerate(pieces):
            sequences[i, : len(piece)] = torch.tensor(piece, dtype=input_ids.dtype)
        return sequences

    def _generation_setting(self, name: str) -> Any:
        generation_config = getattr(self.base_model, "generation_config", None)
        return getattr(generation_config, name, None)

    def _eos_token_id(self, kwargs: dict[str, Any]) -> int | None:
        eos = kwargs.get("eos_token_id")
        if eos is None and kwargs.get("generation_config") is not None:
            eos = kwargs["generation_config"].eos_token_id
        if eos is None:
            eos = self._generation_setting("eos_token_id")
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        return eos

    def _pad_token_id(self, kwargs: dict[str, Any]) -> int:
        pad = kwargs.get("pad_token_id")
        if pad is None and kwargs.get("generation_config") is not None:
            pad = kwargs["generation_config"].pad_token_id
        if pad is None:
            pad = self._generation_setting("pad_token_id")
        if pad is None:
            pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self._eos_token_id(kwargs)
        return int(pad) if pad is not None else 0

    def _wrap_output(self, base_output: Any, sequences: torch.Tensor) -> Any:
        if base_output is None or not hasattr(base_output, "sequences"):
            from transformers.generation.utils import (
                GenerateDecoderOnlyOutput,
                GenerateEncoderDecoderOutput,
            )

            output_class = (
                GenerateEncoderDecoderOutput if self.is_encoder_decoder else GenerateDecoderOnlyOutput
            )
            return output_class(sequences=sequences)
        # Per-step tensors cover only the base rows; returning them under merged rows would misalign them.
        return type(base_output)(sequences=sequences)

    def _set_routing(self, decisions: Sequence[ScopeDecision]) -> None:
        with self._routing_lock:
            self._last_routing = list(decisions)

    def _part_source(self, part: str) -> str:
        sources = getattr(self, "_sources", {})
        if part not in sources:
            raise ValueError(f"the {part} was not loaded from disk; save it with save_parts=True")
        return sources[part]


def _part_path(directory: Path, recorded: str, part: str, allow_external: bool) -> Path:
    """Where a part recorded in the config lives; outside ``directory`` only when allowed."""
    path = Path(recorded)
    inside = not path.is_absolute() and ".." not in path.parts
    if not inside and not allow_external:
        raise SeracConfigError(
            f"the {part} path {recorded!r} in {directory / CONFIG_NAME} points outside the folder; pass "
            "allow_external_parts=True if you trust where it points"
        )
    return path if path.is_absolute() else directory / path


def _store_file_path(directory: Path, config: SeracConfig) -> Path | None:
    """The saved edit store snapshot, ``None`` if the folder never had one (written by training)."""
    if config.store_file is None:
        # Folders of serac 0.1.0 do not record it: a snapshot there is used, its absence means none.
        legacy = directory / STORE_FILE_NAME
        return legacy if legacy.exists() else None
    name = Path(config.store_file)
    if name.is_absolute() or len(name.parts) != 1 or name.name in ("..", "."):
        raise SeracConfigError(f"store_file must be a file name inside the folder, got {config.store_file!r}")
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"the edit store {path} recorded in {directory / CONFIG_NAME} is missing")
    return path


def _open_store(
    snapshot: Path | None, config: EditStoreConfig, embedder: Any, url: str | os.PathLike | None
) -> EditStore:
    """The editor's edit store: the snapshot loaded into ``url``'s database (memory by default), or the
    database as it is when it already holds edits."""
    if embedder is None:
        from serac.offline import DEFAULT_EMBEDDER

        if config.embedder_name_or_path not in (None, DEFAULT_EMBEDDER):
            raise EditStoreError(
                f"this editor was built with the embedder {config.embedder_name_or_path!r}; load it yourself "
                "and pass it as embedder= (a name recorded in a file is not followed)"
            )
    if url is not None:
        store = EditStore(embedder, config, url=url)
        next_id, last_seq, _ = store._db.state()
        if snapshot is None or next_id or last_seq:
            if snapshot is not None:
                logger.info("The database at %s already holds edits; the saved snapshot is not imported", url)
            return store
        embedder = store.embedder
        store._db.dispose()
    if snapshot is None:
        return EditStore(embedder, config, url=url)
    return EditStore.from_pretrained(snapshot, embedder, url=url)
